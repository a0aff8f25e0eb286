import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import make_model
from timemoe_forecaster import TimeMoEForPrediction
from timemoe_forecaster.checkpoint import CheckpointError, from_official, to_official


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_round_trip_is_bit_exact(tmp_path, dtype):
    model = make_model().to(dtype)
    model.save_pretrained(tmp_path)
    loaded = TimeMoEForPrediction.from_pretrained(tmp_path, dtype="auto")  # as stored
    assert_same_weights(model, loaded)
    assert loaded.config == model.config
    assert next(TimeMoEForPrediction.from_pretrained(tmp_path).parameters()).dtype == torch.float32  # the default
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == str(dtype).split(".")[1]


def test_saved_keys_are_the_official_names(tmp_path):
    make_model().save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert "model.layers.1.ffn_layer.experts.3.down_proj.weight" in keys
    assert "model.layers.0.ffn_layer.shared_expert_gate.weight" in keys
    assert "model.embed_layer.gate_layer.weight" in keys and "lm_heads.3.out_layer.weight" in keys
    assert "model.layers.0.self_attn.q_proj.bias" in keys and "model.layers.0.self_attn.o_proj.bias" not in keys
    assert not any("_EGH" in k or "_EHF" in k for k in keys)


def test_official_key_mapping_round_trips():
    state = make_model().state_dict()
    back = from_official(to_official(state))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_sharded_save_and_load(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path, max_shard_size="4KiB")
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    assert_same_weights(model, TimeMoEForPrediction.from_pretrained(tmp_path))


def test_saving_again_replaces_our_weight_files_and_keeps_the_users(tmp_path):
    # The clean-up removed every "model*.safetensors": a user's model_best_epoch3.safetensors was lost.
    (tmp_path / "model_best_epoch3.safetensors").write_bytes(b"mine")
    (tmp_path / "model-notes.safetensors").write_bytes(b"mine too")
    make_model().save_pretrained(tmp_path, max_shard_size="4KiB")
    model = make_model()
    model.save_pretrained(tmp_path)  # one file now: the shards and their index must go
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["config.json", "model-notes.safetensors", "model.safetensors", "model_best_epoch3.safetensors"]
    assert_same_weights(model, TimeMoEForPrediction.from_pretrained(tmp_path))
    make_model().save_pretrained(tmp_path, max_shard_size="4KiB")  # and back to shards: the single file goes
    assert not (tmp_path / "model.safetensors").exists() and (tmp_path / "model_best_epoch3.safetensors").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary files left


def test_a_save_cut_short_after_its_weights_loads_the_new_weights(tmp_path, monkeypatch):
    # A single-file save over a sharded one removed the old index after writing config.json; cut short there,
    # the loader (which prefers an index) read the old shards under the new config.
    make_model(seed=1).save_pretrained(tmp_path, max_shard_size="4KiB")
    new = make_model(seed=2)
    import timemoe_forecaster.checkpoint as checkpoint

    def cut_short(self, *args, **kwargs):
        raise OSError("killed")

    original = checkpoint._atomic_write
    monkeypatch.setattr(
        checkpoint,
        "_atomic_write",
        lambda path, write: cut_short(path) if path.name == "config.json" else original(path, write),
    )
    with pytest.raises(OSError, match="killed"):
        new.save_pretrained(tmp_path)
    monkeypatch.undo()
    assert_same_weights(new, TimeMoEForPrediction.from_pretrained(tmp_path))


def test_an_index_whose_shards_are_gone_gives_way_to_the_single_file_beside_it(tmp_path, caplog):
    # transformers' save_pretrained leaves the old index when an unsharded save replaces a sharded one, and loads
    # model.safetensors; we refused the folder ("shard ... listed in model.safetensors.index.json is missing").
    from timemoe_forecaster.checkpoint import checkpoint_files

    make_model(seed=1).save_pretrained(tmp_path / "sharded", max_shard_size="4KiB")
    model = make_model(seed=2)
    model.save_pretrained(tmp_path / "resaved")
    index = tmp_path / "resaved" / "model.safetensors.index.json"
    index.write_bytes((tmp_path / "sharded" / index.name).read_bytes())
    with caplog.at_level("WARNING", logger="timemoe_forecaster"):
        assert_same_weights(model, TimeMoEForPrediction.from_pretrained(tmp_path / "resaved"))
    assert "names shards that are gone" in caplog.text
    assert checkpoint_files(tmp_path / "resaved")[-1].name == "model.safetensors"
    (tmp_path / "resaved" / "model.safetensors").unlink()  # no single file: the index's missing shard is named
    with pytest.raises(CheckpointError, match="listed in model.safetensors.index.json is missing"):
        TimeMoEForPrediction.from_pretrained(tmp_path / "resaved")


