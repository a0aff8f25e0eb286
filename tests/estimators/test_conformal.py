"""conformal.py: finite-sample conformal ranks, pooling, and cut-offs."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import make_model
from timemoe_forecaster import conformal


def test_conformal_rank_rule():
    r = np.arange(1.0, 20.0)[:, None]  # 19 residuals, one column
    upper, clipped = conformal.conformal_quantiles(r, 0.95)  # ceil(20 * 0.95) = 19th
    assert upper[0] == 19.0 and not clipped[0]
    lower, clipped = conformal.conformal_quantiles(r, 0.05)  # floor(20 * 0.05) = 1st
    assert lower[0] == 1.0 and not clipped[0]
    upper, clipped = conformal.conformal_quantiles(r[:10], 0.95)  # rank 11 > 10: clipped to the max
    assert upper[0] == 10.0 and clipped[0]


def test_offsets_use_own_residuals_else_pool():
    rich = np.tile(np.linspace(-1, 1, 21)[:, None], (1, 2))  # 21 residuals per step
    poor = np.array([[100.0, np.nan]])  # one residual at step 0, none at step 1
    offsets = conformal.residual_offsets([rich, poor], [0.1, 0.9], horizon=2)
    assert offsets.shape == (2, 2, 2)
    np.testing.assert_allclose(offsets[0, :, 0], [-0.9, -0.9])  # rank floor(22 * 0.1) = 2
    np.testing.assert_allclose(offsets[0, :, 1], [0.9, 0.9])  # rank ceil(22 * 0.9) = 20
    pooled_hi, _ = conformal.conformal_quantiles(np.r_[rich[:, 0], 100.0][:, None], 0.9)
    assert offsets[1, 0, 1] == pooled_hi[0]  # too few of its own: pooled with the other series


def test_cutoffs_cover_the_horizon_and_stay_in_the_history():
    cuts = conformal.calibration_cutoffs(100, horizon=5, num_windows=10)
    np.testing.assert_array_equal(cuts, np.arange(86, 100))
    assert conformal.calibration_cutoffs(10, horizon=30, num_windows=20).min() >= 5


def test_spread_cutoffs_are_windows_apart_where_the_history_allows():
    # the last one H points before the end, the others H apart: windows that do not overlap
    np.testing.assert_array_equal(conformal.calibration_cutoffs(100, 5, 10, "spread"), np.arange(50, 96, 5))
    # less room (only histories of at least half the series): as far apart as it allows
    np.testing.assert_array_equal(conformal.calibration_cutoffs(60, 5, 10, "spread"), np.arange(37, 56, 2))
    # fewer fully observed cut-offs than windows: the earliest ones, partly observed, make up the near steps' sets
    np.testing.assert_array_equal(conformal.calibration_cutoffs(60, 5, 40, "spread"), np.arange(30, 60))
    np.testing.assert_array_equal(conformal.calibration_cutoffs(200, 96, 20, "spread"), np.arange(100, 120))
    # a horizon past half the history: every allowed cut-off, as per_step takes them; the far steps unobserved
    np.testing.assert_array_equal(conformal.calibration_cutoffs(10, 30, 20, "spread"), np.arange(5, 10))
    with pytest.raises(ValueError, match="conformal_cutoffs must be one of"):
        conformal.calibration_cutoffs(100, 5, 10, "every")


def test_spread_cutoffs_make_one_forecast_per_window_and_calibrate_every_step_on_them(monkeypatch):
    model = make_model(seed=4)
    x = np.sin(np.arange(80) / 5) * 3 + np.arange(80) * 0.1
    made = []
    real = conformal.forecast_contexts
    monkeypatch.setattr(
        conformal, "forecast_contexts", lambda m, c, *a, **k: made.append(len(c)) or real(m, c, *a, **k)
    )
    spread, scale = conformal.rolling_residuals(
        model, [x, x[:70]], 6, context_length=32, num_windows=4, cutoffs="spread"
    )
    per_step, _ = conformal.rolling_residuals(model, [x, x[:70]], 6, context_length=32, num_windows=4)
    assert made == [2 * 4, 2 * (4 + 6 - 1)]
    assert spread[0].shape == (4, 6) and not np.isnan(spread[0]).any()  # 4 residuals at every step
    from timemoe_forecaster.preprocess import forecast_series

    for row, t in enumerate([56, 62, 68, 74]):  # the same cut-offs for all 6 steps, 6 apart
        direct = forecast_series(model, [x[:t]], 6, context_length=32)[0]
        np.testing.assert_allclose(spread[0][row] * scale[0], x[t : t + 6] - direct, rtol=1e-5, atol=1e-6)
    assert not np.allclose(spread[0][:, 0], per_step[0][:, 0])  # per_step: step 1 on the 4 latest cut-offs


def test_the_calibration_progress_bar_counts_cut_offs_under_its_own_name(capsys):
    # It read "forecast: .../1843 series" for a panel of 150 series, like the point forecast's bar.
    model = make_model(seed=4)
    x = np.sin(np.arange(60) / 5) * 3
    conformal.rolling_residuals(model, [x, x + 1], 3, context_length=32, num_windows=4, batch_size=1, progress=True)
    err = capsys.readouterr().err
    assert "calibration forecasts" in err and "cut-off" in err and "series" not in err


def test_rolling_residuals_match_direct_forecasts():
    model = make_model(seed=4)
    x = np.sin(np.arange(60) / 5) * 3 + np.arange(60) * 0.1
    residuals, scale = conformal.rolling_residuals(model, [x], 3, context_length=32, num_windows=4, aligned=True)
    from timemoe_forecaster.preprocess import forecast_series

    t = 57  # cut-off of the 4th window from the end: history x[:57]
    direct = forecast_series(model, [x[:t]], 3, context_length=32)[0]
    row = list(conformal.calibration_cutoffs(60, 3, 4)).index(t)
    np.testing.assert_allclose(residuals[0][row] * scale[0], x[t : t + 3] - direct, rtol=1e-5, atol=1e-6)
    assert np.isnan(residuals[0][-1, 1:]).all()  # last cut-off: only step 1 lies inside the history


def test_each_step_keeps_its_most_recent_residuals_whatever_the_horizon():
    # Step 1 of a 6-step call had 4 + 6 - 1 = 9 residuals, of a 1-step call 4: its interval moved with the
    # other steps asked for (and, in a panel, with how far behind the cut-off another series ends).
    model = make_model(seed=4)
    x = np.sin(np.arange(60) / 5) * 3 + np.arange(60) * 0.1
    short, _ = conformal.rolling_residuals(model, [x], 1, context_length=32, num_windows=4)
    long, _ = conformal.rolling_residuals(model, [x], 6, context_length=32, num_windows=4)
    assert (np.count_nonzero(~np.isnan(long[0]), axis=0) == 4).all()
    assert np.count_nonzero(~np.isnan(short[0])) == 4
    # The same cut-offs (the last four with an observed next point); the values differ only as the model's
    # step 1 differs between a 1-step and a 6-step head schedule.
    assert np.flatnonzero(~np.isnan(long[0][:, 0])).tolist() == list(range(len(long[0]) - 4, len(long[0])))


def test_residuals_are_kept_as_w_rows_not_a_row_per_cut_off():
    # A row per cut-off is W + H - 1 rows of which each column uses W: at H 720 and W 20, 97% NaN, and 300 series
    # took 7.8 GB (helper-measured) in the quantiles' copies. The compact rows hold each step's same residuals.
    model = make_model(seed=4)
    x = np.sin(np.arange(90) / 5) * 3 + np.arange(90) * 0.1
    compact, scale = conformal.rolling_residuals(model, [x, x[:70]], 8, context_length=32, num_windows=4)
    aligned, same = conformal.rolling_residuals(model, [x, x[:70]], 8, context_length=32, num_windows=4, aligned=True)
    np.testing.assert_array_equal(scale, same)
    for c, a in zip(compact, aligned):
        assert c.shape == (4, 8) and a.shape == (4 + 8 - 1, 8)
        for step in range(8):
            np.testing.assert_array_equal(c[:, step], a[~np.isnan(a[:, step]), step])
    levels = [0.05, 0.5, 0.95]
    np.testing.assert_array_equal(
        conformal.residual_offsets(compact, levels, 8), conformal.residual_offsets(aligned, levels, 8)
    )
    for got, expected in zip(conformal.residual_moments(compact, 8), conformal.residual_moments(aligned, 8)):
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_calibration_with_missing_last_values_holds_them_as_the_final_forecast_does():
    # Values not reported yet: the final context holds the last observation over them, so each calibration
    # forecast does too, and only cut-offs with observed targets count (with 25 missing values every cut-off
    # scored against NaN and intervals were an error blaming a "too short" series).
    model = make_model(seed=4)
    x = np.sin(np.arange(80) / 5) * 3 + np.arange(80) * 0.1
    gap = 25
    tail = np.r_[x[:-gap], np.full(gap, np.nan)]
    residuals, scale = conformal.rolling_residuals(model, [tail], 3, context_length=32, num_windows=4, aligned=True)
    from timemoe_forecaster.preprocess import forecast_series

    assert (np.count_nonzero(~np.isnan(residuals[0]), axis=0) == 4).all()
    t = 52  # the last cut-off with an observed step 3 (x[54] is the last observation; rows end at t = 54)
    held = np.r_[x[: t - gap], np.full(gap, np.nan)]  # what the model saw at that cut-off, filled like the end
    direct = forecast_series(model, [held], 3, context_length=32)[0]
    np.testing.assert_allclose(residuals[0][-3] * scale[0], x[t : t + 3] - direct, rtol=1e-5, atol=1e-6)


def test_calibration_forecasts_never_see_their_targets_through_filled_gaps():
    # The series was filled as a whole before the calibration contexts were cut from it, so a value missing just
    # before a cut-off was interpolated from the very target it was then scored on: residuals came out too small
    # (80% intervals covered about 67% of held-out points with every other of the last 40 values missing,
    # helper-measured). Each calibration forecast must be the forecast made from the history before its cut-off.
    from timemoe_forecaster.preprocess import forecast_series

    model = make_model(seed=4)
    x = np.sin(np.arange(80) / 5) * 3 + np.arange(80) * 0.1
    x[-20::2] = np.nan  # every other of the last 20 values missing; the last one is observed
    horizon, windows = 2, 6
    residuals, scale = conformal.rolling_residuals(
        model, [x], horizon, context_length=32, num_windows=windows, aligned=True
    )
    cuts = conformal.calibration_cutoffs(80, horizon, windows)
    checked = 0
    for row, t in enumerate(cuts):
        if np.isnan(x[t - 1]):  # the case that looked ahead: the history ends with a missing value
            direct = forecast_series(model, [x[:t]], horizon, context_length=32)[0]
            target = np.r_[x[t : t + horizon], np.full(max(0, t + horizon - x.size), np.nan)]
            ok = ~np.isnan(target)
            np.testing.assert_allclose(residuals[0][row][ok] * scale[0], (target - direct)[ok], rtol=1e-5, atol=1e-6)
            checked += 1
    assert checked >= 3


def test_series_forecast_exactly_get_zero_width_intervals_not_nan():
    # A constant series is forecast exactly: every residual is 0, so no series lends a shape for levels its
    # 20 residuals do not resolve, and those came back NaN (0/0).
    zeros = [np.zeros((20, 3)), np.zeros((20, 3))]
    offsets = conformal.residual_offsets(zeros, [0.01, 0.05, 0.5, 0.95, 0.99], horizon=3)
    np.testing.assert_array_equal(offsets, 0.0)


def test_residual_moments_describe_the_sets_the_quantiles_rank():
    rng = np.random.default_rng(1)
    rich = rng.normal(2.0, 3.0, size=(25, 3))  # own residuals at every step
    poor = np.array([[100.0, np.nan, np.nan]])  # too few: the pool of both series at each step
    rich[:, 2] = np.nan  # step 3: no residuals at all
    poor_only = np.array([[np.nan, 7.0, np.nan]])
    mean, var = conformal.residual_moments([rich, poor, poor_only], horizon=3)
    np.testing.assert_allclose(mean[0, :2], rich[:, :2].mean(axis=0))
    np.testing.assert_allclose(var[0, :2], rich[:, :2].var(axis=0, ddof=1))
    pool0 = np.r_[rich[:, 0], 100.0]
    np.testing.assert_allclose([mean[1, 0], var[1, 0]], [pool0.mean(), pool0.var(ddof=1)])
    # Step 3 takes step 2, the mean and standard deviation widened by sqrt(3 / 2).
    np.testing.assert_allclose(mean[:, 2], mean[:, 1] * np.sqrt(1.5))
    np.testing.assert_allclose(var[:, 2], var[:, 1] * 1.5)
    # One residual in all has no spread of its own. Its intervals are the normal fallback around the point
    # forecast, as wide as the residual is large; variance 0 with the residual as mean made that step a point
    # mass, which CRPS scored as perfect.
    mean, var = conformal.residual_moments([np.array([[4.0, -3.0]])], horizon=2)
    np.testing.assert_array_equal(mean, [[0.0, 0.0]])
    np.testing.assert_array_equal(var, [[16.0, 9.0]])
    offsets = conformal.residual_offsets([np.array([[4.0, -3.0]])], [0.1, 0.9], horizon=2)
    np.testing.assert_allclose(offsets[0, :, 1], -offsets[0, :, 0])  # symmetric about the point forecast
    np.testing.assert_allclose(offsets[0, :, 1], 1.2816 * np.sqrt(var[0]), rtol=1e-4)
    with pytest.raises(ValueError, match="no calibration residuals"):
        conformal.residual_moments([np.full((2, 2), np.nan)], horizon=2)


def test_quantiles_never_cross_whichever_residuals_each_series_holds():
    # A series choosing its own residuals for one level and the pool for another let the 95% interval
    # fall inside the 80% one; all levels of a series and step now come from one set.
    rng = np.random.default_rng(0)
    levels = [0.975, 0.025, 0.1, 0.9, 0.5]
    for trial in range(20):
        residuals = []
        for _ in range(4):
            r = rng.normal(scale=10.0 ** rng.integers(-1, 2), size=(int(rng.integers(1, 45)), 3))
            r[rng.random(r.shape) < 0.2] = np.nan
            residuals.append(r)
        offsets = conformal.residual_offsets(residuals, levels, horizon=3)
        ordered = offsets[:, :, np.argsort(levels)]
        assert (np.diff(ordered, axis=-1) >= 0).all(), trial


def test_one_residual_still_gives_an_interval_of_nonzero_width(caplog):
    with caplog.at_level("WARNING"):
        offsets = conformal.residual_offsets([np.array([[0.5]])], [0.1, 0.9], horizon=1)
    z = 1.2815515655446004  # standard normal quantile at 0.9
    np.testing.assert_allclose(offsets[0, 0], [-z * 0.5, z * 0.5])
    assert "normal approximation" in caplog.text


def test_steps_without_residuals_reuse_the_last_covered_step_widened(caplog):
    rich = np.full((21, 3), np.nan)
    rich[:, 0] = np.linspace(-1, 1, 21)  # residuals at step 1 only
    with caplog.at_level("WARNING"):
        offsets = conformal.residual_offsets([rich], [0.1, 0.9], horizon=3)
    np.testing.assert_allclose(offsets[0, 1], offsets[0, 0] * np.sqrt(2))
    np.testing.assert_allclose(offsets[0, 2], offsets[0, 0] * np.sqrt(3))
    assert np.abs(offsets[0, 2]).min() > 0
    assert "steps 2-3" in caplog.text


def test_residuals_are_normalised_even_when_the_model_sees_raw_values():
    # Pooling raw residuals of a series near 5 with those of one near 5000 would give the small
    # series the big one's interval width.
    model = make_model(seed=4)
    x = np.sin(np.arange(60) / 5) * 300 + 5000
    _, scale = conformal.rolling_residuals(model, [x], 3, context_length=32, num_windows=4, scaling="none")
    # The final context's spread, or that of the points the calibration reads and scores if larger: from the
    # earliest calibration context (32 points before cut-off 54, the first of 4 + 3 - 1) to the end.
    np.testing.assert_allclose(scale, [max(x[-32:].std(), x[54 - 32 :].std())])
    assert scale[0] > 100  # not 1, as raw values would have it


def test_float_noise_in_a_level_does_not_move_the_rank():
    # sktime asks coverage 0.8 as 0.5 - 0.4 = 0.09999999999999998; floor(10 * that) must still be rank 1.
    r = np.arange(1.0, 10.0)[:, None]
    exact, clipped_exact = conformal.conformal_quantiles(r, 0.1)
    noisy, clipped_noisy = conformal.conformal_quantiles(r, 0.5 - 0.4)
    assert exact[0] == noisy[0] == 1.0 and not clipped_exact[0] and not clipped_noisy[0]
    np.testing.assert_array_equal(
        conformal.residual_offsets([r], [0.5 - 0.4, 0.5 + 0.4], 1), conformal.residual_offsets([r], [0.1, 0.9], 1)
    )


def test_library_warnings_reach_stderr_without_any_logging_set_up():
    # A NullHandler on the package logger swallowed every warning (intervals that may under-cover, truncated
    # histories, ...) unless the user had configured logging; now they reach Python's last-resort handler.
    import subprocess
    import sys

    script = (
        "import numpy as np, pandas as pd\n"
        "from timemoe_forecaster import TimeMoEForecaster\n"
        "y = pd.Series(np.sin(np.arange(40) / 3) + 5)\n"
        "TimeMoEForecaster(context_length=32).fit(y).predict_interval(fh=range(1, 40))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no calibration residuals for horizon steps" in done.stderr


def test_a_level_gives_the_same_offset_whichever_levels_come_with_it():
    # The set of residuals followed the call's most demanding level: with 20 residuals a 90% interval asked
    # alone used the series' own, asked with 95% the pool, so the 95% interval could fall inside the 90% one.
    rng = np.random.default_rng(1)
    residuals = [rng.normal(scale=s, size=(20, 2)) for s in (0.1, 1.0, 5.0)] + [rng.normal(size=(4, 2))]
    alone = {q: conformal.residual_offsets(residuals, [q], horizon=2)[..., 0] for q in (0.025, 0.05, 0.95, 0.975)}
    together = conformal.residual_offsets(residuals, [0.025, 0.05, 0.95, 0.975], horizon=2)
    for j, q in enumerate((0.025, 0.05, 0.95, 0.975)):
        np.testing.assert_array_equal(together[..., j], alone[q])
    assert (alone[0.975] >= alone[0.95]).all() and (alone[0.025] <= alone[0.05]).all()


def test_a_well_forecast_series_keeps_its_own_width_next_to_a_badly_forecast_one(caplog):
    # Channels of very different forecast quality: pooling let the badly forecast one set the other's 95%
    # interval (6x its own in the helper's run). Beyond its own residuals a series borrows only the pool's shape
    # (residuals divided by their own series' root-mean-square), never its size.
    rng = np.random.default_rng(2)
    good, bad = rng.normal(scale=0.1, size=(20, 1)), rng.standard_t(3, size=(20, 1))
    levels = [0.025, 0.975]
    with caplog.at_level("WARNING"):
        with_bad = conformal.residual_offsets([good, 100.0 * bad], levels, horizon=1)
        with_tame_bad = conformal.residual_offsets([good, 0.01 * bad], levels, horizon=1)
    np.testing.assert_allclose(with_bad[0], with_tame_bad[0], rtol=1e-12)  # the partner's size does not matter
    np.testing.assert_allclose(with_bad[1], 1e4 * with_tame_bad[1], rtol=1e-12)  # each series keeps its own scale
    assert abs(with_bad[0, 0, 1]) < 0.5  # about 2 standard deviations of 0.1, not of the partner's errors
    assert "too few calibration residuals" not in caplog.text  # 40 residuals in the pool resolve 95%
    short = conformal.residual_offsets([good[: conformal.MIN_OWN_RESIDUALS - 1], bad], [0.9], horizon=1)
    assert short[0, 0, 0] > 0.5  # too few of its own: the raw pool, the partner's residuals included


def test_a_single_series_beyond_its_residuals_uses_the_normal_tail_with_a_warning(caplog):
    r = np.random.default_rng(3).normal(size=(20, 1))
    with caplog.at_level("WARNING"):
        offsets = conformal.residual_offsets([r], [0.975], horizon=1)
    normal = float(r.mean() + 1.959963984540054 * r.std(ddof=1))  # its own pool's standardised shape is normal here
    assert offsets[0, 0, 0] == pytest.approx(max(r.max(), normal), rel=1e-12)
    assert "too few calibration residuals" in caplog.text


def test_a_tail_beyond_the_residuals_keeps_their_bias():
    # A model that under-forecasts a trend has residuals all of one sign. The tail was scaled by their
    # root-mean-square around 0: on airline (step 24, 20 residuals of mean 131, sd 33) the 2.5 % quantile sat 350
    # below the 10 % one and the 95 % interval was 2.4 times too wide.
    r = 131 + 33 * np.random.default_rng(5).standard_normal((20, 1))
    offsets = conformal.residual_offsets([r], [0.025, 0.1, 0.9, 0.975], horizon=1)[0, 0]
    assert offsets[0] > 131 - 3 * 33 and offsets[0] <= offsets[1]  # near the 10 % quantile, not far below 0
    assert offsets[3] < 131 + 3 * 33 and offsets[3] >= offsets[2]


def test_borrowed_tails_cover_heavy_tailed_errors_of_series_of_any_scale():
    # 5 series, 20 residuals each, Student-t(3) errors at scales 0.1..10: the 95% interval needs 39 residuals.
    # With only a normal tail of each series' own root-mean-square it covered 94.3% here; with the pool's
    # shape 95.5%.
    rng = np.random.default_rng(0)
    hits = total = 0
    for _ in range(2000):
        scales = 10.0 ** rng.uniform(-1, 1, 5)
        offsets = conformal.residual_offsets([s * rng.standard_t(3, size=(20, 1)) for s in scales], [0.025, 0.975], 1)
        new = scales * rng.standard_t(3, size=5)
        hits += int(np.sum((new >= offsets[:, 0, 0]) & (new <= offsets[:, 0, 1])))
        total += 5
    assert 0.947 <= hits / total <= 0.965, hits / total


def test_many_calibration_forecasts_are_announced(caplog, monkeypatch):
    # A panel's intervals took minutes (1,000 series: 248 s on a CPU) without a word by default.
    monkeypatch.setattr(conformal, "MANY_CALIBRATION_FORECASTS", 20)
    model = make_model(seed=4)
    x = np.sin(np.arange(60) / 5) * 3
    with caplog.at_level("INFO", logger="timemoe_forecaster.conformal"):
        conformal.rolling_residuals(model, [x], 3, context_length=32, num_windows=4)
        assert "calibration forecasts" not in caplog.text  # 6 of them
        conformal.rolling_residuals(model, [x] * 4, 3, context_length=32, num_windows=4)
    assert (
        "prediction intervals: 24 calibration forecasts (4 series x up to conformal_windows + H - 1 = 6" in caplog.text
    )


@pytest.mark.parametrize("mode, first", [("spread", 50), ("per_step", 86)])
def test_first_calibration_target_is_the_earliest_cutoff_in_the_series_as_given(mode, first):
    from timemoe_forecaster.conformal import calibration_cutoffs, first_calibration_targets

    # 100 observed points: spread's 5 cut-offs 10 apart end 10 before the end (50 ... 90); per_step's are the last
    # 5 + 10 - 1 positions (86 ... 99). Leading NaN shift them; trailing NaN (not observed yet) do not.
    assert int(calibration_cutoffs(100, 10, 5, mode).min()) == first
    plain = np.arange(100.0)
    padded = np.concatenate([np.full(3, np.nan), plain, np.full(4, np.nan)])
    assert first_calibration_targets([plain, padded], [10, 10], 5, mode) == [first, first + 3]
