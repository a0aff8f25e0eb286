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


def test_stochastic_rounding_adamw_matches_torch_adamw_in_fp32():
    torch.manual_seed(0)
    ref = make_model()
    ours = make_model()
    opt_ref = torch.optim.AdamW(param_groups(ref, 0.1), lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    opt_ours = StochasticRoundingAdamW(param_groups(ours, 0.1), lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    x = torch.randn(2, 32)
    for _ in range(3):
        for model, opt in ((ref, opt_ref), (ours, opt_ours)):
            model(x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()
    for (name, a), b in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_optimizer_keeps_small_updates_in_expectation():
    # A plain bf16 update w - 1e-4 would round back to w = 1.0 every time; stochastic rounding moves on average.
    p = torch.nn.Parameter(torch.ones(20_000, dtype=torch.bfloat16))
    opt = StochasticRoundingAdamW([{"params": [p], "weight_decay": 0.0}], lr=1e-4)
    p.grad = torch.ones_like(p)
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