def test_the_trainers_model_files_replace_an_earlier_sharded_save(tmp_path):
    from timemoe_forecaster.train import state as train_state

    make_model(seed=1).save_pretrained(tmp_path, max_shard_size="4KiB")
    model = make_model(seed=2)
    train_state.write_model(tmp_path, model.config, model.state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert_same_weights(model, TimeMoEForPrediction.from_pretrained(tmp_path))


def test_a_failed_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    # The old weights were deleted before the new ones were written: a failing write left no weights.
    model = make_model()
    model.save_pretrained(tmp_path)
    import timemoe_forecaster.checkpoint as checkpoint

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        make_model().save_pretrained(tmp_path, max_shard_size="4KiB")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert_same_weights(model, TimeMoEForPrediction.from_pretrained(tmp_path))


@pytest.mark.parametrize(
    "dtype, stored", [("bfloat16", "bfloat16"), ("torch.float16", "float16"), (torch.float64, "float64")]
)
def test_save_dtype_takes_names_as_loading_does(tmp_path, dtype, stored):
    make_model().save_pretrained(tmp_path, dtype=dtype)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == stored
    loaded = TimeMoEForPrediction.from_pretrained(tmp_path, dtype=dtype)
    assert next(loaded.parameters()).dtype == getattr(torch, stored)


@pytest.mark.parametrize("dtype", [torch.int8, "int8", "float17", torch.float8_e4m3fn])
def test_save_refuses_a_dtype_it_could_not_load_before_writing(tmp_path, dtype):
    # torch.int8 was written (and then refused on loading); "bfloat16" was read as a device name.
    with pytest.raises(ValueError, match="dtype must be one of"):
        make_model().save_pretrained(tmp_path / "ckpt", dtype=dtype)
    assert not (tmp_path / "ckpt").exists()


def test_a_shard_index_cannot_reach_outside_the_checkpoint(tmp_path):
    # The index's file names were joined to the folder unchecked: "../other/..." loaded another folder's weights.
    make_model().save_pretrained(tmp_path / "other", max_shard_size="4KiB")
    model = make_model()
    model.save_pretrained(tmp_path / "ckpt", max_shard_size="4KiB")
    index_path = tmp_path / "ckpt" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    key = next(iter(index["weight_map"]))
    escapes = ("/etc/passwd", "\\Windows\\x.safetensors", "C:x.safetensors", "sub/../../x", "..\\x")
    for outside in (
        f"../other/{index['weight_map'][key]}",
        str(tmp_path / "other" / index["weight_map"][key]),
        *escapes,
    ):
        index["weight_map"][key] = outside
        index_path.write_text(json.dumps(index))
        with pytest.raises(CheckpointError, match="outside the checkpoint"):
            TimeMoEForPrediction.from_pretrained(tmp_path / "ckpt")


def test_shards_that_are_symlinks_load_as_in_the_hub_cache(tmp_path):
    # huggingface_hub's snapshots/<rev>/ holds symlinks into ../../blobs/: the names are inside the folder
    # although the files resolve outside it.
    model = make_model()
    model.save_pretrained(tmp_path / "saved", max_shard_size="4KiB")
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted((tmp_path / "saved").iterdir())):
        blob = blobs / f"sha{i}"
        f.rename(blob)
        (snapshot / f.name).symlink_to(f"../../blobs/{blob.name}")
    assert_same_weights(model, TimeMoEForPrediction.from_pretrained(snapshot))


def test_load_with_dtype_and_device(tmp_path):
    saved = make_model()
    saved.save_pretrained(tmp_path)
    model = TimeMoEForPrediction.from_pretrained(str(tmp_path), dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    for (key, want), got in zip(saved.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(got, want.to(torch.bfloat16)), key  # the stored weights, cast
    assert model.forecast(torch.randn(1, 8), 4).shape == (1, 4)


def test_missing_key_is_named(tmp_path):
    make_model().save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.norm.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.norm.weight"):
        TimeMoEForPrediction.from_pretrained(tmp_path)


def test_missing_expert_is_named(tmp_path):
    make_model().save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.layers.0.ffn_layer.experts.1.up_proj.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="experts.1.up_proj"):
        TimeMoEForPrediction.from_pretrained(tmp_path)


def test_wrong_shape_is_named(tmp_path):
    make_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["hidden_size"] = 16
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape"):
        TimeMoEForPrediction.from_pretrained(tmp_path)


@pytest.mark.parametrize("leaf", ["weight", "bias"])
def test_q_k_v_rows_that_only_add_up_are_refused(tmp_path, leaf):
    # Joined into one q/k/v tensor, k and v of 6 and 10 rows (config: 8 and 8) passed the total's shape check and
    # loaded with rows moved between k and v.
    make_model().save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    prefix = "model.layers.0.self_attn"
    k, v = state[f"{prefix}.k_proj.{leaf}"], state[f"{prefix}.v_proj.{leaf}"]
    state[f"{prefix}.k_proj.{leaf}"] = torch.cat([k, v])[: k.shape[0] - 2]
    state[f"{prefix}.v_proj.{leaf}"] = torch.cat([k, v])[k.shape[0] - 2 :]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"{leaf} shapes that do not fit together"):
        TimeMoEForPrediction.from_pretrained(tmp_path)


