"""The memo of forecasts and calibration residuals: a fitted forecaster's interval methods on the same data
forecast once, and nothing stale is ever served (other data, settings or weights)."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

pytest.importorskip("sktime")

from sktime.datasets import load_airline  # noqa: E402
from sktime.utils.deep_equals import deep_equals  # noqa: E402

import timemoe_forecaster.sktime as sk  # noqa: E402
from tests.helpers import make_model  # noqa: E402
from timemoe_forecaster import TimeMoEForecaster, memo  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("memo_ckpt")
    make_model(seed=5).save_pretrained(path)
    return str(path)


@pytest.fixture
def counted(monkeypatch):
    """How many times the estimator forecast and calibrated."""
    calls = {"forecast": 0, "calibrate": 0}

    def wrap(name, key):
        original = getattr(sk, name) if hasattr(sk, name) else getattr(sk.preprocess, name)

        def counting(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)

        return counting

    monkeypatch.setattr(sk.preprocess, "forecast_series", wrap("forecast_series", "forecast"))
    monkeypatch.setattr(sk, "rolling_residuals", wrap("rolling_residuals", "calibrate"))
    return calls


def fitted(checkpoint, y=None, **kwargs):
    kwargs = {"context_length": 48, "device": "cpu", "conformal_windows": 5, **kwargs}
    return TimeMoEForecaster(model_path=checkpoint, **kwargs).fit(load_airline() if y is None else y, fh=[1, 2, 3])


METHODS = [
    lambda f: f.predict(),
    lambda f: f.predict_interval(coverage=0.8),
    lambda f: f.predict_interval(coverage=[0.5, 0.9]),
    lambda f: f.predict_quantiles(alpha=[0.1, 0.9]),
    lambda f: f.predict_var(),
    lambda f: f.predict_proba().mean(),
]


def every_method(f):
    return [method(f) for method in METHODS]


def test_the_probabilistic_methods_forecast_and_calibrate_once_and_give_what_they_gave_alone(checkpoint, counted):
    f = fitted(checkpoint)
    together = every_method(f)
    assert counted == {"forecast": 1, "calibrate": 1}
    for method, got in zip(METHODS, together):
        memo.clear()  # each method alone, on an empty memo
        np.testing.assert_array_equal(got.to_numpy(), method(f).to_numpy())


def test_predict_like_methods_leave_the_forecaster_as_it_was(checkpoint):
    f = fitted(checkpoint)
    before = {k: v for k, v in f.__dict__.items() if k != "model_"}
    every_method(f)
    assert deep_equals(before, {k: v for k, v in f.__dict__.items() if k != "model_"})


def test_new_data_or_other_settings_are_forecast_again(checkpoint, counted, monkeypatch):
    """With one model for every fit (as after ``pretrain``), only the key tells the settings apart."""
    from timemoe_forecaster.loading import load_model

    model = load_model(checkpoint, device="cpu")
    monkeypatch.setattr(TimeMoEForecaster, "_base_model", lambda self: model)
    y = load_airline()
    f = fitted(checkpoint, y.iloc[:120])
    f.predict_interval()
    assert counted == {"forecast": 1, "calibrate": 1}
    f.update(y.iloc[120:121], update_params=False)  # the context moves on: new series
    f.predict_interval()
    f.predict()
    assert counted == {"forecast": 2, "calibrate": 2}
    for name, value in [("conformal_windows", 6), ("conformal_cutoffs", "per_step"), ("context_length", 40)]:
        f.set_params(**{name: value})  # the model stays; the memo must not answer for the earlier setting
        f.fit(y.iloc[:121], fh=[1, 2, 3])
        f.predict_interval()
        assert f.model_ is model
    assert counted == {"forecast": 3, "calibrate": 5}  # context_length changes the forecast, the others do not
    f.set_params(batch_size=7, conformal_windows=5, conformal_cutoffs="spread")
    f.fit(y.iloc[:121], fh=[1, 2, 3])
    f.predict()
    assert counted["forecast"] == 4


def test_an_in_place_change_of_the_weights_is_forecast_again(counted):
    f = TimeMoEForecaster(config={"preset": "tiny", "max_position_embeddings": 128}, context_length=48, device="cpu")
    f.fit(load_airline(), fh=[1, 2, 3])
    before = f.predict_interval()
    with torch.no_grad():  # private weights (a fresh preset's), changed where they are
        for p in f.model_.parameters():
            p.mul_(1.5)
    after = f.predict_interval()
    assert counted == {"forecast": 2, "calibrate": 2}
    assert not np.allclose(before.to_numpy(), after.to_numpy())


def test_remembered_arrays_are_read_only_and_entries_are_bounded():
    model = torch.nn.Linear(2, 2)
    value = memo.remembered(model, ("a",), lambda: (np.zeros(3), [np.ones(2)]))
    with pytest.raises(ValueError, match="read-only"):
        value[1][0][0] = 5.0
    assert memo.remembered(model, ("a",), lambda: None) is value
    for i in range(memo.ENTRIES_PER_MODEL):
        memo.remembered(model, ("b", i), lambda: np.zeros(1))
    assert memo.remembered(model, ("a",), lambda: "recomputed") == "recomputed"  # the oldest went first


def test_a_value_over_the_size_limit_is_returned_but_not_kept(monkeypatch):
    monkeypatch.setattr(memo, "MAX_ENTRY_BYTES", 100)
    model = torch.nn.Linear(2, 2)
    big = memo.remembered(model, ("big",), lambda: np.zeros(100))
    assert big.shape == (100,)
    assert memo.remembered(model, ("big",), lambda: "again") == "again"


def test_entries_go_with_their_model():
    model = torch.nn.Linear(2, 2)
    memo.remembered(model, ("a",), lambda: np.zeros(1))
    assert len(memo._memo) == 1
    del model
    gc.collect()
    assert len(memo._memo) == 0


def test_series_digest_tells_values_lengths_and_nan_apart():
    a = np.array([1.0, 2.0, np.nan])
    digests = {
        memo.series_digest([a]),
        memo.series_digest([a[:2]]),
        memo.series_digest([a[:1], a[1:]]),
        memo.series_digest([np.array([1.0, 2.0, 3.0])]),
    }
    assert len(digests) == 4
    assert memo.series_digest([a]) == memo.series_digest([a.copy()])


def test_new_storage_put_under_the_weights_is_forecast_again(counted):
    # vector_to_parameters (and any ``param.data = ...``) swaps the storage without moving the version counter.
    f = TimeMoEForecaster(config={"preset": "tiny", "max_position_embeddings": 128}, context_length=48, device="cpu")
    f.fit(load_airline(), fh=[1, 2, 3])
    before = f.predict()
    vector = torch.nn.utils.parameters_to_vector(f.model_.parameters())
    torch.nn.utils.vector_to_parameters(vector * 1.5, f.model_.parameters())
    after = f.predict()
    assert counted["forecast"] == 2
    assert not np.allclose(before.to_numpy(), after.to_numpy())


def test_new_weights_put_where_freed_ones_were_are_forecast_again():
    # A loop that swaps storage under the weights (perturbations, model soups) can get new weights at the address
    # of weights freed before, with the version counter where it was: the (identity, address, version) key then
    # matched an entry made for other weights and served its stale forecast. Here the address is reused on purpose:
    # each parameter's storage wraps a numpy buffer, is dropped, and a new storage wraps the same (changed) buffer.
    f = TimeMoEForecaster(config={"preset": "tiny", "max_position_embeddings": 128}, context_length=48, device="cpu")
    f.fit(load_airline(), fh=[1, 2, 3])
    params = list(f.model_.parameters())
    buffers = [p.detach().numpy().copy() for p in params]
    for p, b in zip(params, buffers):
        p.data = torch.from_numpy(b)
    addresses = [p.data_ptr() for p in params]
    before = f.predict().to_numpy()
    for p in params:
        p.data = torch.zeros(1)  # the buffers' storages are freed
    for b in buffers:
        b *= 1.5  # no tensor holds them now
    for p, b in zip(params, buffers):
        p.data = torch.from_numpy(b)  # new storages at the old addresses, version counters as they were
    assert [p.data_ptr() for p in params] == addresses
    after = f.predict().to_numpy()
    memo.clear()
    np.testing.assert_array_equal(after, f.predict().to_numpy())
    assert not np.allclose(after, before)
