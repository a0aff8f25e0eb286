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


def test_separate_projections_switch_runs_the_same_function_as_separate_gemms_and_restores():
    from timemoe_forecaster.model.attention import Attention
    from timemoe_forecaster.model.layers import GatedMLP

    model = make_model()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.qkv_proj.bias.normal_(0.0, 0.3)
    batch = speed.random_batch(2, 32, "cpu", torch.float32)
    joined_loss = speed.ours_loss(model, batch)
    joined_loss.backward()
    joined_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    calls = []
    joined = [layer.self_attn.qkv_proj for layer in model.model.layers]
    joined += [layer.ffn_layer.shared_expert.gate_up_proj for layer in model.model.layers]
    hooks = [module.register_forward_hook(lambda *_: calls.append(1)) for module in joined]
    methods = Attention._project_qkv, GatedMLP.forward
    with speed.separate_projections():
        separate_loss = speed.ours_loss(model, batch)
        separate_loss.backward()
    assert calls == []  # neither joined module ran as one GEMM
    assert (Attention._project_qkv, GatedMLP.forward) == methods
    torch.testing.assert_close(separate_loss, joined_loss, rtol=1e-5, atol=1e-6)
    for name, param in model.named_parameters():
        if name in joined_grads:
            torch.testing.assert_close(param.grad, joined_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    speed.ours_loss(model, batch)
    assert calls  # switched back: the joined modules run again
    for hook in hooks:
        hook.remove()
