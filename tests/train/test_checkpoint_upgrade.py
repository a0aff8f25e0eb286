"""Training checkpoints written before parameters were joined (expert gate/up, q/k/v) still resume."""

from __future__ import annotations

import pytest
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


def as_written_before(state: dict, config: TimeMoEConfig) -> dict:
    """The same optimizer state in the old layouts, named as back then: separate expert gate and up
    entries (before session 6), separate q, k and v entries (before session 11)."""
    h, kv = config.hidden_size, config.num_key_value_heads * config.head_dim
    splits = {  # new leaf -> (old leaves, sizes along the joined dim or None for halves, dim)
        "w_gate_up_EGH": (["w_gate_EFH", "w_up_EFH"], None, 1),
        "qkv_proj.weight": (["q_proj.weight", "k_proj.weight", "v_proj.weight"], [h, kv, kv], 0),
        "qkv_proj.bias": (["q_proj.bias", "k_proj.bias", "v_proj.bias"], [h, kv, kv], 0),
    }
    per_param, names = {}, {}
    for key, value in state["state"].items():
        leaf = next((leaf for leaf in splits if key.endswith("." + leaf)), None)
        if leaf is None:
            per_param[key] = value
            continue
        prefix, (old_leaves, sizes, dim) = key[: -len(leaf)], splits[leaf]
        for i, old in enumerate(old_leaves):
            per_param[prefix + old] = {
                n: (t.split(sizes, dim) if sizes else t.chunk(len(old_leaves), dim))[i].clone()
                if t.dim()
                else t.clone()
                for n, t in value.items()
            }
        names[key] = [prefix + old for old in old_leaves]
    groups = [{**g, "params": [n for p in g["params"] for n in names.get(p, [p])]} for g in state["param_groups"]]
    return {"state": per_param, "param_groups": groups}


def test_an_old_optimizer_state_is_joined_into_the_current_layout():
    model, optimizer = trained_optimizer()
    current = get_optimizer_state_dict(model, optimizer)
    old = as_written_before(current, model.config)
    for leaf in ("w_up_EFH", "self_attn.k_proj.bias", "self_attn.v_proj.weight"):
        assert any(k.endswith(leaf) for k in old["state"]), leaf
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


def test_an_old_state_with_a_frozen_part_of_a_join_is_refused_by_name():
    model, optimizer = trained_optimizer()
    old = as_written_before(get_optimizer_state_dict(model, optimizer), model.config)
    frozen = next(k for k in old["state"] if k.endswith("layers.0.self_attn.q_proj.weight"))
    del old["state"][frozen]  # q frozen, k and v trained: no moments for q
    with pytest.raises(ValueError, match=r"qkv_proj\.weight.*no optimizer state for .*q_proj\.weight.*init_from"):
        upgrade_optimizer_state(old)
