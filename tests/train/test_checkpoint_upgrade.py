"""Training checkpoints written before gate and up were one expert parameter still resume."""

from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

from timemoe_forecaster.config import TimeMoEConfig
from timemoe_forecaster.model.modeling import TimeMoEForPrediction
from timemoe_forecaster.train.optim import build_optimizer
from timemoe_forecaster.train.state import upgrade_optimizer_state


def trained_optimizer():
    torch.manual_seed(0)
    model = TimeMoEForPrediction(TimeMoEConfig.from_preset("tiny"))
    optimizer = build_optimizer(model, lr=1e-2)
    x = torch.randn(2, 32)
    model(x, labels=torch.randn(2, 32)).loss.backward()
    optimizer.step()
    return model, optimizer


def as_written_before(state: dict) -> dict:
    """The same optimizer state in the old layout: separate gate and up entries, named as back then."""
    per_param, names = {}, {}
    for key, value in state["state"].items():
        if key.endswith(".w_gate_up_EGH"):
            prefix = key[: -len("w_gate_up_EGH")]
            gate = {n: t.chunk(2, dim=1)[0].clone() if t.dim() == 3 else t.clone() for n, t in value.items()}
            up = {n: t.chunk(2, dim=1)[1].clone() if t.dim() == 3 else t.clone() for n, t in value.items()}
            per_param[prefix + "w_gate_EFH"], per_param[prefix + "w_up_EFH"] = gate, up
            names[key] = [prefix + "w_gate_EFH", prefix + "w_up_EFH"]
        else:
            per_param[key] = value
    groups = [{**g, "params": [n for p in g["params"] for n in names.get(p, [p])]} for g in state["param_groups"]]
    return {"state": per_param, "param_groups": groups}


def test_an_old_optimizer_state_is_joined_into_the_current_layout():
    model, optimizer = trained_optimizer()
    current = get_optimizer_state_dict(model, optimizer)
    old = as_written_before(current)
    assert any(k.endswith("w_up_EFH") for k in old["state"])
    upgraded = upgrade_optimizer_state(old)
    assert upgraded["state"].keys() == current["state"].keys()
    for key, value in current["state"].items():
        for name, tensor in value.items():
            assert torch.equal(upgraded["state"][key][name], tensor), (key, name)
    assert [g["params"] for g in upgraded["param_groups"]] == [g["params"] for g in current["param_groups"]]
    # And it loads: the resumed optimizer holds the same moments as the one that wrote it.
    model2 = TimeMoEForPrediction(TimeMoEConfig.from_preset("tiny"))
    optimizer2 = build_optimizer(model2, lr=1e-2)  # no state yet: all of it comes from the upgraded dict
    set_optimizer_state_dict(model2, optimizer2, upgraded)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(optimizer.state[p]["exp_avg"], optimizer2.state[q]["exp_avg"])


def test_a_current_optimizer_state_is_left_alone():
    model, optimizer = trained_optimizer()
    current = get_optimizer_state_dict(model, optimizer)
    assert upgrade_optimizer_state(current) is current
