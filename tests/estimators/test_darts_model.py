"""darts TimeMoEModel: zero-shot predict on one, many and multivariate series, backtests, fine-tuning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("darts")

from darts import TimeSeries  # noqa: E402

from tests.helpers import make_model  # noqa: E402
from timemoe_forecaster import preprocess  # noqa: E402
from timemoe_forecaster.darts import TimeMoEModel  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_darts_ckpt")
    make_model(seed=6).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def airline():
    from sktime.datasets import load_airline

    return TimeSeries.from_series(load_airline().to_timestamp(freq="M").astype("float64"))


def model(checkpoint, **kwargs):
    kwargs.setdefault("context_length", 48)
    kwargs.setdefault("device", "cpu")
    return TimeMoEModel(model_path=checkpoint, **kwargs)


def multivariate(n=40):
    t = np.arange(n, dtype=float)
    return TimeSeries.from_dataframe(pd.DataFrame({"a": np.sin(t / 4) * 3 + 10, "b": t * 0.5 - 2}))


def test_predict_one_series_matches_preprocess(checkpoint, airline):
    m = model(checkpoint).fit(airline)
    pred = m.predict(12)
    assert len(pred) == 12 and pred.start_time() == airline.end_time() + airline.freq
    expected = preprocess.forecast_series(m._model, [airline.values()[:, 0]], 12, context_length=48)[0]
    np.testing.assert_allclose(pred.values()[:, 0], expected, rtol=1e-6)


def test_list_and_multivariate_in_one_batched_call(checkpoint, airline):
    m = model(checkpoint).fit(airline)
    calls = []
    original = m._model.forecast
    m._model.forecast = lambda c, h, a=None: calls.append(tuple(c.shape)) or original(c, h, a)
    mv = multivariate()
    preds = m.predict(5, series=[airline, mv])
    assert len(calls) == 1 and calls[0][0] == 3  # 1 + 2 components, one call
    assert preds[1].components.tolist() == ["a", "b"] and len(preds[1]) == 5
    alone = m.predict(5, series=mv["b"])
    np.testing.assert_allclose(preds[1]["b"].values(), alone.values(), rtol=1e-5)


def test_historical_forecasts_and_backtest_without_retraining(checkpoint, airline):
    m = model(checkpoint).fit(airline)
    hist = m.historical_forecasts(airline, start=120, forecast_horizon=3, retrain=False, last_points_only=False)
    assert len(hist) == len(airline) - 120 - 2
    first = hist[0]
    direct = m.predict(3, series=airline[:120])
    np.testing.assert_allclose(first.values(), direct.values(), rtol=1e-6)
    error = m.backtest(airline, start=120, forecast_horizon=3, retrain=False)
    assert np.isfinite(error) and error > 0


@pytest.mark.parametrize("last_points_only, stride", [(True, 1), (False, 3)])
def test_batched_historical_forecasts_equal_the_one_by_one_path(checkpoint, airline, last_points_only, stride):
    m = model(checkpoint, batch_size=4096).fit(airline)
    gappy = airline.with_values(np.where(np.arange(len(airline))[:, None] % 17 == 5, np.nan, airline.values()))
    kwargs = dict(start=0.8, forecast_horizon=4, stride=stride, retrain=False, last_points_only=last_points_only)
    calls = []
    original = m._model.forecast
    m._model.forecast = lambda c, h, a=None: calls.append(1) or original(c, h, a)
    fast = m.historical_forecasts([airline, gappy, multivariate(60)], **kwargs)
    assert len(calls) == 1
    slow = m.historical_forecasts([airline, gappy, multivariate(60)], enable_optimization=False, **kwargs)
    for f_series, s_series in zip(fast, slow):
        pairs = [(f_series, s_series)] if last_points_only else list(zip(f_series, s_series))
        assert len(pairs) > 0 and (last_points_only or len(f_series) == len(s_series))
        for a, b in pairs:
            assert a.time_index.equals(b.time_index) and a.components.equals(b.components)
            np.testing.assert_allclose(a.values(), b.values(), rtol=1e-5)


def test_historical_forecasts_cut_contexts_chunk_by_chunk(checkpoint, airline, monkeypatch):
    # Every cut-off's context was cut at once and copied again by the forecast: 47 KB a row at the default context
    # (1,000 series x 200 cut-offs, about 9 GB). Chunks of rows give the same forecasts.
    import timemoe_forecaster.darts as tm_darts

    kwargs = dict(start=0.7, forecast_horizon=3, stride=1, retrain=False, last_points_only=False)
    series = [airline, multivariate(60)]
    whole = model(checkpoint, batch_size=4096).fit(airline).historical_forecasts(series, **kwargs)
    monkeypatch.setattr(tm_darts, "HISTORICAL_CHUNK_ROWS", 7)
    m = model(checkpoint, batch_size=2).fit(airline)
    rows, original = [], tm_darts.preprocess.forecast_series
    monkeypatch.setattr(
        tm_darts.preprocess,
        "forecast_series",
        lambda model, contexts, *a, **k: rows.append(len(contexts)) or original(model, contexts, *a, **k),
    )
    chunked = m.historical_forecasts(series, **kwargs)
    assert max(rows) == 7 and sum(rows) == sum(len(f) * f[0].n_components for f in whole)
    for a_list, b_list in zip(whole, chunked):
        assert len(a_list) == len(b_list) > 0
        for a, b in zip(a_list, b_list):
            assert a.time_index.equals(b.time_index)
            np.testing.assert_allclose(a.values(), b.values(), rtol=1e-5)


def test_fine_tuning_trains_a_private_copy(checkpoint, airline):
    zero = model(checkpoint).fit(airline)
    before = zero.predict(3).values()
    settings = {"steps": 2, "batch_size": 4, "max_length": 32, "lr": 1e-2}
    tuned = model(checkpoint, fine_tune=settings).fit([airline, multivariate()])
    assert tuned.fine_tune_result["steps"] == 2
    after = tuned.predict(3, series=airline).values()
    assert not np.allclose(after, before)
    tuned.fit([airline, multivariate()])  # refitting starts again from the checkpoint
    np.testing.assert_allclose(tuned.predict(3, series=airline).values(), after, rtol=1e-6)
    np.testing.assert_array_equal(zero.predict(3).values(), before)
    np.testing.assert_array_equal(model(checkpoint).fit(airline).predict(3).values(), before)


def test_missing_values_and_input_unchanged(checkpoint, airline):
    values = airline.values().copy()
    values[[0, 40, 41]] = np.nan
    gappy = airline.with_values(values)
    snapshot = gappy.values().copy()
    m = model(checkpoint).fit(gappy)
    pred = m.predict(4)
    assert np.isfinite(pred.values()).all()
    np.testing.assert_array_equal(gappy.values(), snapshot)


def test_save_load_and_untrained_model(checkpoint, airline, tmp_path):
    m = model(checkpoint).fit(airline)
    m.save(str(tmp_path / "m.pkl"))
    loaded = TimeMoEModel.load(str(tmp_path / "m.pkl"))
    np.testing.assert_array_equal(loaded.predict(3).values(), m.predict(3).values())
    fresh = m.untrained_model()
    assert fresh.context_length == 48 and fresh._model is None
    settings = {"steps": 1, "batch_size": 2, "max_length": 16, "lr": 1e-2}
    tuned = model(checkpoint, fine_tune=settings).fit(airline)
    tuned.save(str(tmp_path / "tuned.pkl"))
    reloaded = TimeMoEModel.load(str(tmp_path / "tuned.pkl"))
    np.testing.assert_allclose(reloaded.predict(3).values(), tuned.predict(3).values(), rtol=1e-6)


def test_a_zero_shot_model_saved_before_its_checkpoint_changed_is_refused_on_use(airline, tmp_path):
    path = tmp_path / "ckpt"
    make_model(seed=5).save_pretrained(path)
    model(str(path)).fit(airline).save(str(tmp_path / "m.pkl"))
    make_model(seed=6).save_pretrained(path)  # other weights under the same path: forecasts would change silently
    loaded = TimeMoEModel.load(str(tmp_path / "m.pkl"))
    with pytest.raises(ValueError, match="has changed since this TimeMoEModel was saved"):
        loaded.predict(3)
    # Saving it again, unused, carries the check on; fitting again starts from the checkpoint as it now is.
    loaded.save(str(tmp_path / "again.pkl"))
    with pytest.raises(ValueError, match="has changed since"):
        TimeMoEModel.load(str(tmp_path / "again.pkl")).predict(3)
    assert np.isfinite(loaded.fit(airline).predict(3).values()).all()


def test_unknown_fine_tuning_settings_are_refused_at_construction():
    with pytest.raises(ValueError, match=r"unknown fine-tuning setting\(s\) \['stepz'\]"):
        TimeMoEModel(fine_tune={"stepz": 3})


def test_a_refit_that_fails_leaves_the_fine_tuned_model_as_it_was(checkpoint, airline, tmp_path, monkeypatch):
    # The refit had already loaded the base model when fine-tuning failed (or Ctrl-C stopped it): the model stayed
    # "fitted", forecast zero-shot, reported the earlier fine-tuning and saved the base weights as if tuned.
    import timemoe_forecaster.train.trainer as trainer

    settings = {"steps": 2, "batch_size": 2, "max_length": 16, "lr": 1e-2}
    tuned = model(checkpoint, fine_tune=settings).fit(airline)
    before, report = tuned.predict(3).values(), tuned.fine_tune_result
    assert not np.allclose(before, model(checkpoint).fit(airline).predict(3).values())
    sparse = np.full(120, np.nan)
    sparse[[0, 50, 119]] = [1.0, 2.0, 3.0]  # forecastable, but no two observations close enough to train on
    with pytest.raises(ValueError, match="nothing to fine-tune on"):
        tuned.fit(TimeSeries.from_values(sparse))

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tuned.fit(airline)
    monkeypatch.undo()
    np.testing.assert_array_equal(tuned.predict(3).values(), before)
    assert tuned.fine_tune_result is report
    tuned.save(str(tmp_path / "m.pkl"))
    np.testing.assert_allclose(TimeMoEModel.load(str(tmp_path / "m.pkl")).predict(3).values(), before, rtol=1e-6)


def test_a_model_saved_for_a_gpu_loads_on_another_device(checkpoint, airline, tmp_path):
    # The weights were rebuilt on the saved device while unpickling: a model fine-tuned with device="cuda" could
    # not be loaded on a machine without one, and load() took no device to put it on instead.
    settings = {"steps": 1, "batch_size": 2, "max_length": 16, "lr": 1e-2}
    tuned = model(checkpoint, fine_tune=settings).fit(airline)
    expected = tuned.predict(3).values()
    gpu = "cuda:99"  # a device no machine here has
    tuned.device = gpu
    tuned._model_params["device"] = gpu
    tuned.save(str(tmp_path / "gpu.pkl"))
    on_cpu = TimeMoEModel.load(str(tmp_path / "gpu.pkl"), device="cpu")
    assert on_cpu.device == "cpu" and on_cpu.model_params["device"] == "cpu"
    np.testing.assert_allclose(on_cpu.predict(3).values(), expected, rtol=1e-6)
    as_saved = TimeMoEModel.load(str(tmp_path / "gpu.pkl"))  # loads; only using it needs the device
    with pytest.raises(ValueError, match="cuda:99"):
        as_saved.predict(3)
    as_saved.save(str(tmp_path / "again.pkl"))  # never used: its weights are passed on
    np.testing.assert_allclose(
        TimeMoEModel.load(str(tmp_path / "again.pkl"), device="cpu").predict(3).values(), expected, rtol=1e-6
    )


def test_a_path_model_path_saves_and_loads_safely(checkpoint, airline, tmp_path):
    # A pathlib.Path was pickled as is, which darts' safe loading refuses ("PosixPath is not allow-listed").
    from pathlib import Path

    m = TimeMoEModel(model_path=Path(checkpoint), context_length=48, device="cpu").fit(airline)
    m.save(str(tmp_path / "m.pkl"))
    loaded = TimeMoEModel.load(str(tmp_path / "m.pkl"))
    np.testing.assert_array_equal(loaded.predict(3).values(), m.predict(3).values())


def test_predict_after_a_clean_save_names_the_clean_save(checkpoint, airline, tmp_path):
    m = model(checkpoint).fit(airline)
    m.save(str(tmp_path / "clean.pkl"), clean=True)
    with pytest.raises(ValueError, match="saved with clean=True"):
        TimeMoEModel.load(str(tmp_path / "clean.pkl")).predict(3)


def test_historical_forecasts_take_verbose_in_predict_kwargs_and_warn_only_of_real_truncation(airline, caplog):
    m = TimeMoEModel(config={"preset": "tiny", "max_position_embeddings": 16}, device="cpu").fit(airline)
    for fast in (True, False):
        hist = m.historical_forecasts(
            airline[:40], start=30, retrain=False, predict_kwargs={"verbose": True}, enable_optimization=fast
        )
        assert len(hist) == 10
    caplog.clear()
    with caplog.at_level("WARNING"):  # histories of at most 10 points: nothing is cut
        m.historical_forecasts(airline[:40], start=5, forecast_horizon=30, retrain=False)
        m.historical_forecasts(airline[:10], start=5, forecast_horizon=3, retrain=False)
    assert "at most 16" not in caplog.text
    with caplog.at_level("WARNING"):
        m.historical_forecasts(airline[:40], start=30, retrain=False)
    assert "up to 39 points but the model takes at most 16" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        m.historical_forecasts(airline[:40], start=30, retrain=False, show_warnings=False)
        m.predict(2, series=airline[:40], show_warnings=False)
    assert "at most 16" not in caplog.text
    # Leading NaN are dropped, not history: 30 of 40 points missing leave 10 points, nothing is cut.
    values = airline[:40].values().copy()
    values[:30] = np.nan
    late = airline[:40].with_values(values)
    with caplog.at_level("WARNING"):
        m.predict(2, series=late)
        m.historical_forecasts(late, start=35, retrain=False)
    assert "at most 16" not in caplog.text
    values[:20] = airline[:20].values()
    values[:10] = np.nan
    with caplog.at_level("WARNING"):
        m.predict(2, series=airline[:40].with_values(values))
    assert "up to 30 points but the model takes at most 16" in caplog.text


def test_bad_input_is_a_clear_error(checkpoint, airline, tmp_path):
    m = model(checkpoint).fit(airline)
    with pytest.raises(ValueError, match="positive integer"):
        m.predict(0)
    bad = airline.values().copy()
    bad[3] = np.inf
    with pytest.raises(ValueError, match="inf"):
        m.predict(2, series=airline.with_values(bad))
    with pytest.raises(ValueError, match="only missing"):
        m.predict(2, series=airline.with_values(np.full_like(bad, np.nan)))
    with pytest.raises(ValueError, match="observed point"):
        m.predict(2, series=TimeSeries.from_values(np.array([np.nan, 1.0])))
    with pytest.raises(ValueError, match="covariates"):
        model(checkpoint).fit(airline, past_covariates=airline)
    with pytest.raises(ValueError, match="add_encoders"):
        TimeMoEModel(add_encoders={"position": {"past": ["relative"]}})
    with pytest.raises(ValueError, match="does not exist"):
        TimeMoEModel(model_path=str(tmp_path / "nowhere")).fit(airline)
    with pytest.raises(ValueError, match="exceeds the model's limit"):
        TimeMoEModel(config={"preset": "tiny", "max_position_embeddings": 32}, context_length=64).fit(airline)
    with pytest.raises(TypeError, match="TimeSeries"):
        m.predict(2, series=airline.values())


def test_a_stochastic_series_is_refused_not_read_as_its_first_sample(checkpoint, airline):
    m = model(checkpoint).fit(airline)
    v = airline.values()[:, :, None]
    stochastic = TimeSeries.from_times_and_values(airline.time_index, np.concatenate([v, 10 * v + 5000], axis=2))
    with pytest.raises(ValueError, match="stochastic"):
        m.predict(3, series=stochastic)
    with pytest.raises(ValueError, match="series 1 is stochastic"):
        m.historical_forecasts([airline, stochastic], start=0.9, retrain=False)
    with pytest.raises(ValueError, match="stochastic"):
        model(checkpoint).fit(stochastic)
    by_mean = m.predict(3, series=stochastic.mean()).values()
    np.testing.assert_allclose(by_mean, m.predict(3, series=airline.with_values(5.5 * v + 2500)).values(), rtol=1e-6)


def test_a_fine_tuned_model_forecasts_from_the_windows_it_was_trained_on(checkpoint, airline, caplog):
    settings = {"steps": 2, "batch_size": 2, "max_length": 32}
    tuned = model(checkpoint, context_length=None, fine_tune=settings).fit(airline)
    assert tuned.torch_model.config.default_context_length == 32
    same = model(checkpoint, context_length=32, fine_tune=settings).fit(airline)
    np.testing.assert_array_equal(tuned.predict(4).values(), same.predict(4).values())
    hist = tuned.historical_forecasts(airline, start=0.8, forecast_horizon=2, retrain=False)
    np.testing.assert_array_equal(
        hist.values(), same.historical_forecasts(airline, start=0.8, forecast_horizon=2, retrain=False).values()
    )
    with caplog.at_level("WARNING", logger="timemoe_forecaster"):
        model(checkpoint, context_length=48, fine_tune=settings).fit(airline)
    assert "context_length=48 is longer than this model's default context of 32 points" in caplog.text
    with pytest.raises(ValueError, match="scaling='standard'"):
        TimeMoEModel(scaling="none", fine_tune={"steps": 1})


def test_compiling_the_torch_model_keeps_the_forecasts(checkpoint, airline):
    """The documented fast path (docs/performance.md): compile ``torch_model`` in place after fit."""
    from timemoe_forecaster.compile import compile_blocks, uncompile_blocks

    m = model(checkpoint).fit(airline)
    expected = m.predict(12)
    compile_blocks(m.torch_model, backend="aot_eager")  # "inductor" on a GPU
    assert all(block._compiled_call_impl is not None for block in m.torch_model.model.layers)
    try:
        got = m.predict(12)
    finally:
        uncompile_blocks(m.torch_model)
    np.testing.assert_allclose(got.values(), expected.values(), rtol=1e-4)
    assert got.time_index.equals(expected.time_index)


def test_darts_conformal_wrapper_gives_intervals_around_our_point_forecast(checkpoint, airline):
    pytest.importorskip("pytorch_lightning")  # darts imports it for its conformal models
    from darts.models import ConformalNaiveModel

    m = model(checkpoint).fit(airline)
    conformal = ConformalNaiveModel(m, quantiles=[0.1, 0.5, 0.9])
    history = airline[:-12]
    bands = conformal.predict(6, series=history, predict_likelihood_parameters=True)
    lower, median, upper = (bands.values()[:, j] for j in range(3))
    np.testing.assert_allclose(median, m.predict(6, series=history).values()[:, 0], rtol=1e-6)
    assert (lower < median).all() and (median < upper).all()
    # Calibrated on our own errors: the symmetric half-width at step 1 is the 80% quantile of the absolute
    # errors of our 1-step forecasts over the history (darts' calibration set, all cut-offs it allows).
    past = m.historical_forecasts(history, start=48, forecast_horizon=1, retrain=False, last_points_only=True)
    errors = np.abs(history.slice_intersect(past).values()[:, 0] - past.values()[:, 0])
    assert errors.min() < upper[0] - median[0] < errors.max()


def test_progress_or_verbose_show_forecast_batches(checkpoint, airline, capsys):
    many = [airline[:-k] for k in (1, 2, 3)]
    model(checkpoint, batch_size=2, progress=True).fit(airline).predict(3, series=many)
    assert "forecast:" in capsys.readouterr().err
    quiet = model(checkpoint, batch_size=2).fit(airline)
    quiet.predict(3, series=many)
    assert "forecast:" not in capsys.readouterr().err
    quiet.predict(3, series=many, verbose=True)
    quiet.historical_forecasts(airline, start=0.9, forecast_horizon=2, retrain=False, verbose=True)
    assert capsys.readouterr().err.count("forecast:") >= 2


def test_long_gaps_with_a_short_context_match_the_one_by_one_path(checkpoint, airline):
    # Windows of 8 points that start inside (or lie wholly inside) 10-point gaps: the batched path copies
    # only the window plus the last observation before it, and must fill it exactly as predict() does.
    m = model(checkpoint, context_length=8).fit(airline)
    values = airline.values().copy()
    values[np.arange(len(values)) % 25 >= 15] = np.nan
    gappy = airline.with_values(values)
    kwargs = dict(start=30, forecast_horizon=2, retrain=False, last_points_only=True)
    sizes = []
    original = preprocess.forecast_series
    try:
        preprocess.forecast_series = lambda model, contexts, *a, **k: (
            sizes.extend(map(len, contexts)) or original(model, contexts, *a, **k)
        )
        fast = m.historical_forecasts(gappy, **kwargs)
    finally:
        preprocess.forecast_series = original
    assert 0 < max(sizes) <= 8 + 10 + 1  # not whole prefixes: memory stays linear in the cut-offs
    slow = m.historical_forecasts(gappy, enable_optimization=False, **kwargs)
    np.testing.assert_allclose(fast.values(), slow.values(), rtol=1e-5)


def test_historical_forecasts_start_after_leading_missing_values(checkpoint, airline, caplog):
    # Cut-offs inside leading NaN gave NaN forecasts, and a ConformalNaiveModel calibrated on them gave NaN
    # bounds at every step. They are skipped now, as darts moves a start before a model's first forecastable
    # point forward (with a warning that show_warnings=False hides).
    values = airline.values().copy()
    values[:20] = np.nan
    late = airline.with_values(values)
    m = model(checkpoint).fit(airline)
    with caplog.at_level("WARNING"):
        hist = m.historical_forecasts([airline, late], start=10, forecast_horizon=1, retrain=False)
    assert hist[0].start_time() == airline.time_index[10] and np.isfinite(hist[0].values()).all()
    assert hist[1].start_time() == airline.time_index[22]  # cut-off 22: two observed points before it
    assert hist[1].end_time() == airline.end_time() and np.isfinite(hist[1].values()).all()
    assert "series 1: the first 12 historical forecast(s)" in caplog.text
    assert f"starting at {airline.time_index[22]}" in caplog.text
    direct = m.predict(1, series=late[:40])
    np.testing.assert_allclose(hist[1][late.time_index[40]].values(), direct.values(), rtol=1e-6)
    caplog.clear()
    with caplog.at_level("WARNING"):
        m.historical_forecasts(late, start=10, forecast_horizon=1, retrain=False, show_warnings=False)
    assert "historical forecast" not in caplog.text
    with pytest.raises(ValueError, match="series 0: no historical forecast can start"):
        m.historical_forecasts(late[:21], start=5, forecast_horizon=1, retrain=False)
    # darts' one-by-one path calls predict() on each truncated series: the error gives that series' span.
    with pytest.raises(ValueError, match=rf"the series \({late.start_time()} to {late.time_index[9]}\)"):
        m.historical_forecasts(late, start=10, forecast_horizon=1, retrain=False, enable_optimization=False)


def test_conformal_intervals_of_a_series_with_leading_missing_values_are_finite(checkpoint, airline):
    from darts.models import ConformalNaiveModel

    values = airline.values().copy()
    values[:10] = np.nan
    late = airline[:60].with_values(values[:60])
    conformal = ConformalNaiveModel(model(checkpoint, context_length=32).fit(airline), quantiles=[0.1, 0.5, 0.9])
    bounds = conformal.predict(3, series=late, predict_likelihood_parameters=True).values()
    assert bounds.shape == (3, 3) and np.isfinite(bounds).all()
    assert (bounds[:, 0] <= bounds[:, 1]).all() and (bounds[:, 1] <= bounds[:, 2]).all()


def test_context_length_caps_the_history_but_is_not_a_minimum(checkpoint, airline):
    m = model(checkpoint, context_length=48).fit(airline)
    hist = m.historical_forecasts(airline, start=5, forecast_horizon=1, retrain=False)
    assert hist.start_time() == airline.time_index[5]
    np.testing.assert_allclose(hist.values()[0], m.predict(1, series=airline[:5]).values()[0], rtol=1e-6)


def test_a_misspelt_predict_argument_and_an_unfitted_model_are_clear_errors(checkpoint, airline):
    m = model(checkpoint).fit(airline)
    with pytest.raises(TypeError, match=r"unexpected arguments \['serie'\]"):
        m.predict(3, serie=airline[:50])
    with pytest.raises(ValueError, match="not fitted") as info:
        model(checkpoint).predict(3)
    assert "pass `series`" not in str(info.value)  # darts refuses an unfitted model even with series=
    # The batched historical forecasts ignored predict_kwargs; the one-by-one path refused them.
    for fast in (True, False):
        with pytest.raises(TypeError, match=r"unexpected arguments \['bogus'\]"):
            m.historical_forecasts(
                airline, start=100, retrain=False, predict_kwargs={"bogus": 1}, enable_optimization=fast
            )


def test_a_model_fit_on_a_list_of_one_series_predicts_it_and_ensembles(checkpoint, airline):
    # fit([s]) left training_series unset, so predict(n) asked for `series` ("fit on several series") and
    # ConformalNaiveModel around it failed; darts' own models store the one series.
    from darts.models import ConformalNaiveModel

    alone = model(checkpoint).fit(airline).predict(3)
    listed = model(checkpoint).fit([airline]).predict(3)
    np.testing.assert_array_equal(listed.values(), alone.values())
    conformal = ConformalNaiveModel(model(checkpoint).fit([airline]), quantiles=[0.1, 0.5, 0.9]).predict(3)
    assert len(conformal) == 3 and conformal.start_time() == alone.start_time()
    with pytest.raises(ValueError, match="several series"):
        model(checkpoint).fit([airline, airline]).predict(3)


def test_a_series_longer_than_the_model_takes_is_truncated_with_a_warning(airline, caplog):
    m = TimeMoEModel(config={"preset": "tiny", "max_position_embeddings": 64}, device="cpu").fit(airline)
    with caplog.at_level("WARNING"):
        pred = m.predict(2)
    assert "takes at most 64" in caplog.text
    np.testing.assert_allclose(pred.values(), m.predict(2, series=airline[-64:]).values(), rtol=1e-6)


def test_fit_verbose_shows_the_fine_tuning_bar_as_progress_does(checkpoint, airline, capsys):
    settings = {"steps": 2, "batch_size": 2, "max_length": 16}
    model(checkpoint, fine_tune=settings).fit(airline)
    assert "train" not in capsys.readouterr().err
    model(checkpoint, fine_tune=settings).fit(airline, verbose=True)  # was accepted and ignored
    assert "train:" in capsys.readouterr().err


def test_fit_takes_darts_fit_options_left_unset_and_refuses_them_set(checkpoint, airline):
    # Code written for darts' global models passes val_series=None, sample_weight=None: refused as unexpected.
    m = model(checkpoint).fit(airline, val_series=None, sample_weight=None, max_samples_per_ts=None)
    assert np.isfinite(m.predict(3).values()).all()
    with pytest.raises(TypeError, match=r"does not use: \['epochs', 'val_series'\]"):
        model(checkpoint).fit(airline, val_series=airline, epochs=3)


def test_a_retraining_backtest_gives_its_fit_warnings_once_and_none_with_show_warnings_false(caplog):
    # darts fits a fresh copy at every cut-off and does not pass show_warnings to fit: a fit-time warning (here:
    # an untrained preset) came once per cut-off, 31 times in a 31-cut-off backtest, with show_warnings=False too.
    s = TimeSeries.from_values(np.sin(np.arange(40) / 3))
    f = TimeMoEModel(config="tiny", context_length=16, device="cpu")
    with caplog.at_level("WARNING", logger="timemoe_forecaster"):
        f.historical_forecasts(s, start=30, retrain=True)
    assert caplog.text.count("randomly initialised") == 1
    caplog.clear()
    with caplog.at_level("WARNING", logger="timemoe_forecaster"):
        f.backtest(s, start=30, retrain=True, show_warnings=False)
        f.fit(s)  # outside a backtest, every fit warns
    assert caplog.text.count("randomly initialised") == 1


def test_show_warnings_false_silences_the_horizon_past_the_window(checkpoint, caplog):
    from timemoe_forecaster import TimeMoEForPrediction

    limit = TimeMoEForPrediction.from_pretrained(checkpoint).config.max_position_embeddings
    s = TimeSeries.from_values(np.sin(np.arange(40) / 3))
    f = model(checkpoint).fit(s)
    with caplog.at_level("WARNING", logger="timemoe_forecaster"):
        f.predict(limit + 1, show_warnings=False)
    assert "whole context window" not in caplog.text
    with caplog.at_level("WARNING", logger="timemoe_forecaster"):
        f.predict(limit + 1)
    assert "whole context window" in caplog.text


def test_a_names_training_setting_is_refused_when_the_model_is_made_not_at_fit():
    # train_on_series takes `names`, but the estimators name the series themselves: accepted here, it made fit fail
    # with "train_on_series() got multiple values for keyword argument 'names'".
    from timemoe_forecaster import TimeMoEForecaster

    with pytest.raises(ValueError, match=r"unknown fine-tuning setting\(s\) \['names'\]"):
        TimeMoEModel(fine_tune={"steps": 1, "names": ["a"]})
    with pytest.raises(ValueError, match=r"setting\(s\) \['names'\]"):
        TimeMoEForecaster(fine_tune={"steps": 1, "names": ["a"]})