def test_a_save_removes_the_temporary_files_of_saves_killed_half_way(tmp_path):
    # A run killed while its final model.safetensors was written left a hidden temporary file (gigabytes for the
    # large presets) that nothing ever removed.
    (tmp_path / ".model.safetensors.tmp-k1ll3d_x").write_bytes(b"half a model")  # mkstemp's suffix: 8 characters
    (tmp_path / ".model.safetensors.bak").write_text("the user's")
    make_model().save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.safetensors.bak", "config.json", "model.safetensors"]


def test_truncated_file_is_named(tmp_path):
    make_model().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        TimeMoEForPrediction.from_pretrained(tmp_path)


def test_pickle_disguised_as_safetensors_is_rejected(tmp_path):
    make_model().save_pretrained(tmp_path)
    torch.save(make_model().state_dict(), tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        TimeMoEForPrediction.from_pretrained(tmp_path)


class _Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_malicious_pickle_bin_never_executes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_model().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Exploit()}))
    with pytest.raises(CheckpointError, match="weights_only"):
        TimeMoEForPrediction.from_pretrained(tmp_path)
    assert not (tmp_path / "PWNED").exists()


def test_safe_bin_checkpoint_loads(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    assert_same_weights(model, TimeMoEForPrediction.from_pretrained(tmp_path))


def test_sharded_bin_checkpoint_loads_safely(tmp_path, monkeypatch):
    # transformers writes pytorch_model-0000i-of-0000n.bin shards with an index when safe_serialization=False;
    # they were reported as "no weights".
    model = make_model()
    model.save_pretrained(tmp_path, max_shard_size="4KiB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    renamed = {}
    for shard in sorted(set(index["weight_map"].values())):
        renamed[shard] = shard.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
        torch.save(load_file(tmp_path / shard), tmp_path / renamed[shard])
        (tmp_path / shard).unlink()
    (tmp_path / "model.safetensors.index.json").unlink()
    index["weight_map"] = {k: renamed[v] for k, v in index["weight_map"].items()}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert_same_weights(model, TimeMoEForPrediction.from_pretrained(tmp_path))
    # A shard that is a malicious pickle is refused like a single .bin.
    monkeypatch.chdir(tmp_path)
    first = sorted(renamed.values())[0]
    (tmp_path / first).write_bytes(pickle.dumps({"w": _Exploit()}))
    with pytest.raises(CheckpointError, match="weights_only"):
        TimeMoEForPrediction.from_pretrained(tmp_path)
    assert not (tmp_path / "PWNED").exists()


def test_missing_directory_and_config_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        TimeMoEForPrediction.from_pretrained(tmp_path / "nope" / "deeper")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        TimeMoEForPrediction.from_pretrained(tmp_path / "empty")


def test_unreachable_hub_id_says_how_to_pass_a_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="local directory"):
        TimeMoEForPrediction.from_pretrained("Maple728/TimeMoE-50M-does-not-exist")


def test_embedded_default_loads_offline():
    model = TimeMoEForPrediction.from_pretrained(None)
    assert model.forecast(torch.randn(1, 32), 5).shape == (1, 5)


def test_an_existing_file_is_named_as_a_file_not_a_missing_directory(tmp_path):
    make_model().save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="is a file; expected a checkpoint directory") as info:
        TimeMoEForPrediction.from_pretrained(tmp_path / "model.safetensors")
    assert "does not exist" not in str(info.value) and str(tmp_path) in str(info.value)


