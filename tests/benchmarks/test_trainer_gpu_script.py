"""benchmarks/trainer_gpu.py on the CPU (--smoke): each setting reaches the trainer it claims to time."""

from __future__ import annotations

import json

import pytest

from benchmarks import trainer_gpu


def test_smoke_run_records_the_settings_the_trainer_used(tmp_path):
    trainer_gpu.main(["--smoke", "--settings", "sdpa:off,sdpa:off:thread,sdpa:off:process", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "trainer_gpu_tiny.json").read_text())
    rows = result["rows"]
    assert [r["status"] for r in rows] == ["ok"] * 3
    # Recorded from the trainer itself, not from the command line (session 4 parsed --data-thread and dropped it).
    assert [r["data_prefetch"] for r in rows] == ["off", "thread", "process"]
    assert all(r["positions_per_s"] > 0 and len(r["losses"]) == r["steps"] for r in rows)
    assert result["matmul_peak_tflops"] is None  # measured on a GPU only
    table = (tmp_path / "trainer_gpu_tiny.md").read_text()
    assert table.count("| ours (Trainer) |") == 3 and "| process |" in table


@pytest.mark.parametrize("item", ["sdpa", "flex:model:gpu", "a:b:c:d"])
def test_bad_settings_are_refused(item):
    with pytest.raises(ValueError, match="backend:compile"):
        trainer_gpu.parse_setting(item)
