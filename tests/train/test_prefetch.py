"""The background data thread: same batches in the same order, nothing skipped on close, errors surface."""

from __future__ import annotations

import pytest
import torch

from timemoe_forecaster.train.prefetch import BatchPrefetcher


class CountingStream:
    """Batch ``i`` holds the value i; the state is the next i. Optionally fails at ``fail_at``."""

    def __init__(self, offset: int = 0, fail_at: int | None = None) -> None:
        self.i, self.offset, self.fail_at = 0, offset, fail_at

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.i == self.fail_at:
            raise ValueError(f"bad window {self.i}")
        self.i += 1
        return {"inputs": torch.full((2,), float(self.offset + self.i - 1))}

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.i = state["i"]


def values(item) -> list[float]:
    return [b["inputs"][0].item() for b in item[1]]


def test_batches_come_in_order_with_the_states_before_them():
    streams = [CountingStream(), CountingStream(offset=100)]
    prefetcher = BatchPrefetcher(streams, depth=2)
    items = [prefetcher.get() for _ in range(5)]
    prefetcher.close()
    assert [values(item) for item in items] == [[k, 100 + k] for k in range(5)]
    assert [item[0] for item in items] == [[{"i": k}, {"i": k}] for k in range(5)]


def test_close_puts_the_streams_back_at_the_first_batch_not_handed_out():
    streams = [CountingStream()]
    prefetcher = BatchPrefetcher(streams, depth=3)
    assert values(prefetcher.get()) == [0]
    assert prefetcher.next_states() == [{"i": 1}]  # peeks batch 1 without handing it out
    prefetcher.close()
    assert streams[0].i == 1  # batches 1.. drawn ahead are drawn again, not skipped
    assert values(BatchPrefetcher(streams).get()) == [1]


def test_errors_of_the_data_pipeline_reach_the_training_thread():
    prefetcher = BatchPrefetcher([CountingStream(fail_at=2)])
    assert values(prefetcher.get()) == [0] and values(prefetcher.get()) == [1]
    with pytest.raises(ValueError, match="bad window 2"):
        prefetcher.get()
    with pytest.raises(RuntimeError, match="closed"):
        prefetcher.get()


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        BatchPrefetcher([CountingStream()], depth=0)
