"""The allocator-history replay behind benchmarks/forecast_memory.py (the GPU part cannot run here)."""

from benchmarks.forecast_memory import peak_live_blocks


def test_peak_is_the_largest_live_total_and_lists_what_was_alive_then():
    trace = [
        {"action": "alloc", "addr": 1, "size": 100},
        {"action": "alloc", "addr": 2, "size": 50},
        {"action": "free_requested", "addr": 1, "size": 100},
        {"action": "free_completed", "addr": 1, "size": 100},
        {"action": "alloc", "addr": 3, "size": 70},  # 120 live: below the 150 before
        {"action": "alloc", "addr": 4, "size": 40},  # 160 live: the peak
        {"action": "free_requested", "addr": 2, "size": 50},
        {"action": "segment_alloc", "addr": 9, "size": 1000},  # segments are not allocations
        {"action": "free_requested", "addr": 77, "size": 5},  # allocated before recording began
    ]
    best, alive = peak_live_blocks(trace)
    assert best == 160
    assert sorted(e["addr"] for e in alive) == [2, 3, 4]


def test_empty_trace_has_no_peak():
    assert peak_live_blocks([]) == (0, [])
