import pytest
import torch

from timemoe_forecaster import TimeMoEConfig
from timemoe_forecaster.model.moe import (
    GROUPED_MM_ON_CPU,
    SparseExpertsLayer,
    load_balancing_loss,
    order_by_expert,
    route,
)


def make_layer(dispatch="loop", seed=0, **overrides):
    torch.manual_seed(seed)
    config = TimeMoEConfig.from_preset("tiny", **overrides)
    layer = SparseExpertsLayer(config, dispatch)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.5)
    return layer


def test_route_keeps_raw_top_k_probabilities():
    logits = torch.randn(10, 4)
    weights, experts = route(logits, 2)
    probs = torch.softmax(logits, -1)
    assert torch.allclose(weights, probs.gather(1, experts))
    assert (weights.sum(-1) < 1.0).all()  # not renormalised


def test_loop_dispatch_matches_explicit_per_token_sum():
    layer = make_layer("loop")
    x = torch.randn(2, 5, 8)
    out, logits = layer(x)
    weights, experts = route(logits, layer.top_k)
    flat = x.reshape(-1, 8)
    expected = []
    for t in range(flat.shape[0]):
        y = sum(weights[t, k] * layer._expert(int(experts[t, k]), flat[t : t + 1])[0] for k in range(layer.top_k))
        shared = torch.sigmoid(layer.shared_expert_gate(flat[t])) * layer.shared_expert(flat[t])
        expected.append(y + shared)
    assert torch.allclose(out.reshape(-1, 8), torch.stack(expected), atol=1e-5)


def test_fixed_router_sends_every_token_to_the_chosen_experts():
    layer = make_layer("loop")
    # A router that always prefers experts 3 then 1, whatever the input; the shared expert switched off.
    bias = torch.tensor([0.0, 2.0, 0.0, 4.0])
    layer.gate.forward = lambda x: torch.zeros(x.shape[0], 4) + bias
    layer.shared_expert_gate.forward = lambda x: torch.full((x.shape[0], 1), -1e4)
    x = torch.randn(1, 6, 8)
    out, _ = layer(x)
    p = torch.softmax(bias, 0)
    flat = x.reshape(-1, 8)
    expected = p[3] * layer._expert(3, flat) + p[1] * layer._expert(1, flat)
    assert torch.allclose(out.reshape(-1, 8), expected, atol=1e-5)


