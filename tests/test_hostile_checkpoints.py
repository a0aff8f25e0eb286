"""Checkpoints that were tampered with, damaged or odd: a clear CheckpointError naming the problem, quickly and
in bounded memory, never a raw torch error, a hang or a stale cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import make_model
from timemoe_forecaster import TimeMoEForPrediction
from timemoe_forecaster.checkpoint import CheckpointError
from timemoe_forecaster.loading import load_model

EXPERT = "model.layers.0.ffn_layer.experts.{}.gate_proj.weight"
Q = "model.layers.0.self_attn.q_proj.weight"


def _checkpoint(path: Path) -> Path:
    make_model(seed=3).save_pretrained(path)
    return path


def _edit_weights(path: Path, edit) -> None:
    state = load_file(str(path / "model.safetensors"))
    edit(state)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


def _edit_config(path: Path, edit) -> None:
    values = json.loads((path / "config.json").read_text())
    edit(values)
    (path / "config.json").write_text(json.dumps(values))


def _expert_far_away(state):  # one 8x8 tensor named experts.999999999999: range(max index) filled the memory
    state[EXPERT.format(999999999999)] = torch.zeros(8, 8)


def _int_query(state):  # promoted to float by the q/k/v join, so it passed the non-float check
    state[Q] = state[Q].to(torch.int64)


def _one_float8_expert(state):  # torch.stack's promotion error
    state[EXPERT.format(1)] = state[EXPERT.format(1)].to(torch.float8_e5m2)


def _misshaped_expert(state):
    state[EXPERT.format(1)] = torch.zeros(state[EXPERT.format(1)].shape[0] + 1, state[EXPERT.format(1)].shape[1])


def _one_dimensional_query(state):
    state[Q] = state[Q].flatten()


def _expert_spelt_twice(state):  # experts.01 beside experts.1: the later one silently won
    state[EXPERT.format("01")] = state[EXPERT.format(1)] + 1.0


def _joined_and_parts(state):  # the internal joined q/k/v beside the official parts: one was silently dropped
    state["model.layers.0.self_attn.qkv_proj.weight"] = torch.cat(
        [state[Q], state[Q.replace("q_proj", "k_proj")], state[Q.replace("q_proj", "v_proj")]]
    )


def _nan_query(state):  # loaded silently; every forecast then failed
    state[Q][0, 0] = float("nan")


def _inf_expert(state):
    state[EXPERT.format(1)][-1, -1] = float("-inf")


def _huge_but_finite(state):  # a sum over these overflows, yet every value is finite: must still load
    state[Q][:2] = 3e38


@pytest.mark.parametrize(
    "edit, message",
    [
        (_nan_query, r"q_proj\.weight in .* holds 1 NaN or infinite value\(s\) of \d+"),
        (_inf_expert, r"experts\.1\.gate_proj\.weight in .* holds 1 NaN or infinite value"),
        (_huge_but_finite, None),
        (_expert_spelt_twice, r"two tensors for .*experts\.1\.gate_proj"),
        (_joined_and_parts, "both qkv_proj.weight and its q/k/v parts"),
        (_expert_far_away, r"missing key .*experts\.\d+\.gate_proj"),
        (_int_query, "non-float dtype torch.int64"),
        (_one_float8_expert, "do not fit together"),
        (_misshaped_expert, "do not fit together|shape"),
        (_one_dimensional_query, "do not fit together|shape"),
    ],
)
def test_tampered_weights_are_named(tmp_path, edit, message):
    path = _checkpoint(tmp_path / "ckpt")
    _edit_weights(path, edit)
    for load in (TimeMoEForPrediction.from_pretrained, lambda p: load_model(p, device="cpu")):
        if message is None:
            assert isinstance(load(str(path)), TimeMoEForPrediction)
            continue
        with pytest.raises((CheckpointError, ValueError), match=message):
            load(str(path))


@pytest.mark.parametrize(
    "edit, message",
    [
        # Refused before the model is built: building 100,000 layers on the meta device took ten minutes.
        (lambda c: c.update(num_hidden_layers=100_000), "says 100000 decoder layers; the weights hold"),
        (lambda c: c.update(hidden_size=10**9), "cannot be built|shape"),
        (lambda c: c.update(num_experts=2**63), "cannot be built"),
        (lambda c: c.update(timemoe_forecaster="not a dict"), None),  # loads: an odd description is no status
    ],
)
def test_tampered_configs_are_named_before_building_the_model(tmp_path, edit, message):
    path = _checkpoint(tmp_path / "ckpt")
    _edit_config(path, edit)
    if message is None:
        assert isinstance(TimeMoEForPrediction.from_pretrained(path), TimeMoEForPrediction)
        from timemoe_forecaster.cli import main

        assert main(["forecast", "--model", str(path), "--horizon", "1", "--show", "0"]) == 0
        return
    with pytest.raises(CheckpointError, match=message):
        TimeMoEForPrediction.from_pretrained(path)


@pytest.mark.parametrize(
    "key, meant, hint",
    [
        ("hidden_sizes", "hidden_size", "shape"),  # the default width fails every head's shape
        ("Num_Hidden_Layers", "num_hidden_layers", "decoder layers"),  # the default 32 layers fail the count
        ("Num_Experts", "num_experts", "cannot be built"),  # the default 1 expert is fewer than top-2
    ],
)
def test_a_misspelt_config_key_is_named_in_a_warning_and_in_the_error(tmp_path, caplog, key, meant, hint):
    path = _checkpoint(tmp_path / "ckpt")
    _edit_config(path, lambda c: c.update({key: c.pop(meant)}))
    with caplog.at_level("WARNING", logger="timemoe_forecaster.config"):
        with pytest.raises(CheckpointError, match=f"{hint}.*unknown key\\(s\\) '{key}' \\(for '{meant}'\\?\\)"):
            TimeMoEForPrediction.from_pretrained(path)
    assert f"config key '{key}' is not a Time-MoE key, so '{meant}' takes its default" in caplog.text


def test_a_look_alike_key_beside_the_real_one_is_no_misspelling(tmp_path, caplog):
    path = _checkpoint(tmp_path / "ckpt")
    _edit_config(path, lambda c: c.update({"Num_Experts": 3}))  # num_experts is there too, and is what is used
    with caplog.at_level("WARNING", logger="timemoe_forecaster.config"):
        model = TimeMoEForPrediction.from_pretrained(path)
    assert "takes its default" not in caplog.text and model.config.num_experts != 1


def test_keys_other_tools_write_raise_no_misspelling_warning(tmp_path, caplog):
    path = _checkpoint(tmp_path / "ckpt")
    extra = {"auto_map": {"AutoConfig": "x.Y"}, "_name_or_path": "x", "output_router_logits": False, "id2label": {}}
    _edit_config(path, lambda c: c.update(extra))
    with caplog.at_level("WARNING", logger="timemoe_forecaster.config"):
        model = TimeMoEForPrediction.from_pretrained(path)
    assert "not a Time-MoE key" not in caplog.text
    assert model.config.extra["auto_map"] == extra["auto_map"]


def test_json_nested_too_deep_or_not_utf8_is_named(tmp_path):
    path = _checkpoint(tmp_path / "ckpt")
    (path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        TimeMoEForPrediction.from_pretrained(path)
    (path / "config.json").write_text('{"hidden_size": 8}', encoding="utf-16")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        TimeMoEForPrediction.from_pretrained(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_special_files_are_refused_unread(tmp_path, name):
    path = _checkpoint(tmp_path / "ckpt")
    (path / name).unlink()
    os.mkfifo(path / name)  # reading it blocked forever
    with pytest.raises(CheckpointError, match=f"{name} is not a regular file"):
        TimeMoEForPrediction.from_pretrained(path)
    if Path("/dev/zero").exists():  # reading it filled the memory
        (path / name).unlink()
        (path / name).symlink_to("/dev/zero")
        with pytest.raises(CheckpointError, match=f"{name} is not a regular file"):
            TimeMoEForPrediction.from_pretrained(path)


def test_auto_dtype_keeps_only_a_dtype_the_model_runs_in(tmp_path):
    path = _checkpoint(tmp_path / "ckpt")
    _edit_weights(path, lambda s: s.update({k: v.to(torch.float8_e4m3fn) for k, v in s.items()}))
    with pytest.raises(CheckpointError, match="float8_e4m3fn, which dtype='auto' cannot keep"):
        TimeMoEForPrediction.from_pretrained(path, dtype="auto")
    loaded = TimeMoEForPrediction.from_pretrained(path, dtype="float32")  # an explicit dtype converts
    assert next(loaded.parameters()).dtype == torch.float32


@pytest.mark.parametrize("content", ["non-string key", "sparse"])
def test_bin_files_hold_dense_tensors_under_names(tmp_path, content):
    path = _checkpoint(tmp_path / "ckpt")
    state = load_file(str(path / "model.safetensors"))
    (path / "model.safetensors").unlink()
    if content == "non-string key":
        state[5] = torch.zeros(1)
        message = "flat dict of tensors under string names"
    else:
        state["model.norm.weight"] = state["model.norm.weight"].to_sparse()
        message = "sparse_coo tensor; weights are dense"
    torch.save(state, path / "pytorch_model.bin")
    for load in (TimeMoEForPrediction.from_pretrained, lambda p: load_model(p, device="cpu")):
        with pytest.raises(CheckpointError, match=message):
            load(path)


def _sharded(path: Path) -> Path:
    make_model(seed=3).save_pretrained(path, max_shard_size=4000)
    return path


def test_every_shard_holds_exactly_what_the_index_assigns_it(tmp_path):
    path = _sharded(tmp_path / "ckpt")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    key, home = "model.norm.weight", index["weight_map"]["model.norm.weight"]
    other = next(name for name in sorted(set(index["weight_map"].values())) if name != home)
    stray = load_file(str(path / other))
    stray[key] = torch.full_like(load_file(str(path / home))[key], 123.0)  # won if its shard was read last
    save_file(stray, str(path / other))
    with pytest.raises(CheckpointError, match=f"shard {other} holds {key}, which .* assigns to {home}"):
        TimeMoEForPrediction.from_pretrained(path)
    stray.pop(key)
    save_file(stray, str(path / other))
    index["weight_map"]["model.extra.weight"] = other  # listed, held by no shard: not missed
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="lists model.extra.weight in .*, which does not hold it"):
        TimeMoEForPrediction.from_pretrained(path)


def test_the_cache_sees_a_shard_in_a_subfolder_change(tmp_path):
    # The cache key listed the directory's top level only: a rewritten shard in a subfolder kept the old weights.
    path = _sharded(tmp_path / "ckpt")
    index_path = path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = index["weight_map"]["model.norm.weight"]
    (path / "sub").mkdir()
    shutil.move(path / name, path / "sub" / name)
    index["weight_map"] = {k: (f"sub/{v}" if v == name else v) for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    before = load_model(str(path), device="cpu").state_dict()["model.norm.weight"].clone()
    shard = load_file(str(path / "sub" / name))
    shard["model.norm.weight"] = shard["model.norm.weight"] + 7.0
    save_file(shard, str(path / "sub" / name))
    os.utime(path / "sub" / name, ns=(1, 1))  # a new time whatever the clock's resolution
    after = load_model(str(path), device="cpu").state_dict()["model.norm.weight"]
    torch.testing.assert_close(after, before + 7.0)


def test_a_save_keeps_the_code_files_auto_map_names_without_running_them(tmp_path, caplog):
    # A fine-tune of an official checkpoint kept auto_map in config.json but not the modules it names, so the
    # official loader (AutoModelForCausalLM, trust_remote_code=True) failed on the saved folder.
    from timemoe_forecaster.train.state import write_model

    path = _checkpoint(tmp_path / "official")
    auto_map = {"AutoConfig": "configuration_time_moe.TimeMoeConfig", "AutoModelForCausalLM": "modeling_time_moe.M"}
    _edit_config(path, lambda c: c.update({"auto_map": auto_map}))
    code = {"configuration_time_moe.py": b"raise SystemExit('ran')\n", "modeling_time_moe.py": b"import os\n"}
    code["ts_generation_mixin.py"] = b"# imported by modeling_time_moe\n"
    for name, text in code.items():
        (path / name).write_bytes(text)
    model = TimeMoEForPrediction.from_pretrained(path)  # the SystemExit module is never imported
    model.save_pretrained(tmp_path / "saved")
    write_model(tmp_path / "trained", model.config, model.state_dict())  # what finetune and pretrain write
    from timemoe_forecaster.loading import load_model

    load_model(str(path), {"max_position_embeddings": 64}).save_pretrained(tmp_path / "overridden")  # config.replace
    for folder in ("saved", "trained", "overridden"):
        assert {name: (tmp_path / folder / name).read_bytes() for name in code} == code
        assert json.loads((tmp_path / folder / "config.json").read_text())["auto_map"] == auto_map
    for name in code:  # loaded from the hub, say, where only config.json and the weights come
        (path / name).unlink()
    with caplog.at_level("WARNING", logger="timemoe_forecaster"):
        TimeMoEForPrediction.from_pretrained(path).save_pretrained(tmp_path / "bare")
    assert "configuration_time_moe.py, modeling_time_moe.py: not in" in caplog.text
    assert not list((tmp_path / "bare").glob("*.py"))