@pytest.mark.parametrize("dtype", ["int8", "nonsense", torch.int32, "float8_e4m3fn", torch.float8_e5m2])
def test_a_dtype_the_model_cannot_run_in_is_refused_before_loading(tmp_path, dtype):
    # 'int8' failed deep inside load_state_dict, 'nonsense' with an AttributeError on the torch module, and the
    # float8 types at the first forecast ("isfinite" not implemented for 'Float8_e4m3fn').
    make_model().save_pretrained(tmp_path)
    with pytest.raises(
        ValueError,
        match="dtype must be one of 'float32', 'bfloat16'.*or 'auto' for the dtype the weights are stored in",
    ):
        TimeMoEForPrediction.from_pretrained(tmp_path, dtype=dtype)
    loaded = TimeMoEForPrediction.from_pretrained(tmp_path, dtype="bfloat16")  # names of float dtypes still work
    assert next(loaded.parameters()).dtype == torch.bfloat16


def test_a_missing_path_that_looks_local_is_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    import sys
    import types

    hub = types.ModuleType("huggingface_hub")
    asked = []

    def snapshot_download(repo_id, **kwargs):
        asked.append(repo_id)
        raise OSError("offline\nsecond line of a long hub message")

    hub.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for typo in ("./typo", "../typo", "./runs/x", "data/missing.csv", "models/typo", "~/no-such-dir-here/x"):
        with pytest.raises(CheckpointError, match="does not exist locally"):
            TimeMoEForPrediction.from_pretrained(typo)
    assert asked == []
    # Shaped like a hub id with nothing local around it: asked on the hub, and the error says both.
    with pytest.raises(CheckpointError) as info:
        TimeMoEForPrediction.from_pretrained("owner/model-1.0")
    assert asked == ["owner/model-1.0"]
    message = str(info.value)
    assert "is not a local directory" in message and "check its spelling" in message and "\n" not in message


@pytest.mark.parametrize("size, message", [(0, "at least 1 byte"), (-5, "at least 1 byte"), ([1], "bytes or a string")])
def test_a_shard_size_that_makes_no_sense_is_refused(tmp_path, size, message):
    with pytest.raises(ValueError, match=message):
        make_model().save_pretrained(tmp_path, max_shard_size=size)


def test_a_float_shard_size_is_bytes(tmp_path):
    make_model().save_pretrained(tmp_path, max_shard_size=4e3)
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    assert torch.equal(
        TimeMoEForPrediction.from_pretrained(tmp_path).forecast(torch.ones(1, 8), 2).isfinite(),
        torch.ones(1, 2, dtype=torch.bool),
    )


def test_a_device_the_machine_lacks_is_refused_before_reading_weights(tmp_path):
    make_model().save_pretrained(tmp_path)
    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    with pytest.raises(ValueError, match="sees (no|only)"):
        TimeMoEForPrediction.from_pretrained(tmp_path, device=missing)
    with pytest.raises(ValueError, match="device must be"):
        TimeMoEForPrediction.from_pretrained(tmp_path, device="gpu")
    with pytest.raises(ValueError, match="device='meta' holds no values"):  # it failed at the first forecast
        TimeMoEForPrediction.from_pretrained(tmp_path, device="meta")


def _fake_hub(monkeypatch, remote: Path, calls: list):
    """A huggingface_hub whose snapshot_download copies the files of ``remote`` that match allow_patterns."""
    import fnmatch
    import shutil
    import sys
    import types

    hub = types.ModuleType("huggingface_hub")

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append({"repo_id": repo_id, "revision": revision, "allow_patterns": allow_patterns, **kwargs})
        if revision not in (None, "main"):
            raise FileNotFoundError(f"no revision {revision}\nmore lines")
        local = remote.parent / f"snapshot-{len(calls)}"
        for path in remote.rglob("*"):
            name = path.relative_to(remote).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (local / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, local / name)
        return str(local)

    hub.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)


def test_a_hub_repo_with_only_bin_weights_is_fetched_and_read_safely(tmp_path, monkeypatch):
    # transformers' save_pretrained(safe_serialization=False) layout: the .bin files were never downloaded, and
    # the error then listed pytorch_model.bin among the expected files.
    remote = tmp_path / "remote"
    model = make_model()
    model.save_pretrained(remote)
    torch.save(load_file(remote / "model.safetensors"), remote / "pytorch_model.bin")
    (remote / "model.safetensors").unlink()
    calls = []
    _fake_hub(monkeypatch, remote, calls)
    loaded = TimeMoEForPrediction.from_pretrained("owner/bin-only")
    assert [c["allow_patterns"][1] for c in calls] == ["*.safetensors", "pytorch_model*.bin"]
    x = torch.randn(2, 24)
    torch.testing.assert_close(loaded.forecast(x, 5), model.forecast(x, 5), rtol=0, atol=0)


