import json

import pytest
import torch

from timemoe_forecaster import PRESETS, TimeMoEConfig, TimeMoEForPrediction
from timemoe_forecaster.config import resolve_config

EXPECTED_PARAMS = {"base": 113_352_192, "large": 453_196_800, "ultra": 2_416_545_792}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_paper_presets_have_exact_parameter_counts(name):
    with torch.device("meta"):  # ultra would need 10 GB otherwise
        model = TimeMoEForPrediction(TimeMoEConfig.from_preset(name))
    assert model.num_parameters() == EXPECTED_PARAMS[name]


def test_tiny_preset_is_a_few_thousand_parameters():
    model = TimeMoEForPrediction(TimeMoEConfig.from_preset("tiny"))
    assert 1_000 <= model.num_parameters() < 10_000
    assert list(PRESETS)[0] == "tiny"


def test_activated_parameters_count_only_top_k_experts():
    with torch.device("meta"):
        model = TimeMoEForPrediction(TimeMoEConfig.from_preset("base"))
    c = model.config
    unused = c.num_hidden_layers * (c.num_experts - c.num_experts_per_tok) * 3 * c.hidden_size * c.expert_size
    assert model.num_parameters(activated=True) == EXPECTED_PARAMS["base"] - unused


def test_config_json_round_trip_keeps_unknown_keys(tmp_path):
    config = TimeMoEConfig.from_preset("tiny")
    raw = config.to_dict()
    raw["auto_map"] = {"AutoModelForCausalLM": "modeling_time_moe.TimeMoeForPrediction"}
    raw["transformers_version"] = "4.40.1"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    loaded = TimeMoEConfig.from_json_file(tmp_path / "config.json")
    assert loaded.extra["auto_map"] == raw["auto_map"]
    loaded.to_json_file(tmp_path / "again.json")
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["auto_map"] == raw["auto_map"]
    assert again["model_type"] == "time_moe"
    assert TimeMoEConfig.from_json_file(tmp_path / "again.json") == loaded


def test_missing_keys_take_official_defaults():
    config = TimeMoEConfig.from_dict({"model_type": "time_moe", "hidden_size": 64, "num_attention_heads": 4})
    assert config.num_key_value_heads == 4
    assert config.horizon_lengths == [1]
    assert config.rms_norm_eps == 1e-6


def test_new_attention_heads_bring_their_key_value_heads_unless_grouped():
    # replace() carried the old derived count over: 8 heads kept 4 key/value heads (silent grouped-query
    # attention) and 2 heads were refused as "not a multiple of 4".
    small = TimeMoEConfig.from_preset("small")
    assert small.replace(num_attention_heads=8).num_key_value_heads == 8
    assert resolve_config("small", num_attention_heads=2).num_key_value_heads == 2
    assert resolve_config("small", num_attention_heads=8) == TimeMoEConfig.from_preset("small", num_attention_heads=8)
    grouped = small.replace(num_key_value_heads=2)
    assert grouped.replace(num_attention_heads=8).num_key_value_heads == 2
    assert small.replace(num_attention_heads=8, num_key_value_heads=4).num_key_value_heads == 4


def test_replace_gives_a_copy_that_shares_no_mutable_field():
    # dataclasses.replace is shallow: editing the copy's extra changed the original's.
    base = TimeMoEConfig.from_preset("tiny", extra={"note": {"who": "a"}})
    copy = base.replace(max_position_embeddings=512)
    copy.extra["note"]["who"] = "b"
    copy.horizon_lengths.append(128)
    assert base.extra == {"note": {"who": "a"}} and base.horizon_lengths == [1, 8, 32, 64]


def test_the_balance_loss_follows_dense_or_routed_as_in_the_official_config():
    assert TimeMoEConfig.from_preset("tiny").apply_aux_loss is True
    assert TimeMoEConfig.from_preset("tiny", use_dense=True).apply_aux_loss is False
    assert TimeMoEConfig.from_preset("tiny", use_dense=True, apply_aux_loss=True).apply_aux_loss is False
    assert TimeMoEConfig.from_preset("tiny").replace(use_dense=True).replace(use_dense=False).apply_aux_loss is True
    no_balance = TimeMoEConfig.from_preset("tiny", apply_aux_loss=False)
    assert no_balance.apply_aux_loss is False
    assert no_balance.replace(hidden_size=16).apply_aux_loss is False
    # Written so that the official loader accepts it: the balance loss on, weighted zero.
    written = no_balance.to_dict()
    assert (written["apply_aux_loss"], written["router_aux_loss_factor"]) == (True, 0.0)
    read_back = TimeMoEConfig.from_dict(written)  # and read back without a balance loss to compute
    assert read_back.apply_aux_loss is False and read_back.to_dict() == written
    dense = TimeMoEConfig.from_preset("tiny", use_dense=True).to_dict()
    assert (dense["use_dense"], dense["apply_aux_loss"]) == (True, False)


