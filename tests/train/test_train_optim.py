"""Optimizer groups, the bf16 stochastic-rounding AdamW and the warmup + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import make_model
from timemoe_forecaster.train.optim import (
    StochasticRoundingAdamW,
    WarmupCosine,
    build_optimizer,
    build_scheduler,
    param_groups,
    stochastic_round_,
)


def test_no_weight_decay_on_norms_and_biases():
    model = make_model()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    no_decay_names = [names[id(p)] for p in no_decay["params"]]
    assert any("layernorm" in n for n in no_decay_names) and any(n.endswith("bias") for n in no_decay_names)
    assert any("w_gate_up_EGH" in names[id(p)] for p in decay["params"])  # stacked experts decay
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_schedule_warmup_then_cosine_to_min():
    f = WarmupCosine(warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    ramp = [f(s) for s in range(10)]
    assert ramp == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f(10) == pytest.approx(1.0)
    decay = [f(s) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert f(109) == pytest.approx(0.1)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 50 / 99)))
    assert f(500) == pytest.approx(0.1)  # past the end: stays at the minimum


def test_scheduler_state_round_trip():
    model = make_model()
    opt = build_optimizer(model, lr=1.0)
    sched = build_scheduler(opt, 3, 20, 0.2)
    for _ in range(5):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = build_optimizer(model, lr=1.0)
    sched2 = build_scheduler(opt2, 3, 20, 0.2)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 5 and sched2.get_last_lr() == sched.get_last_lr()
    with pytest.raises(ValueError, match="min_lr_ratio"):
        build_scheduler(opt, 3, 20, 1.5)


def test_stochastic_rounding_is_unbiased_and_picks_neighbours():
    value = torch.tensor(1.0 + 2**-10)  # between bf16 neighbours 1.0 and 1.0078125, a quarter of the way
    src = value.repeat(100_000)
    dst = torch.empty(100_000, dtype=torch.bfloat16)
    stochastic_round_(dst, src, torch.Generator().manual_seed(0))
    assert set(dst.float().unique().tolist()) == {1.0, 1.0078125}
    assert dst.float().mean().item() == pytest.approx(value.item(), abs=2e-5)
    neg = torch.empty(100_000, dtype=torch.bfloat16)
    stochastic_round_(neg, -src, torch.Generator().manual_seed(0))
    assert neg.float().mean().item() == pytest.approx(-value.item(), abs=2e-5)


def assert_matches_torch_adamw_in_fp32(device: str = "cpu", **options) -> None:
    """Three steps on fp32 weights (nothing to round) equal torch's AdamW, weight decay and bias correction included."""
    torch.manual_seed(0)
    ref = make_model().to(device)
    ours = make_model().to(device)
    opt_ref = torch.optim.AdamW(param_groups(ref, 0.1), lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    opt_ours = StochasticRoundingAdamW(param_groups(ours, 0.1), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, **options)
    x = torch.randn(2, 32, device=device)
    for _ in range(3):
        for model, opt in ((ref, opt_ref), (ours, opt_ours)):
            model(x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()
    for (name, a), b in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_stochastic_rounding_adamw_matches_torch_adamw_in_fp32():
    assert_matches_torch_adamw_in_fp32(fused=False)


def test_bf16_optimizer_keeps_small_updates_in_expectation(caplog):
    # A plain bf16 update w - 1e-4 would round back to w = 1.0 every time; stochastic rounding moves on average.
    p = torch.nn.Parameter(torch.ones(20_000, dtype=torch.bfloat16))
    opt = StochasticRoundingAdamW([{"params": [p], "weight_decay": 0.0}], lr=1e-4)
    p.grad = torch.ones_like(p)
    with caplog.at_level("INFO", logger="timemoe_forecaster.train.optim"):
        opt.step()
        opt.step()
        opt.step()  # the update path is logged once, on the first step
    assert [r.getMessage() for r in caplog.records] == ["bf16 AdamW, group 0: 0 tensors fused (Triton), 1 chunked"]
    p.data.fill_(1.0)
    opt = StochasticRoundingAdamW([{"params": [p], "weight_decay": 0.0}], lr=1e-4)
    opt.step()
    assert p.dtype == torch.bfloat16 and opt.state[p]["exp_avg"].dtype == torch.bfloat16
    assert p.float().mean().item() == pytest.approx(1.0 - 1e-4, abs=2e-5)


def test_bad_optimizer_arguments():
    with pytest.raises(ValueError, match="optim_dtype"):
        build_optimizer(make_model(), lr=1e-3, optim_dtype="fp8")


def test_chunking_does_not_change_the_update():
    models = [make_model(), make_model()]
    opts = [StochasticRoundingAdamW(param_groups(m, 0.1), lr=1e-2, chunk_numel=n) for m, n in zip(models, (7, 1 << 26))]
    x = torch.randn(2, 32)
    for _ in range(2):
        for model, opt in zip(models, opts):
            model(x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)


# The fused Triton update (``sr_adamw_kernels``), run on the CPU by triton's interpreter in a child process
# (triton reads TRITON_INTERPRET at import) and on a GPU by the marked test below.
_FUSED_SR_ADAMW_CHECK = r"""
import torch
from tests.train.test_train_optim import assert_matches_torch_adamw_in_fp32
from timemoe_forecaster.train.optim import StochasticRoundingAdamW

device = "{device}"
assert_matches_torch_adamw_in_fp32(device, fused=True)


def bf16_neighbours(x):
    # the bf16 values either side of fp32 x: truncated toward zero, and one step further out
    low = x.view(torch.int32).bitwise_and(-65536)
    return low.view(torch.float32), (low + 65536).view(torch.float32)


def one_step(seed, step_before=0, start=None):
    w = torch.nn.Parameter((torch.randn(4099, device=device) if start is None else start).to(torch.bfloat16))
    opt = StochasticRoundingAdamW([{{"params": [w], "weight_decay": 0.1}}], lr=1e-3, seed=seed, fused=True)
    w.grad = torch.linspace(-2, 2, 4099, device=device).to(torch.bfloat16)
    if step_before:
        opt.state[w]["step"] = torch.tensor(float(step_before))
        opt.state[w]["exp_avg"] = torch.zeros_like(w)
        opt.state[w]["exp_avg_sq"] = torch.zeros_like(w)
    before = w.detach().float().clone()
    opt.step()
    return before, w.detach(), opt.state[w]

# bf16: every stored value is one of the two bf16 neighbours of the exact fp32 result.
torch.manual_seed(1)
before, after, state = one_step(seed=3)
g = torch.linspace(-2, 2, 4099, device=device).to(torch.bfloat16).float()
m, v = 0.1 * g, 0.05 * g * g
exact = before * (1 - 1e-3 * 0.1) - (1e-3 / 0.1) * m / ((v / 0.05).sqrt() + 1e-8)
for stored, expected in ((after, exact), (state["exp_avg"], m), (state["exp_avg_sq"], v)):
    low, high = bf16_neighbours(expected)
    s = stored.float()
    assert bool(((s == low) | (s == high)).all()), "a value left its two bf16 neighbours"
assert after.dtype == torch.bfloat16 and state["exp_avg"].dtype == torch.bfloat16

# Unbiased: an update far below bf16's resolution at 1.0 (2**-8 below) moves the weights by the update on average.
p = torch.nn.Parameter(torch.ones(200_000, device=device, dtype=torch.bfloat16))
opt = StochasticRoundingAdamW([{{"params": [p], "weight_decay": 0.0}}], lr=1e-4, fused=True)
p.grad = torch.ones_like(p)
opt.step()
mean_change = p.float().mean().item() - 1.0
assert abs(mean_change + 1e-4) < 1e-5, mean_change
assert set(p.float().unique().tolist()) == {{1.0 - 2**-8, 1.0}}

# The noise is fixed by (seed, step): a replay is identical, another seed or step draws other numbers.
start = torch.randn(4099, device=device)
a = one_step(seed=5, start=start)[1]
b = one_step(seed=5, start=start)[1]
c = one_step(seed=6, start=start)[1]
d = one_step(seed=5, step_before=7, start=start)[1]
assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)


def fp32_twins(**options):
    # two identical fp32 parameters with identical gradients, each with its own fused optimizer
    torch.manual_seed(2)
    start, grad = torch.randn(1000, device=device), torch.randn(1000, device=device)
    twins = []
    for _ in range(2):
        w = torch.nn.Parameter(start.clone())
        w.grad = grad.clone()
        twins.append((w, StochasticRoundingAdamW([{{"params": [w], "weight_decay": 0.1}}], lr=1e-2, fused=True)))
    return twins

# The step count lives on the parameter's device; a tensor learning rate gives what the same float gives.
(w1, o1), (w2, o2) = fp32_twins()
o2.param_groups[0]["lr"] = torch.tensor(1e-2, device=device)
for _ in range(3):
    o1.step()
    o2.step()
assert torch.equal(w1, w2) and o1.state[w1]["step"].device == w1.device and float(o1.state[w1]["step"]) == 3.0
assert o1.defaults["fused"] and not o1.defaults["capturable"]

# grad_scale divides the gradient as the kernel reads it (halving is exact, so the results are equal).
(w1, o1), (w2, o2) = fp32_twins()
o1.grad_scale = torch.tensor(2.0, device=device)
w2.grad.div_(2)
o1.step()
o2.step()
assert torch.equal(w1, w2)

# found_inf: a nonzero flag leaves weights, moments and the step count alone; zero updates as usual.
(w1, o1), (w2, o2) = fp32_twins()
o1.step()
before = (w1.detach().clone(), o1.state[w1]["exp_avg"].clone(), o1.state[w1]["step"].clone())
o1.found_inf = torch.tensor(1.0, device=device)
o1.step()
assert torch.equal(w1, before[0]) and torch.equal(o1.state[w1]["exp_avg"], before[1])
assert torch.equal(o1.state[w1]["step"], before[2])
o1.found_inf = torch.tensor(0.0, device=device)
o1.step()
o2.step()
o2.step()
assert torch.equal(w1, w2)

if device == "cuda":
    # capturable: the update recorded in a CUDA graph and replayed equals eager steps (noise included), and a
    # tensor learning rate changed between replays is read by each replay.
    torch.manual_seed(3)
    start = torch.randn(5000, device=device).to(torch.bfloat16)
    grads = [torch.randn(5000, device=device, dtype=torch.bfloat16) for _ in range(6)]
    runs = []
    for graphed in (False, True):
        w = torch.nn.Parameter(start.clone())
        w.grad = torch.zeros_like(w)
        opt = StochasticRoundingAdamW([{{"params": [w], "weight_decay": 0.1}}], lr=1e-3, fused=True, capturable=True)
        opt.param_groups[0]["lr"] = torch.tensor(1e-3, device=device)
        w.grad.copy_(grads[0])
        opt.step()  # creates the state outside the graph
        graph = None
        if graphed:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
                opt.step()
            torch.cuda.current_stream().wait_stream(stream)
        for k, g in enumerate(grads[1:]):
            w.grad.copy_(g)
            opt.param_groups[0]["lr"].fill_(1e-3 * (k + 2))
            graph.replay() if graphed else opt.step()
        torch.cuda.synchronize()
        runs.append((w.detach().clone(), opt.state[w]["exp_avg"].clone(), float(opt.state[w]["step"])))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1]), "replay differs"
    assert runs[0][2] == runs[1][2] == 6.0
print("fused stochastic-rounding AdamW checks passed")
"""


def _run_fused_check(device: str, interpret: bool) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, **({"TRITON_INTERPRET": "1"} if interpret else {})}
    root = Path(__file__).resolve().parents[2]
    script = _FUSED_SR_ADAMW_CHECK.format(device=device)
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checks passed" in done.stdout


def test_fused_stochastic_rounding_adamw_in_the_interpreter():
    pytest.importorskip("triton")
    _run_fused_check("cpu", interpret=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_stochastic_rounding_adamw_on_gpu():
    pytest.importorskip("triton")
    _run_fused_check("cuda", interpret=False)


def test_seed_parts_give_the_stream_seed_of_every_step():
    from timemoe_forecaster.train.optim import _SEED_PER_STEP, _stream_seed

    for seed, rank, group, place in ((0, 0, 0, 0), (12345, 3, 1, 417), (2**40, 7, 0, 9)):
        base = _stream_seed(seed, 0, rank, group, place)
        assert 0 <= base < 2**31 - 1 and 0 <= _SEED_PER_STEP < 2**31 - 1
        for step in (1, 2, 1000, 2**30):
            assert (base + step * _SEED_PER_STEP) % (2**31 - 1) == _stream_seed(seed, step, rank, group, place)


def test_capturable_bf16_optimizer_needs_the_fused_update_everywhere():
    with pytest.raises(ValueError, match="capturable=True needs the fused Triton update"):
        build_optimizer(make_model(), lr=1e-3, optim_dtype="bf16", capturable=True)  # CPU parameters
    opt = build_optimizer(make_model(), lr=1e-3, optim_dtype="bf16")
    assert not opt.defaults["fused"] and not opt.defaults["capturable"]


def test_chunked_path_refuses_device_side_clipping_and_skips():
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    p.grad = torch.ones_like(p)
    opt = StochasticRoundingAdamW([p], lr=1e-3)
    opt.found_inf = torch.tensor(0.0)
    with pytest.raises(ValueError, match="need the fused update"):
        opt.step()
    assert not opt.state[p], "nothing may be counted or changed before the refusal"


def test_fused_update_is_chosen_only_where_it_runs(monkeypatch):
    from timemoe_forecaster.train import optim

    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
    p.grad = torch.ones_like(p)
    monkeypatch.setattr(optim, "TRITON_AVAILABLE", True)
    assert not StochasticRoundingAdamW([p])._runs_fused(p)  # default: CPU tensors take the chunked path
    assert not StochasticRoundingAdamW([p], fused=False)._runs_fused(p)
    with pytest.raises(ValueError, match="Triton kernel on a GPU"):
        StochasticRoundingAdamW([p], fused=True)._runs_fused(p)  # forced on a CPU tensor
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert StochasticRoundingAdamW([p], fused=True)._runs_fused(p)  # forced: the interpreter's way
    # Every parameter fused (what found_inf and CUDA graphs rely on): a gradient it cannot take is an error.
    w = torch.nn.Parameter(torch.zeros(2, 4))
    w.grad = torch.ones(4, 2).t()
    on_device = StochasticRoundingAdamW([w], fused=True)
    assert on_device.defaults["fused"]
    with pytest.raises(ValueError, match="gradient has strides"):
        on_device._runs_fused(w)
    assert build_optimizer(torch.nn.Linear(2, 2), 1e-3, optim_dtype="bf16", fused=False).fused is False
    half = torch.nn.Parameter(torch.zeros(4, dtype=torch.float16))
    half.grad = torch.ones_like(half)
    with pytest.raises(ValueError, match="contiguous bf16 or fp32"):
        StochasticRoundingAdamW([half], fused=True)._runs_fused(half)
    monkeypatch.setattr(optim, "TRITON_AVAILABLE", False)
    with pytest.raises(RuntimeError, match="needs triton"):
        StochasticRoundingAdamW([p], fused=True)
    assert not StochasticRoundingAdamW([p])._runs_fused(p)


def test_the_total_gradient_norm_without_get_total_norm_is_the_same(monkeypatch):
    # torch before 2.6 has no get_total_norm; the package declares torch >= 2.4.
    from timemoe_forecaster.train import trainer

    grads = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2, 2)]
    expected = torch.nn.utils.get_total_norm(grads)
    monkeypatch.delattr(torch.nn.utils, "get_total_norm")
    torch.testing.assert_close(trainer._total_norm(grads), expected)
    assert float(trainer._total_norm([])) == 0.0
