"""preprocess.py: missing values, scaling, left padding and batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import make_model
from timemoe_forecaster import preprocess


@pytest.fixture(scope="module")
def model():
    return make_model(seed=3)


def test_fill_missing_trims_leading_interpolates_inside_holds_trailing():
    x = np.array([np.nan, np.nan, 1.0, np.nan, 3.0, 4.0, np.nan, np.nan])
    before = x.copy()
    out = preprocess.fill_missing(x)
    np.testing.assert_allclose(out, [1.0, 2.0, 3.0, 4.0, 4.0, 4.0])
    np.testing.assert_array_equal(np.isnan(x), np.isnan(before))  # input untouched


@pytest.mark.parametrize(
    "values, message",
    [([np.nan, np.nan], "only missing"), ([np.nan, 1.0], "1 observed point"), ([], "only missing")],
)
def test_fill_missing_rejects_series_without_two_observations(values, message):
    with pytest.raises(ValueError, match=message):
        preprocess.fill_missing(np.array(values, dtype=float))


def test_as_float_array_rejects_non_numeric_inf_and_empty():
    with pytest.raises(TypeError, match="non-numeric"):
        preprocess.as_float_array(np.array(["a", "b"], dtype=object))
    with pytest.raises(TypeError, match="numeric"):
        preprocess.as_float_array(np.array(["a", "b"]))
    with pytest.raises(ValueError, match="inf"):
        preprocess.as_float_array([1.0, np.inf])
    with pytest.raises(ValueError, match="empty"):
        preprocess.as_float_array([])


def test_check_context_length():
    assert preprocess.check_context_length(None, 4096) == 4096
    assert preprocess.check_context_length(16, 64) == 16
    with pytest.raises(ValueError, match="exceeds the model's limit"):
        preprocess.check_context_length(65, 64)
    with pytest.raises(ValueError, match="positive integer"):
        preprocess.check_context_length(0, 64)
    with pytest.raises(ValueError, match="scaling"):
        preprocess.check_scaling("minmax")


def test_pad_left_masks_padding():
    batch = preprocess.pad_left([np.array([1.0, 2.0, 3.0]), np.array([5.0])])
    assert batch.context.shape == (2, 3) and batch.context.dtype == torch.float32
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.context[1].tolist() == [0.0, 0.0, 5.0]
    assert preprocess.pad_left([np.ones(2), np.ones(2)]).attention_mask is None


def test_padded_batch_equals_one_at_a_time(model):
    rng = np.random.default_rng(0)
    series = [rng.normal(size=n).cumsum() + 10 for n in (7, 30, 2, 19)]
    together = preprocess.forecast_series(model, series, 9, batch_size=64)
    alone = np.concatenate([preprocess.forecast_series(model, [s], 9) for s in series])
    chunked = preprocess.forecast_series(model, series, 9, batch_size=3)
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(chunked, alone, rtol=1e-4, atol=1e-4)


def test_forecasts_are_shift_and_scale_equivariant(model):
    rng = np.random.default_rng(1)
    series = [np.sin(np.arange(40) / 3) + rng.normal(0, 0.1, 40), rng.normal(size=25).cumsum()]
    base = preprocess.forecast_series(model, series, 12)
    moved = preprocess.forecast_series(model, [1e3 + 250.0 * s for s in series], 12)
    np.testing.assert_allclose(moved, 1e3 + 250.0 * base, rtol=1e-4)
    assert np.ptp(base, axis=1).min() > 1e-3  # the model really varies over the horizon


@pytest.mark.parametrize("factor", [1e-200, 1e200])
def test_scale_equivariance_holds_at_extreme_magnitudes(model, factor):
    # The std squared the values: at 1e200 it overflowed (forecasts -inf), at 1e-200 it underflowed to 0, the
    # scale fell back to 1 and the float32 context became all zeros (forecasts near 0, not near 1e-200 x ...).
    rng = np.random.default_rng(1)
    series = [np.sin(np.arange(40) / 3) + rng.normal(0, 0.1, 40) + 5]
    base = preprocess.forecast_series(model, series, 6)
    np.testing.assert_allclose(preprocess.forecast_series(model, [factor * s for s in series], 6), factor * base, 1e-4)


def test_raw_values_the_model_cannot_hold_are_refused_not_forecast_as_nan():
    # scaling="none" with values of 1e30 gave NaN forecasts (logged only), and predict_interval then claimed the
    # series were too short. From ~1e10 the embedded model's normalisation overflows inside and its forecasts stop
    # depending on the input at all, while staying finite: measured here, so the limit stays honest.
    from timemoe_forecaster.loading import load_model

    default = load_model(None)
    x = 1 + 0.1 * np.sin(np.arange(30) / 4)
    raw = [default.forecast(torch.tensor(b * x, dtype=torch.float32)[None], 4)[0] for b in (1e11, 1e15)]
    assert torch.equal(raw[0], raw[1])  # the broken regime the limit keeps users out of
    unit = preprocess.forecast_series(default, [x], 4, scaling="none")
    big = preprocess.forecast_series(default, [9e8 * x], 4, scaling="none")  # within the limit: still forecasts
    assert not np.allclose(big, unit) and np.isfinite(big).all()
    for b in (1e11, 1e40):
        with pytest.raises(ValueError, match=r"beyond ±1e\+09 they overflow inside it"):
            preprocess.forecast_series(default, [b * x], 4, scaling="none")
    np.testing.assert_array_equal(preprocess.forecast_series(default, [np.full(5, 1e40)], 2, scaling="none"), 1e40)


def test_non_finite_model_output_is_an_error(model, monkeypatch):
    monkeypatch.setattr(
        model, "forecast", lambda context, horizon, mask=None: torch.full((len(context), horizon), np.nan)
    )
    # A float32 model was told its dtype "may be too narrow (float16?)"; a diverged fine-tune is the likelier cause.
    with pytest.raises(
        ValueError, match=r"non-finite forecasts for 2 of 2 series.*torch.float32\) overflowed or holds"
    ):
        preprocess.forecast_series(model, [np.arange(10.0), np.arange(12.0) ** 2], 3)
    model.half()
    with pytest.raises(ValueError, match="float16 is too narrow"):
        preprocess.forecast_series(model, [np.arange(10.0)], 3)


def test_constant_series_forecasts_the_constant(model):
    out = preprocess.forecast_series(model, [np.full(20, 7.5), np.array([np.nan, -2.0, -2.0])], 5)
    np.testing.assert_array_equal(out, [[7.5] * 5, [-2.0] * 5])


def test_scaling_none_feeds_raw_values(model):
    x = np.sin(np.arange(30) / 4)
    raw = preprocess.forecast_series(model, [x], 4, scaling="none")
    direct = model.forecast(torch.tensor(x, dtype=torch.float32)[None], 4).double().numpy()
    np.testing.assert_allclose(raw, direct, rtol=1e-5)


def test_context_length_keeps_the_most_recent_points(model):
    rng = np.random.default_rng(2)
    x = rng.normal(size=50).cumsum()
    short = preprocess.forecast_series(model, [x], 3, context_length=16)
    tail = preprocess.forecast_series(model, [x[-16:]], 3)
    np.testing.assert_allclose(short, tail, rtol=1e-6)


def test_missing_values_inside_equal_interpolated_input(model):
    x = np.arange(20.0) ** 1.1
    gappy = x.copy()
    gappy[[5, 6, 12]] = np.nan
    filled = preprocess.fill_missing(gappy)
    np.testing.assert_allclose(
        preprocess.forecast_series(model, [np.r_[np.nan, np.nan, gappy]], 4),
        preprocess.forecast_series(model, [filled], 4),
    )


def test_progress_bar_over_forecast_batches_only_when_asked_and_more_than_one(model, capsys):
    rng = np.random.default_rng(0)
    series = [rng.normal(size=30).cumsum() for _ in range(5)]
    quiet = preprocess.forecast_series(model, series, 4, batch_size=2)
    assert "forecast:" not in capsys.readouterr().err
    shown = preprocess.forecast_series(model, series, 4, batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "forecast:" in err and "0/5" in err  # 5 series, in batches of 2
    np.testing.assert_array_equal(quiet, shown)
    preprocess.forecast_series(model, series, 4, batch_size=8, progress=True)  # one batch: no bar
    assert "forecast:" not in capsys.readouterr().err


def _out_of_memory_above(model, monkeypatch, limit: int) -> list[int]:
    """Make ``model.forecast`` raise torch's out-of-memory error for batches of more than ``limit`` series (as a
    GPU would); returns the batch sizes it was called with."""
    import torch

    calls, real = [], model.forecast

    def forecast(context, horizon, attention_mask=None):
        calls.append(context.shape[0])
        if context.shape[0] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return real(context, horizon, attention_mask)

    monkeypatch.setattr(model, "forecast", forecast)
    return calls


def test_a_batch_out_of_gpu_memory_is_retried_in_halves_and_later_batches_stay_small(model, monkeypatch, caplog):
    rng = np.random.default_rng(1)
    series = [rng.normal(size=n).cumsum() for n in (30, 30, 30, 30, 30, 30, 25)]  # one shorter: padding
    expected = preprocess.forecast_series(model, series, 4, batch_size=8)
    calls = _out_of_memory_above(model, monkeypatch, limit=3)
    with caplog.at_level("WARNING", logger="timemoe_forecaster.preprocess"):
        got = preprocess.forecast_series(model, series, 4, batch_size=8)
    assert calls == [7, 3, 3, 1]  # 7 fails, then halves: 3, 3 and the last one
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert [r.getMessage() for r in caplog.records] == [
        "out of GPU memory forecasting 7 series at once; retrying 3 at a time (pass a smaller batch_size to "
        "skip the failed attempts)"
    ]


def test_one_series_out_of_gpu_memory_is_a_clear_error(model, monkeypatch):
    _out_of_memory_above(model, monkeypatch, limit=0)
    with pytest.raises(MemoryError, match="one series .* does not fit in GPU memory") as info:
        preprocess.forecast_series(model, [np.arange(30.0), np.arange(30.0) + 1], 4, batch_size=2)
    assert "out of memory" in str(info.value.__cause__)


@pytest.mark.parametrize("freq", ["h", "D", "MS"])
def test_fill_time_gaps_inserts_missing_rows_per_instance_and_leaves_full_frames_alone(freq):
    import pandas as pd

    from timemoe_forecaster.frames import fill_time_gaps

    times = pd.date_range("2021-01-01", periods=12, freq=freq)
    index = pd.MultiIndex.from_product([["a", "b"], times], names=["id", "t"])
    frame = pd.DataFrame({"v": np.arange(24.0)}, index=index)
    same, added = fill_time_gaps(frame, freq=freq)
    assert same is frame and added == 0
    holed = frame.drop(index[[3, 4, 20]])  # two points of "a", one of "b"
    filled, added = fill_time_gaps(holed, freq=freq)
    assert added == 3 and filled.index.equals(frame.index)
    assert filled["v"].isna().to_numpy().nonzero()[0].tolist() == [3, 4, 20]
    single, added = fill_time_gaps(holed.xs("a", level="id"), freq=freq)
    assert added == 2 and len(single) == 12
    # Not on the frequency's grid: forecasts could not be labelled on it, so it is refused; where the grid does
    # not matter (pretraining), nothing can be said about gaps and the frame stays as it is.
    odd = frame.xs("a", level="id").set_axis(times + pd.Timedelta(minutes=7) * np.arange(12))
    with pytest.raises(
        ValueError, match=r"y has times off the time grid of y's frequency (h|D|MS) \((its own frequency is|e\.g\.)"
    ):
        fill_time_gaps(odd, freq=freq)
    assert fill_time_gaps(odd, freq=freq, one_grid=False)[1] == 0


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("freq", ["s", "min", "h", "D"])
def test_time_ticks_read_in_the_index_unit_match_nanosecond_ticks(unit, freq):
    import pandas as pd

    from timemoe_forecaster.frames import _ticks, fill_time_gaps

    times = pd.date_range("1969-12-31 23:59:58", periods=50, freq=freq).as_unit(unit)  # before the epoch too
    for step_freq in (freq, "ms"):  # "ms" is below the unit "s": the nanosecond fallback
        step = pd.tseries.frequencies.to_offset(step_freq).nanos
        whole, rest = _ticks(times, step)
        np.testing.assert_array_equal(whole, times.as_unit("ns").asi8 // step)
        np.testing.assert_array_equal(rest == 0, times.as_unit("ns").asi8 % step == 0)
    holed = pd.DataFrame({"v": np.arange(50.0)}, index=times).drop(times[[7, 8]])
    filled, added = fill_time_gaps(holed, freq=freq)
    assert added == 2 and filled.index.equals(times)


def test_cpu_forecasts_skip_autograd_and_leave_the_model_trainable(monkeypatch):
    import contextlib

    model = make_model(seed=3)  # its own: this test trains it
    seen = []
    original = model.forecast

    def spy(*args, **kwargs):
        seen.append(torch.is_inference_mode_enabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forecast", spy)
    preprocess.forecast_series(model, [np.sin(np.arange(40.0))], 5)
    preprocess.forecast_series(model, [np.sin(np.arange(40.0))], 5, device="cpu")
    assert seen == [True, True]
    monkeypatch.undo()
    # Nothing the forecast left behind is an inference tensor that a later training step would need.
    x = torch.randn(2, 32)
    model.train()
    model(x, labels=x).loss.backward()
    assert any(p.grad is not None for p in model.parameters())
    # On a GPU the model's own no_grad stays: a CUDA-graph forecaster's buffers must stay writable outside.
    assert isinstance(preprocess._without_autograd("cuda:0"), contextlib.nullcontext)


def test_a_series_with_several_channels_is_a_clear_error():
    model = make_model()
    with pytest.raises(ValueError, match=r"series 1 must be 1-D \(one channel\), got shape \(10, 2\)"):
        preprocess.forecast_series(model, [np.ones(10), np.ones((10, 2))], 3)


def test_robust_scaling_keeps_one_glitch_from_setting_the_scale():
    # One 1e8 in a series living in [9, 11] set the mean and std of its context: the forecast came out near 2e5.
    from timemoe_forecaster import TimeMoEForPrediction

    model = TimeMoEForPrediction.from_pretrained(None)
    x = 10 + np.sin(2 * np.pi * np.arange(1000) / 24)
    clean = x[-256:].copy()
    x[-100] = 1e8
    standard = preprocess.forecast_contexts(model, [x[-256:]], 24)[0]
    robust = preprocess.forecast_contexts(model, [x[-256:]], 24, scaling="robust")[0]
    assert standard.max() > 1e3  # the failure the option exists for
    assert 8 < robust.min() and robust.max() < 12
    # Without such values nothing is clipped: the same forecasts as "standard", bit for bit.
    noisy = clean + np.random.default_rng(0).normal(0, 0.3, clean.size)
    np.testing.assert_array_equal(
        preprocess.forecast_contexts(model, [clean, noisy], 24, scaling="robust"),
        preprocess.forecast_contexts(model, [clean, noisy], 24),
    )


def test_clip_outliers_leaves_contexts_without_spread_as_they_are():
    intermittent = np.r_[np.zeros(95), 3.0, 0, 0, 7.0, 0]  # median absolute deviation 0: every spike would go
    np.testing.assert_array_equal(preprocess.clip_outliers(intermittent), intermittent)
    spiky = np.r_[np.arange(100.0), 1e9]
    assert preprocess.clip_outliers(spiky).max() < 1e3 and (preprocess.clip_outliers(spiky)[:100] == spiky[:100]).all()
    calm = np.sin(np.arange(500.0))
    assert preprocess.clip_outliers(calm) is calm  # nothing to clip: no copy (every calibration context was copied)


def test_a_context_is_filled_from_its_own_end_of_the_series_as_if_the_whole_were_filled():
    # Each forecast filled and copied the whole history before cutting the context (a 1e7-point series: 50 ms a
    # forecast). The context it reads must stay what filling the whole series gives, whatever the gaps.
    rng = np.random.default_rng(3)
    cases = []
    for _ in range(200):
        x = rng.normal(size=int(rng.integers(2, 9000)))
        for _ in range(int(rng.integers(0, 4))):  # gaps of any length, anywhere (also across the context's start)
            a = int(rng.integers(0, x.size))
            x[a : a + int(rng.integers(1, 6000))] = np.nan
        cases.append(x)
    sparse = np.full(20_000, np.nan)
    sparse[[3, 10_000]] = [1.0, 2.0]  # the only observation before the context lies 10,000 points back
    cases += [sparse, np.r_[1.0, 2.0, np.full(5000, np.nan)], np.r_[np.full(7000, np.nan), 1.0, np.nan, 3.0]]
    for x in cases:
        for length in (1, 32, 512, 4096):
            try:
                expected = preprocess.fill_missing(x)[-length:]
            except ValueError:  # too few observations in the whole series: the same error
                with pytest.raises(ValueError, match="observ"):
                    preprocess.prepare([x], length)
                continue
            np.testing.assert_array_equal(preprocess.prepare([x], length)[0], expected)