@pytest.mark.skipif(not GROUPED_MM_ON_CPU, reason="torch._grouped_mm does not run on this CPU build")
@pytest.mark.parametrize("top_k", [1, 2])
def test_grouped_dispatch_equals_loop_forward_and_backward(top_k):
    loop = make_layer("loop", num_experts_per_tok=top_k)
    grouped = make_layer("grouped", num_experts_per_tok=top_k)
    grouped.load_state_dict(loop.state_dict())
    x = torch.randn(3, 7, 8, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    out_loop, _ = loop(x)
    out_grouped, _ = grouped(x2)
    assert torch.allclose(out_loop, out_grouped, rtol=1e-5, atol=1e-6)
    out_loop.square().sum().backward()
    out_grouped.square().sum().backward()
    assert torch.allclose(x.grad, x2.grad, rtol=1e-4, atol=1e-6)
    for (name, a), (_, b) in zip(loop.named_parameters(), grouped.named_parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name


def test_grouped_dispatch_refuses_unaligned_widths():
    layer = make_layer("grouped", hidden_size=6, num_attention_heads=1, intermediate_size=10)
    with pytest.raises(RuntimeError, match="grouped"):
        layer(torch.randn(1, 3, 6))


def test_load_balancing_loss_is_top_k_for_perfectly_balanced_routing():
    # Uniform router probabilities with evenly spread top-k choices give E * K * (1/E) * (1/E) = K / E ... * E = K.
    e, k = 4, 2
    logits = torch.zeros(8, e)
    value = load_balancing_loss([logits], k, e)
    probs = torch.full((e,), 1 / e)
    _, chosen = torch.topk(torch.softmax(logits, -1), k)
    frac = torch.nn.functional.one_hot(chosen, e).float().mean(0)
    assert torch.isclose(value, e * (frac * probs).sum())
    skewed = torch.tensor([[5.0, 0, 0, 0]]).repeat(8, 1)
    assert load_balancing_loss([skewed], k, e) > value


def test_load_balancing_loss_mask_equals_loss_on_kept_tokens():
    logits = [torch.randn(2 * 5, 4) for _ in range(3)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    keep = mask.reshape(-1).bool()
    masked = load_balancing_loss(logits, 2, 4, mask)
    subset = load_balancing_loss([lg[keep] for lg in logits], 2, 4)
    assert torch.isclose(masked, subset, atol=1e-6)


_INTERPRETED_FUSED_CHECK = """
import sys

import torch
from timemoe_forecaster import TimeMoEConfig
from timemoe_forecaster.model import fused_moe
from timemoe_forecaster.model.moe import SparseExpertsLayer, route

fused_moe.COLS_FASTEST = sys.argv[1] == "cols-fastest"
torch.manual_seed(0)
# Widths that are not multiples of the tiles and span several column tiles (hidden 200, expert width
# 300), 200 tokens (tiles cut inside groups) and one expert that receives no token.
config = TimeMoEConfig.from_preset("tiny", hidden_size=200, intermediate_size=600, num_experts=5)
assert config.expert_size == 300
layer = SparseExpertsLayer(config, "loop")
with torch.no_grad():
    for p in layer.parameters():
        p.normal_(0.0, 0.3)
x = torch.randn(200, 200)
weights, experts = route(torch.randn(200, 5), 2)
experts[experts == 3] = 4
expected = layer._loop(x, weights, experts)
got = layer._fused(x, weights, experts)
err = ((got - expected).abs().max() / expected.abs().max()).item()
assert err < 1e-5, err
print("max relative error", err)
"""


@pytest.mark.parametrize("tile_order", ["cols-fastest", "rows-fastest"])
def test_fused_triton_experts_equal_the_loop_in_the_interpreter(tile_order):
    """The Triton kernels run on CPU under TRITON_INTERPRET=1 (in a child process: triton reads the
    variable at import), in both launch orders of their tiles."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-c", _INTERPRETED_FUSED_CHECK, tile_order]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "max relative error" in done.stdout


_INTERPRETED_FUSED_TRAINING_CHECK = """
import sys

import torch
import triton.runtime.interpreter as interpreter
from timemoe_forecaster import TimeMoEConfig
from timemoe_forecaster.model import fused_moe
from timemoe_forecaster.model.moe import SparseExpertsLayer, route

_patch = interpreter._patch_lang_tensor


def _patch_with_loop_bounds(tensor, scope):
    # triton 3.6's interpreter holds scalars derived from program ids as 1-element arrays, which ``range``
    # refuses as loop bounds (the weight-gradient kernel's bounds come from the group ends); compiled
    # kernels have no such limit.
    _patch(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))


interpreter._patch_lang_tensor = _patch_with_loop_bounds
top_k, mode = int(sys.argv[1]), sys.argv[2]
fused_moe.SWIGLU_GRAD_PREFETCH = mode == "prefetch"
if mode == "chunks":  # weight gradients from several chunks per expert, summed by the second kernel
    fused_moe.MIN_WEIGHT_GRAD_CHUNK = 64
    fused_moe._multiprocessors = lambda device: 64
torch.manual_seed(0)
config = TimeMoEConfig.from_preset("tiny", hidden_size=200, intermediate_size=600, num_experts=5,
                                   num_experts_per_tok=top_k)
layer = SparseExpertsLayer(config, "loop")
with torch.no_grad():
    for p in layer.parameters():
        p.normal_(0.0, 0.3)
x = torch.randn(200, 200)
weights, experts = route(torch.randn(200, 5), top_k)
experts[experts == 3] = 4  # an expert with no token
if mode == "chunks":
    experts[:150] = torch.tensor([0, 1])  # skewed, as a router at random initialisation: 3 chunks each
grad_out = torch.randn(200, 200)
if mode == "frozen experts":  # e.g. fine-tuning around them: their weight gradients are never computed
    layer.requires_grad_(False)
weight_grads = []
_weight_grad = fused_moe._weight_grad
fused_moe._weight_grad = lambda *args: weight_grads.append(args[-1]) or _weight_grad(*args)


def forward_backward(path):
    layer.zero_grad()
    x_leaf, weights_leaf = x.clone().requires_grad_(mode != "frozen x"), weights.clone().requires_grad_()
    out = path(x_leaf, weights_leaf, experts)
    (out * grad_out).sum().backward()
    return [out, x_leaf.grad, weights_leaf.grad, layer.w_gate_up_EGH.grad, layer.w_down_EHF.grad]


fused = torch.compile(layer._fused, fullgraph=True) if mode == "compiled" else layer._fused
want = forward_backward(layer._loop)
got = forward_backward(fused)
for name, g, w in zip(["output", "x", "routing weights", "w_gate_up", "w_down"], got, want):
    if w is None:  # frozen: no gradient either way
        assert g is None, name
        continue
    err = ((g - w).abs().max() / w.abs().max()).item()
    assert err < 1e-5, (name, err)
assert len(weight_grads) == (0 if mode == "frozen experts" else 2), weight_grads
print("all within 1e-5")
"""


@pytest.mark.parametrize(
    "top_k,mode",
    [
        (2, "eager"),
        (1, "eager"),
        (2, "chunks"),
        (2, "prefetch"),
        (2, "compiled"),
        (2, "frozen experts"),
        (2, "frozen x"),
    ],
)
def test_fused_triton_training_equals_the_loop_in_the_interpreter(top_k, mode):
    """Forward and every gradient (input, routing weights, both expert weights) of the training kernels
    against the loop's autograd. "chunks" sums weight gradients over several row chunks per expert,
    "prefetch" loads gate and up early in the SwiGLU gradient kernel, "compiled" runs them inside
    torch.compile (the step graph's set-up). "frozen experts" and "frozen x": only the gradients autograd
    asks for are computed (no weight-gradient kernel for frozen experts)."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-c", _INTERPRETED_FUSED_TRAINING_CHECK, str(top_k), mode]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "all within 1e-5" in done.stdout


def test_a_trainable_router_alone_needs_the_experts_backward():
    """The routing weights multiply the experts' outputs, so a trainable router needs the training kernels
    even with x and the experts frozen (the inference kernels have no backward)."""
    layer = make_layer("fused")
    x = torch.randn(5, layer.gate.in_features)
    layer.requires_grad_(False)
    assert not layer._needs_grad(x)
    layer.gate.weight.requires_grad_(True)
    assert layer._needs_grad(x)
    with torch.no_grad():
        assert not layer._needs_grad(x)


@pytest.mark.parametrize("preset, trains_fused", [("base", True), ("large", False), ("ultra", False)])
def test_auto_trains_narrow_experts_through_the_fused_kernels(monkeypatch, preset, trains_fused):
    """``auto`` takes the fused kernels for inference at any width, for training only up to
    TRAIN_MAX_EXPERT_SIZE: they beat the grouped GEMMs at base's expert width, not at large's."""
    from timemoe_forecaster.model import fused_moe

    monkeypatch.setattr(fused_moe, "usable", lambda x: True)  # as on a CUDA machine with triton
    expert_size = TimeMoEConfig.from_preset(preset).expert_size
    layer = make_layer("auto", intermediate_size=2 * expert_size, num_experts_per_tok=2)  # tiny, that wide
    assert layer.w_down_EHF.shape[2] == expert_size
    x = torch.randn(5, layer.gate.in_features)
    assert layer._use_fused(x, torch.bfloat16) is trains_fused
    assert not layer._use_fused(x, torch.float32)  # the kernels run in bf16/fp16 only
    with torch.no_grad():
        assert layer._use_fused(x, torch.bfloat16)
    layer.dispatch = "fused"
    assert layer._use_fused(x, torch.bfloat16)


def test_fused_dispatch_is_refused_where_it_cannot_run():
    layer = make_layer("fused")
    with pytest.raises(RuntimeError, match="fused MoE dispatch"):
        layer(torch.randn(2, 3, layer.gate.in_features))  # CPU, fp32, gradient wanted


def grouped_and_fused_layers(config):
    """Two bf16 CUDA layers with the same random weights, one per dispatch."""
    grouped = SparseExpertsLayer(config, "grouped").cuda().to(torch.bfloat16)
    with torch.no_grad():
        for p in grouped.parameters():
            p.normal_(0.0, 0.05)
    fused = SparseExpertsLayer(config, "fused").cuda().to(torch.bfloat16)
    fused.load_state_dict(grouped.state_dict())
    return grouped, fused


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("top_k", [1, 2])
def test_fused_dispatch_equals_grouped_on_gpu(top_k):
    pytest.importorskip("triton")
    torch.manual_seed(0)
    config = TimeMoEConfig.from_preset("base", num_hidden_layers=1, num_experts_per_tok=top_k)
    grouped, fused = grouped_and_fused_layers(config)
    x = torch.randn(3, 1000, config.hidden_size, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        want, _ = grouped(x)
        got, _ = fused(x)
    err = ((got.float() - want.float()).norm() / want.float().norm()).item()
    assert err < 1e-2, err  # bf16: the fused path rounds once, the grouped path three times


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compiled, frozen", [(False, None), (True, None), (False, "experts"), (True, "x")])
def test_fused_training_equals_grouped_on_gpu(compiled, frozen):
    """bf16 forward and gradients of the fused training kernels against the grouped GEMMs, at the base
    model's widths (autotuned tiles, several row buckets). ``frozen``: the routed experts' weights or the
    input want no gradient (fine-tuning around them), so the backward skips those kernels."""
    pytest.importorskip("triton")
    torch.manual_seed(0)
    config = TimeMoEConfig.from_preset("base", num_hidden_layers=1)
    grouped, fused = grouped_and_fused_layers(config)
    x = torch.randn(2, 3000, config.hidden_size, device="cuda", dtype=torch.bfloat16)
    grad_out = torch.randn_like(x)

    def forward_backward(layer):
        if frozen == "experts":
            layer.w_gate_up_EGH.requires_grad_(False)
            layer.w_down_EHF.requires_grad_(False)
        x_leaf = x.clone().requires_grad_(frozen != "x")
        run = torch.compile(layer) if compiled else layer
        out, _ = run(x_leaf)
        (out * grad_out).sum().backward()
        return [out, x_leaf.grad] + [p.grad for p in layer.parameters()]

    names = ["output", "x"] + [name for name, _ in grouped.named_parameters()]
    results = list(zip(names, forward_backward(fused), forward_backward(grouped)))
    skipped = {name for name, got, want in results if want is None}
    assert skipped == {"experts": {"w_gate_up_EGH", "w_down_EHF"}, "x": {"x"}, None: set()}[frozen]
    for name, got, want in results:
        if want is None:
            assert got is None, name
            continue
        err = ((got.float() - want.float()).norm() / want.float().norm()).item()
        assert err < 2e-2, (name, err)  # bf16; the fused path rounds fewer intermediates


def test_set_moe_dispatch_switches_every_layer_and_refuses_unknown_names():
    from tests.helpers import make_model

    model = make_model()
    model.set_moe_dispatch("loop")
    assert {layer.ffn_layer.dispatch for layer in model.model.layers} == {"loop"}
    with pytest.raises(ValueError, match="unknown MoE dispatch"):
        model.set_moe_dispatch("fast")


@pytest.mark.parametrize("assignments", [0, 1, 1023, 1024, 1025, 5000])
@pytest.mark.parametrize("num_experts", [1, 3, 8])
def test_counting_order_equals_a_stable_sort(assignments, num_experts):
    g = torch.Generator().manual_seed(assignments + num_experts)
    # Skewed routing with empty experts: only the first half of the experts is ever chosen.
    experts_A = torch.randint(0, max(1, num_experts // 2), (assignments,), generator=g)
    order_A, group_end_E = order_by_expert(experts_A, num_experts)
    sorted_A, expected_order_A = torch.sort(experts_A, stable=True)
    assert torch.equal(order_A, expected_order_A)
    ids = torch.arange(num_experts)
    assert torch.equal(group_end_E, torch.searchsorted(sorted_A, ids, right=True).to(torch.int32))
    assert group_end_E.dtype == torch.int32
