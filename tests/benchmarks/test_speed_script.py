"""benchmarks/speed.py on the CPU (--smoke): the re-measurement groups run the cases they name."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("sktime")
pytest.importorskip("transformers")

from benchmarks import speed  # noqa: E402
from tests.helpers import make_model  # noqa: E402


def test_masked_training_loss_equals_the_plain_one():
    # The flex training variant passes an all-ones attention mask: it must time the same loss.
    model = make_model()
    batch = speed.random_batch(2, 64, "cpu", torch.float32)
    plain = speed.ours_loss(model, batch)
    model.set_attn_backend("flex")  # on a CPU the masked rows take SDPA with the dense mask
    masked = speed.ours_loss_masked(model, batch)
    torch.testing.assert_close(masked, plain, rtol=1e-6, atol=1e-6)


def test_base_train_group_times_the_reference_and_the_chosen_variants(tmp_path):
    records_path = tmp_path / "records.jsonl"
    speed.main(
        ["--smoke", "--groups", "base-train", "--train-variants", "eager,compiled-model+step-graph+flex",
         "--in-process", "--out", str(tmp_path), "--jsonl", str(records_path)]
    )  # fmt: skip
    records = [json.loads(line) for line in records_path.read_text().splitlines()]
    checks = [r for r in records if r.get("kind") == "check"]
    assert checks and all(r["equivalent"] for r in checks)
    timings = {(r["impl"], r["variant"]): r for r in records if r.get("kind") == "train"}
    assert set(timings) == {
        ("reference", "eager+loop+adamw"),
        ("ours", "eager"),
        ("ours", "compiled-model+step-graph+flex"),
    }
    assert all(r["size"] == "base" for r in timings.values())
    assert timings[("ours", "eager")]["status"] == "ok" and timings[("ours", "eager")]["tokens_per_s"] > 0
    assert timings[("ours", "compiled-model+step-graph+flex")]["status"].startswith("skipped")  # no GPU here
    assert not any(r.get("kind") == "infer" for r in records)  # training only
    speed.main(["--report", "--jsonl", str(records_path), "--out", str(tmp_path)])  # the driver's last step
    table = (tmp_path / "speed.md").read_text()
    assert "| train base bf16, seq 64, batch 2 |" in table
