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


def test_memory_options_reach_the_trainer_and_count_every_micro_batch(tmp_path):
    args = ["--smoke", "--settings", "sdpa:off", "--out", str(tmp_path)]
    trainer_gpu.main(args)
    plain = json.loads((tmp_path / "trainer_gpu_tiny.json").read_text())["rows"][0]
    trainer_gpu.main([*args, "--grad-accum", "2", "--activation-checkpointing", "--optim-dtype", "bf16"])
    result = json.loads((tmp_path / "trainer_gpu_tiny.json").read_text())["rows"][0]
    assert (plain["grad_accum"], plain["activation_checkpointing"], plain["optim_dtype"]) == (1, False, "fp32")
    assert (result["grad_accum"], result["activation_checkpointing"], result["optim_dtype"]) == (2, True, "bf16")
    # Two micro-batches per step: twice the positions per step, so the rate is positions over the step time.
    positions_per_step = result["positions_per_s"] * result["step_ms_median"] / 1e3
    assert positions_per_step == pytest.approx(2 * result["batch"] * result["seq_len"])
    table = (tmp_path / "trainer_gpu_tiny.md").read_text()
    assert "activation checkpointing on, optimizer states bf16, 2 micro-batch(es) per step" in table
