"""load_model hands every caller its own module over the cached checkpoint tensors."""

import torch

from tests.helpers import make_model
from timemoe_forecaster.loading import load_model, shares_cached_weights


def _checkpoint(tmp_path):
    make_model(seed=5).save_pretrained(tmp_path)
    return str(tmp_path)


def test_loads_share_the_tensors_but_nothing_a_caller_can_change(tmp_path):
    path = _checkpoint(tmp_path)
    a, b = load_model(path, device="cpu"), load_model(path, device="cpu")
    context = torch.randn(2, 64)
    expected = b.forecast(context, 8)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert pa is not pb and pa.data_ptr() == pb.data_ptr(), name
        assert not pa.requires_grad, name
    assert a.config is not b.config and a.config == b.config
    assert shares_cached_weights(a) and shares_cached_weights(b)

    # What one caller does to its module reaches neither the other module nor later loads.
    a.to(torch.float64)
    a.config.extra["note"] = "changed by a"
    a.train()
    c = load_model(path, device="cpu")
    for model in (b, c):
        assert next(model.parameters()).dtype == torch.float32
        assert "note" not in model.config.extra and not model.training
        torch.testing.assert_close(model.forecast(context, 8), expected, rtol=0, atol=0)
    assert next(a.parameters()).dtype == torch.float64
    torch.testing.assert_close(a.eval().forecast(context, 8), expected)


def test_config_overrides_apply_to_their_load_only(tmp_path):
    path = _checkpoint(tmp_path)
    plain = load_model(path, device="cpu")
    longer = load_model(path, config={"max_position_embeddings": 8192}, device="cpu")
    again = load_model(path, device="cpu")
    assert longer.config.max_position_embeddings == 8192
    assert plain.config.max_position_embeddings == again.config.max_position_embeddings != 8192
    assert next(longer.parameters()).data_ptr() == next(plain.parameters()).data_ptr()


def test_an_estimator_asks_the_hub_once_per_process_for_a_hub_id(tmp_path, monkeypatch):
    import shutil
    import sys
    import types

    import numpy as np

    from timemoe_forecaster import TimeMoEForecaster

    remote = tmp_path / "remote"
    make_model(seed=5).save_pretrained(remote)
    hub, calls = types.ModuleType("huggingface_hub"), []

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append(repo_id)
        local = tmp_path / f"snapshot-{len(calls)}"
        shutil.copytree(remote, local)
        return str(local)

    hub.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    hub_id = f"owner/{tmp_path.name}"  # an id no other test has fetched in this process
    y = np.sin(np.arange(60.0))
    first = TimeMoEForecaster(model_path=hub_id, context_length=32, device="cpu").fit(y, fh=[1, 2]).predict()
    for _ in range(3):  # a cross-validation's refits
        again = TimeMoEForecaster(model_path=hub_id, context_length=32, device="cpu").fit(y, fh=[1, 2]).predict()
        np.testing.assert_array_equal(again, first)
    assert calls == [hub_id]
    shutil.rmtree(tmp_path / "snapshot-1")  # the user cleared the hub cache: fetched again, not a missing folder
    load_model(hub_id, device="cpu")
    assert calls == [hub_id, hub_id]


def test_load_state_dict_or_reset_on_one_caller_reaches_no_other_load(tmp_path):
    # Documented as "cached read-only": a.load_state_dict(...) copied into the cached tensors in place, so b, every
    # later load of the checkpoint in the process (and every estimator on it) forecast with the new weights.
    path = _checkpoint(tmp_path)
    a, b = load_model(path, device="cpu"), load_model(path, device="cpu")
    context = torch.randn(2, 64)
    expected = b.forecast(context, 8)
    other = make_model(seed=9)
    a.load_state_dict(other.state_dict())
    torch.testing.assert_close(a.forecast(context, 8), other.forecast(context, 8))
    assert not shares_cached_weights(a)
    d = load_model(path, device="cpu")
    d.reset_parameters()
    assert not shares_cached_weights(d)
    for model in (b, load_model(path, device="cpu")):
        torch.testing.assert_close(model.forecast(context, 8), expected, rtol=0, atol=0)


def test_the_cache_sees_a_checkpoint_replaced_by_one_with_the_same_file_times_and_sizes(tmp_path):
    # The cache keyed on (mtime, size) only: a checkpoint of the same architecture written over another and given
    # the same times (cp -p, rsync -a, tar, a file system with coarse times) kept serving the old weights.
    import os

    path = _checkpoint(tmp_path)
    times = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    load_model(path, device="cpu")
    replacement = make_model(seed=6)
    replacement.save_pretrained(tmp_path)
    for p in tmp_path.iterdir():
        os.utime(p, ns=(times[p.name], times[p.name]))
    got = load_model(path, device="cpu")
    assert torch.equal(got.lm_heads[0].out_layer.weight, replacement.lm_heads[0].out_layer.weight)
