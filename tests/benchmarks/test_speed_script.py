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


@pytest.mark.parametrize("count", [1, 3])
def test_qkv_gemm_switch_runs_the_same_function_with_the_forced_gemm_count_and_restores(count):
    from timemoe_forecaster.model.attention import Attention

    model = make_model()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.qkv_proj.bias.normal_(0.0, 0.3)
    batch = speed.random_batch(2, 32, "cpu", torch.float32)
    default_loss = speed.ours_loss(model, batch)
    default_loss.backward()
    default_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    calls = []
    hooks = [layer.self_attn.qkv_proj.register_forward_hook(lambda *_: calls.append(1)) for layer in model.model.layers]
    method = Attention._project_qkv
    with speed.forced_qkv_gemms(count):
        forced_loss = speed.ours_loss(model, batch)  # with autograd: the library itself runs three
        forced_loss.backward()
        assert len(calls) == (len(model.model.layers) if count == 1 else 0)
        calls.clear()
        with torch.no_grad():  # without autograd the library runs one
            speed.ours_loss(model, batch)
        assert len(calls) == (len(model.model.layers) if count == 1 else 0)
    assert Attention._project_qkv is method
    torch.testing.assert_close(forced_loss, default_loss, rtol=1e-5, atol=1e-6)
    for name, param in model.named_parameters():
        if name in default_grads:
            torch.testing.assert_close(param.grad, default_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    for hook in hooks:
        hook.remove()


def test_aux_loss_switch_runs_the_candidate_in_the_model_loss_with_the_same_value_and_restores():
    from benchmarks import aux_loss_micro
    from timemoe_forecaster.model import modeling

    model = make_model()
    batch = speed.random_batch(2, 32, "cpu", torch.float32)
    default_loss = speed.ours_loss(model, batch)
    library = modeling.load_balancing_loss
    calls = []
    candidate = aux_loss_micro.candidate_load_balancing_loss

    def counted(*args, **kwargs):
        calls.append(1)
        return candidate(*args, **kwargs)

    aux_loss_micro.candidate_load_balancing_loss = counted
    try:
        with speed.swapped_aux_loss("candidate"):
            swapped_loss = speed.ours_loss(model, batch)
    finally:
        aux_loss_micro.candidate_load_balancing_loss = candidate
    assert calls == [1]
    assert modeling.load_balancing_loss is library
    torch.testing.assert_close(swapped_loss, default_loss, rtol=1e-5, atol=1e-6)


def test_balanced_routing_switch_deals_every_expert_the_same_rows_inside_the_model_and_restores():
    from timemoe_forecaster.model import moe

    model = make_model()
    top_k, num_experts = model.config.num_experts_per_tok, model.config.num_experts
    batch = speed.random_batch(2, 32, "cpu", torch.float32)
    chosen = []
    hooks = [
        layer.ffn_layer.gate.register_forward_hook(lambda mod, inp, out: chosen.append(moe.route(out, top_k)))
        for layer in model.model.layers
    ]
    library = moe.route
    with torch.no_grad():
        router_loss = speed.ours_loss(model, batch)
    chosen.clear()
    with speed.forced_routing("balanced"):
        loss = speed.ours_loss(model, batch)
        loss.backward()
    assert moe.route is library
    assert not torch.allclose(loss, router_loss)  # the layers took the dealt experts, not the router's
    for hook in hooks:
        hook.remove()
    assert len(chosen) == len(model.model.layers)
    for weights_TK, experts_TK in chosen:
        counts = torch.bincount(experts_TK.reshape(-1), minlength=num_experts)
        assert counts.max() - counts.min() <= 1  # 2 x 32 tokens x k slots dealt round-robin
        assert (experts_TK[:, 0] != experts_TK[:, -1]).all() or top_k == 1  # k distinct experts per token
        assert weights_TK.shape == experts_TK.shape and (weights_TK > 0).all()
    assert model.model.layers[0].ffn_layer.gate.weight.grad is not None  # the router still learns