def test_swish_is_silu():
    model = TimeMoEForPrediction(TimeMoEConfig.from_preset("tiny", hidden_act="swish"))
    silu = TimeMoEForPrediction(TimeMoEConfig.from_preset("tiny"))
    silu.load_state_dict(model.state_dict())
    context = torch.randn(2, 12)
    assert torch.equal(model.forecast(context, 9), silu.forecast(context, 9))


@pytest.mark.parametrize(
    "field, value",
    [
        ("hidden_size", 0),
        ("num_attention_heads", 3),
        ("horizon_lengths", [8, 1]),
        ("horizon_lengths", None),
        ("hidden_act", "tanh"),
        ("rms_norm_eps", None),
        ("rms_norm_eps", 0.0),
        ("rope_theta", "1e4"),
        ("rope_theta", float("nan")),
        # Read from a hand-edited config.json: "false" is truthy (a dense model was built and the error blamed
        # the weights), 8.9 was read as 8, "0" failed inside a comparison, and "no" was kept as a true value.
        ("use_dense", "false"),
        ("apply_aux_loss", "no"),
        ("use_cache", 1),
        ("horizon_lengths", [1, 8.9, 32]),
        ("horizon_lengths", [1, True]),
        ("attention_dropout", "0"),
        ("router_aux_loss_factor", -0.1),
        ("hidden_act", ["silu"]),
        ("extra", 5),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TimeMoEConfig.from_preset("tiny", **{field: value})


def test_whole_floats_and_numpy_values_from_a_config_are_accepted():
    import numpy as np

    cfg = TimeMoEConfig.from_dict({"horizon_lengths": [1.0, np.int64(8)], "use_dense": np.bool_(True)})
    assert cfg.horizon_lengths == [1, 8] and cfg.use_dense is True
    # numpy numbers (a grid search's values) for any size or rate: hidden_size=np.int64(8) was refused while
    # horizon_lengths took them; all come out as Python numbers, which JSON writes (np.float32 it does not).
    import json

    cfg = TimeMoEConfig.from_preset(
        "tiny", hidden_size=np.int64(8), rms_norm_eps=np.float32(1e-6), attention_dropout=np.float32(0.0)
    )
    assert type(cfg.hidden_size) is int and type(cfg.rms_norm_eps) is float
    assert json.loads(json.dumps(cfg.to_dict()))["hidden_size"] == 8
    with pytest.raises(ValueError, match="config key 'extra' must be a mapping"):
        TimeMoEConfig.from_dict({"extra": 5})


def test_more_experts_per_token_than_experts_is_named_when_the_model_is_built():
    from timemoe_forecaster import TimeMoEForPrediction

    config = TimeMoEConfig.from_preset("tiny", num_experts_per_tok=5)  # of 4; the official defaults do this too
    with pytest.raises(ValueError, match=r"num_experts_per_tok \(5\) must be at most num_experts \(4\)"):
        TimeMoEForPrediction(config)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [("hidden_size", 30, "head dimension"), ("use_dense", "false", "use_dense"), ("rope_theta", -1.0, "rope_theta")],
)
def test_a_config_edited_after_construction_is_checked_when_a_model_is_built(field, value, named):
    config = TimeMoEConfig.from_preset("tiny")
    setattr(config, field, value)
    with pytest.raises(ValueError, match=named):
        TimeMoEForPrediction(config)


def test_wrong_model_type_and_unknown_preset_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="model_type"):
        TimeMoEConfig.from_dict({"model_type": "llama"})
    with pytest.raises(ValueError, match="unknown preset"):
        TimeMoEConfig.from_preset("huge")
    with pytest.raises(ValueError, match="neither a preset"):
        resolve_config(str(tmp_path / "nope.json"))