def test_hub_subfolder_and_options_are_passed_and_a_missing_revision_is_named(tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    make_model().save_pretrained(remote / "inner")
    calls = []
    _fake_hub(monkeypatch, remote, calls)
    loaded = TimeMoEForPrediction.from_pretrained("owner/name", subfolder="inner", cache_dir=str(tmp_path / "c"))
    assert isinstance(loaded, TimeMoEForPrediction)
    assert calls[0]["allow_patterns"][0] == "inner/config.json" and calls[0]["cache_dir"] == str(tmp_path / "c")
    with pytest.raises(CheckpointError, match="has no subfolder 'other'"):
        TimeMoEForPrediction.from_pretrained("owner/name", subfolder="other")
    # The repo exists; the revision does not: the message names the revision.
    with pytest.raises(CheckpointError, match="as a hub id at revision 'v2.0' failed"):
        TimeMoEForPrediction.from_pretrained("owner/name", revision="v2.0")
    # A local folder takes a subfolder too.
    assert isinstance(TimeMoEForPrediction.from_pretrained(remote, subfolder="inner"), TimeMoEForPrediction)


def test_transformers_spellings_are_refused_by_name_before_any_download(tmp_path, monkeypatch):
    calls = []
    _fake_hub(monkeypatch, tmp_path / "remote", calls)
    with pytest.raises(TypeError, match="unexpected argument.*torch_dtype.*use dtype=") as info:
        TimeMoEForPrediction.from_pretrained("owner/name", torch_dtype=torch.bfloat16)
    assert "__init__" not in str(info.value)
    assert calls == []  # refused before fetching (and before reading any weight)


@pytest.mark.parametrize("bad", [make_model, b"/tmp", 3])
def test_a_checkpoint_that_is_not_a_path_is_a_type_error(bad):
    value = bad() if callable(bad) else bad
    # A model object went through Path(str(obj)): "OSError: [Errno 36] File name too long" from pathlib.
    with pytest.raises(TypeError, match="directory path \\(str or pathlib.Path\\), a hub id"):
        TimeMoEForPrediction.from_pretrained(value)


def test_a_name_too_long_for_the_file_system_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="is not a usable path"):
        TimeMoEForPrediction.from_pretrained("x" * 300 + "/y")


def test_a_home_relative_path_names_the_same_folder_for_saving_and_loading(tmp_path, monkeypatch):
    # Loading expanded "~" and saving did not: save_pretrained("~/m") wrote ./~/m, and from_pretrained("~/m") then
    # read $HOME/m, an older model if one was there, without a word. The trainer's output folder likewise.
    from timemoe_forecaster.train.config import TrainConfig

    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    model = make_model(seed=3)
    model.save_pretrained("~/m")
    assert (home / "m" / "config.json").is_file() and not (work / "~").exists()
    assert_same_weights(TimeMoEForPrediction.from_pretrained("~/m"), model)
    assert TrainConfig(config="tiny", output_dir="~/run").output_dir == str(home / "run")


@pytest.mark.parametrize(
    "key, edit",
    [
        ("model.layers.1.ffn_layer.experts.2.gate_proj.weight", lambda t: t[:, :-1]),
        ("model.layers.0.ffn_layer.experts.3.down_proj.weight", lambda t: t[:-1]),
        ("model.layers.1.self_attn.q_proj.weight", lambda t: t.reshape(-1)),
    ],
)
def test_a_per_expert_or_q_k_v_tensor_of_the_wrong_shape_is_named(tmp_path, key, edit):
    # Such tensors are stacked or joined before the shapes are checked: torch's "stack expects each tensor to be
    # equal size" or "tuple index out of range" came out, naming no tensor.
    make_model().save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state[key] = edit(state[key]).contiguous()
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        TimeMoEForPrediction.from_pretrained(tmp_path)


def test_an_empty_path_is_refused_not_read_as_the_working_directory():
    with pytest.raises(CheckpointError, match="empty"):
        TimeMoEForPrediction.from_pretrained("")


@pytest.mark.parametrize("kwargs, named", [({"attn_backend": "bogus"}, "bogus"), ({"moe_dispatch": "x"}, "'x'")])
def test_a_bad_model_argument_is_blamed_on_the_argument_not_the_config(tmp_path, kwargs, named, monkeypatch):
    import timemoe_forecaster.checkpoint as checkpoint

    make_model().save_pretrained(tmp_path)
    monkeypatch.setattr(checkpoint, "read_weights", lambda d: pytest.fail("read the weights first"))
    with pytest.raises(ValueError, match=named) as info:
        TimeMoEForPrediction.from_pretrained(tmp_path, **kwargs)
    assert "config.json" not in str(info.value)
