"""Split-conformal forecast quantiles from rolling in-context forecast residuals.

The model has no probabilistic head, so quantiles come from its own errors on the stored history:
from every cut-off t among the last ``num_windows + horizon - 1`` observed points of a series, forecast
``horizon`` points from the history before t (the same context length and scaling as the final
forecast) and keep the signed residuals y[t + h] - f_t(h), the ``num_windows`` most recent per step.
Residuals are divided by the scale of the series' final context, so they are comparable across series.

For a level q and horizon step h, the offset added to the point forecast is the conformal quantile
of that series' residuals at step h: the k-th smallest of n, k = ceil((n + 1) q) for q >= 0.5 and
k = floor((n + 1) q) for q < 0.5 (the finite-sample split-conformal rule, one-sided at each end).
A series with fewer than ``MIN_OWN_RESIDUALS`` residuals at a step uses those of all series and
channels at that step instead. A level beyond what a series' own residuals resolve borrows the shape
of all series' residuals (each divided by its own series' root-mean-square); where even that does not
resolve it, a normal approximation stands in and a warning is logged; steps with no residuals at all
reuse the last step that has them, widened (see ``residual_offsets``).

Shape legend: N series, W cut-offs, L horizon, Q quantile levels.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from .preprocess import fill_missing, forecast_contexts, scale_stats

log = logging.getLogger(__name__)

# A series uses its own residuals at a step when it has at least this many, else those of all series. The
# choice never depends on the levels asked for, so one call's 90 % interval is another's, and the sets of
# residuals are rarely pooled: pooling lets a series that the model forecasts badly widen the intervals of
# one it forecasts well (their residuals share only the context's scale, not the model's accuracy). Ten
# resolve the 80 % interval's levels and give the normal approximation of wider ones a root-mean-square
# within about a quarter of the truth.
MIN_OWN_RESIDUALS = 10

# From this many calibration forecasts on, a call says how many it makes (at INFO; they take seconds to minutes).
MANY_CALIBRATION_FORECASTS = 1000

# Which cut-offs calibrate the horizon steps (``calibration_cutoffs``).
CUTOFF_MODES = ("per_step", "spread")


def check_cutoff_mode(mode) -> str:
    if not isinstance(mode, str) or mode not in CUTOFF_MODES:
        raise ValueError(f"conformal_cutoffs must be one of {CUTOFF_MODES}, got {mode!r}")
    return mode


def calibration_cutoffs(length: int, horizon: int, num_windows: int, mode: str = "per_step") -> np.ndarray:
    """Cut-offs (number of points used as history) for a cleaned series whose last observation is point
    ``length``.

    ``mode="per_step"``: the last ``num_windows + horizon - 1`` positions, so that every step h has ``num_windows``
    cut-offs with an observed target (``rolling_residuals`` keeps those most recent ``num_windows`` residuals per
    step). ``mode="spread"``: ``num_windows`` cut-offs whose ``horizon`` targets are all observed, the last one
    ``horizon`` points before the end and the others evenly spaced before it, ``horizon`` points apart (windows
    that do not overlap) where the history allows, closer where it does not: every step is calibrated on the same
    cut-offs, ``horizon - 1`` fewer forecasts, and their errors come from a longer stretch of the series. Where
    fewer than ``num_windows`` cut-offs are fully observed (a horizon near half the history), the
    ``num_windows`` earliest allowed ones: the near steps keep ``num_windows`` residuals, the far ones fewer.
    Histories shorter than half the series (and than 2 points) are not used in either mode.
    """
    check_cutoff_mode(mode)
    earliest = max(2, length // 2)
    if mode == "spread":
        latest = min(max(earliest, length - horizon), length - 1)
        room = latest - earliest
        if room + 1 < num_windows:
            # Too few fully observed cut-offs: later ones, partly observed, make up the near steps' sets, as in
            # per_step mode (a horizon near half the history left every step 5 residuals of the 20 asked for).
            return np.arange(earliest, min(length - 1, earliest + num_windows - 1) + 1)
        stride = min(horizon, room // (num_windows - 1)) if num_windows > 1 else 1
        return np.sort(latest - stride * np.arange(num_windows))
    first = max(earliest, length - (num_windows + horizon - 1))
    return np.arange(first, length)


def _cutoff_plan(raw: np.ndarray, reach: int, num_windows: int, cutoffs: str):
    """For a series from its first observation on: its observed mask, the end of its observations, the trailing
    points not observed (gap), and its calibration cut-offs."""
    observed = ~np.isnan(raw)
    observed_end = int(np.flatnonzero(observed)[-1]) + 1
    gap = raw.size - observed_end
    return observed, observed_end, gap, calibration_cutoffs(observed_end, reach, num_windows, cutoffs)


def first_calibration_targets(
    series: list[np.ndarray], reach: list[int], num_windows: int, cutoffs: str = "per_step"
) -> list[int]:
    """Per series (as given, leading NaN included), the position of the first point that a calibration forecast
    of ``rolling_residuals`` (same ``reach``, ``num_windows`` and ``cutoffs``) is scored on. Every calibration
    context ends before it, so a model trained on the points before it and no later ones is calibrated on errors
    it could not have learnt (a model fine-tuned on the whole series is scored on its own training targets)."""
    check_cutoff_mode(cutoffs)
    firsts = []
    for x, r in zip(series, reach):
        x = np.asarray(x, dtype=np.float64)
        start = int(np.argmax(~np.isnan(x)))
        cuts = _cutoff_plan(x[start:], int(r), num_windows, cutoffs)[3]
        firsts.append(start + int(cuts.min()) if cuts.size else x.size)
    return firsts


def rolling_residuals(
    model,
    series: list[np.ndarray],
    horizon: int,
    *,
    context_length: int,
    num_windows: int,
    scaling: str = "standard",
    batch_size: int = 64,
    device=None,
    progress: bool = False,
    aligned: bool = False,
    cutoffs: str = "per_step",
    reach: list[int] | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per series, normalised residuals [W, L] (at most ``num_windows`` per step, the most recent; NaN where a
    step has fewer), and the scale [N] they were divided by (that of the series' final context).

    Each step's residuals come first in its column, in cut-off order: the quantiles and moments read a column as a
    set. ``aligned=True`` gives a row per cut-off instead ([W + L - 1, L], NaN where the target lies beyond the
    history or is missing), which is (L + W - 1) / W times the memory: at L 720, 300 series took 7.8 GB.

    ``cutoffs`` chooses the cut-offs (``calibration_cutoffs``): "per_step" (each step its own most recent ones,
    ``num_windows + L - 1`` forecasts per series) or "spread" (the same ``num_windows`` for every step, up to L
    points apart). ``reach`` [N]: the horizon each series' cut-offs are placed for (default L), when a panel's
    series that need shorter horizons are forecast in one call at L: a series' calibration then does not depend
    on how far another one reaches.

    In "per_step" mode each step keeps the same number of residuals whatever the horizon: step 1 of a call that asks for
    step 12 too is calibrated on the cut-offs of a call for step 1 alone, not on more of them (nor, in a panel,
    on more because another series ends far behind the cut-off). The forecasts at those cut-offs still follow
    the horizon's head schedule, as the final forecast does.

    A series whose last ``g`` values are missing (not reported yet) is forecast from a context that holds its
    last observation over them; its calibration forecasts are made the same way, from cut-offs whose
    last ``g`` points are held likewise, and only cut-offs with observed targets count. Cut-offs at the
    series' end would score forecasts against the missing values, leaving no residuals at all.
    """
    check_cutoff_mode(cutoffs)
    raw, clean, finals, jobs = [], [], [], []
    for s in series:
        x = np.asarray(s, dtype=np.float64)
        start = int(np.argmax(~np.isnan(x)))
        raw.append(x[start:])  # targets: original values, NaN stays missing
        clean.append(fill_missing(x))
        finals.append(clean[-1][-context_length:])
    # Standard scale even when the model sees raw values: residuals of series of different size are pooled.
    _, final_scale, constant = scale_stats(finals, "standard")
    # ... and never below the spread of the points the calibration forecasts read and score. A series that went
    # flat lately (final std 1e-6, errors of 10 before) had residuals of 1e7 once divided, and a short series of
    # the same panel borrows the pooled set (too few residuals of its own): its intervals came out 1e5 times too
    # wide. A series' own intervals do not move: its residuals are divided and multiplied by the same scale.
    reach = [horizon] * len(series) if reach is None else [int(r) for r in reach]
    plans = [_cutoff_plan(r, reach[i], num_windows, cutoffs) for i, r in enumerate(raw)]
    # The region: from the earliest calibration context to the end.
    regions = [
        c[max(0, int(cuts.min()) - gap - context_length) :] if cuts.size else c
        for c, (_, _, gap, cuts) in zip(clean, plans)
    ]
    _, region_scale, _ = scale_stats(regions, "standard")
    # The region holds the final context: a constant one's stand-in scale of 1 gives way to the region's spread.
    final_scale = np.where(constant, region_scale, np.maximum(final_scale, region_scale))
    contexts = []
    for i, c in enumerate(clean):
        observed, observed_end, gap, cuts = plans[i]
        # The last observation at or before each point. The series was filled as a whole, so a point missing
        # just before a cut-off was interpolated towards the target it is scored on; the final forecast only
        # holds its last observation over such points. Each history is filled as that forecast's would be.
        last_seen = np.maximum.accumulate(np.where(observed, np.arange(c.size), 0))
        for t in cuts:
            if t - gap < 2:
                continue
            lo, hi = max(0, t - gap - context_length), t - gap
            history = c[lo:hi]
            if last_seen[hi - 1] < hi - 1:  # missing values end this history: held, not interpolated
                history = history.copy()
                history[max(0, last_seen[hi - 1] + 1 - lo) :] = raw[i][last_seen[hi - 1]]
            if gap:  # held over the last ``gap`` points, as the final context holds them
                history = np.concatenate([history, np.full(gap, history[-1])])
            contexts.append(history[-context_length:])  # history before cut-off t
            jobs.append((i, t))
    if len(contexts) >= MANY_CALIBRATION_FORECASTS and not progress:
        # Silent by default, a panel's intervals took minutes with nothing said (1,000 series: 248 s on a CPU).
        spread = cutoffs == "spread"
        log.info(
            "prediction intervals: %d calibration forecasts (%d series x up to %s = %d cut-offs, horizon %d); "
            "progress=True shows their progress; fewer conformal_windows%s make it faster",
            len(contexts),
            len(series),
            "conformal_windows" if spread else "conformal_windows + H - 1",
            num_windows if spread else num_windows + horizon - 1,
            horizon,
            "" if spread else ', or conformal_cutoffs="spread" (conformal_windows per series),',
        )
    # Labelled apart from the point forecast's bar: it counts cut-offs (10-20 per series), not the user's series.
    preds = forecast_contexts(
        model,
        contexts,
        horizon,
        scaling=scaling,
        batch_size=batch_size,
        device=device,
        progress=progress,
        what=("calibration forecasts", "cut-off"),
    )
    out = [np.full((0, horizon), np.nan) for _ in series]
    rows_of: dict[int, list[np.ndarray]] = {}
    steps = np.arange(horizon)
    for (i, t), pred in zip(jobs, preds):
        target = np.full(horizon, np.nan)
        avail = t + steps < raw[i].size
        target[avail] = raw[i][t + steps[avail]]
        rows_of.setdefault(i, []).append((target - pred) / final_scale[i])
    for i, rows in rows_of.items():
        recent = _most_recent(np.stack(rows), num_windows)  # [W + L - 1, L]
        out[i] = recent if aligned else _present_first(recent, num_windows)  # [W, L]
    # A constant series forecast exactly has no spread of its own; the scale of 1 that stands in for its zero
    # standard deviation turned the residuals it borrows from other series (a short one has too few of its own)
    # into an interval about +-2.5 wide in its own units, whatever its level. Its intervals have zero width.
    exact = [constant[i] and not np.nan_to_num(out[i]).any() for i in range(len(series))]
    return out, np.where(exact, 0.0, final_scale)


def _present_first(residuals: np.ndarray, count: int) -> np.ndarray:
    """residuals [R, L] with at most ``count`` present per column: their first ``count`` rows, each column's
    present values moved up in order (NaN below)."""
    order = np.argsort(np.isnan(residuals), axis=0, kind="stable")
    return np.take_along_axis(residuals, order[:count], axis=0)


def _most_recent(residuals: np.ndarray, count: int) -> np.ndarray:
    """residuals [W, L] (rows in cut-off order) with all but the last ``count`` present ones per column NaN."""
    present = ~np.isnan(residuals)
    from_end = np.cumsum(present[::-1], axis=0)[::-1]  # present residuals at or after each row
    return np.where(present & (from_end <= count), residuals, np.nan)


def conformal_quantiles(residuals: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Conformal quantile at level q along axis 0 of residuals [W, ...] (NaN = absent).

    Returns (values [...], clipped [...]); clipped marks columns whose rank fell outside 1..n.
    """
    return _ranked_quantile(_ranked(residuals), q)


def _ranked(residuals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residuals sorted along axis 0 (NaN last) and their counts: sorted once, read at every level."""
    return np.sort(residuals, axis=0), np.count_nonzero(~np.isnan(residuals), axis=0)


def _ranked_quantile(ranked: tuple[np.ndarray, np.ndarray], q: float) -> tuple[np.ndarray, np.ndarray]:
    r, n = ranked
    # The tolerance keeps float noise from moving the rank: sktime asks coverage 0.8 as 0.5 - 0.4 =
    # 0.09999999999999998, and floor(10 * that) would be 0 instead of 1.
    k = np.ceil((n + 1) * q - 1e-9) if q >= 0.5 else np.floor((n + 1) * q + 1e-9)
    clipped = (k > n) | (k < 1)
    idx = (np.clip(k, 1, np.maximum(n, 1)) - 1).astype(np.int64)
    values = np.take_along_axis(r, idx[None], axis=0)[0] if r.shape[0] else np.full(n.shape, np.nan)
    return np.where(n > 0, values, np.nan), clipped


def residual_offsets(residuals: list[np.ndarray], levels, horizon: int) -> np.ndarray:
    """Normalised offsets [N, L, Q], non-decreasing in the level.

    Per series and step, one set of residuals serves every level: the series' own when it holds at
    least ``MIN_OWN_RESIDUALS``, else those of all series at that step. The set does not depend on the
    levels asked for (choosing by the most demanding level gave a 90% interval that changed with the
    other levels of the call, and a 95% interval inside another call's 90% one), and choosing per level
    would let quantiles cross within a call. A level beyond what a series' own residuals resolve (the
    95% interval needs 39) gets the wider of its most extreme residual and the tail of all series'
    residuals, each standardised by its own series' mean and standard deviation, mapped back with this
    series' mean and standard deviation: the pool lends the shape of the errors, never their size or
    bias, so a badly forecast series does not widen a well forecast one's interval. Where even that pool
    (or the pooled set of a series with too few residuals) does not resolve a level, the normal quantile
    of the residuals' mean and standard deviation stands in for it, with a warning (a single residual: of
    0 and its size, so that it still gives an interval of non-zero width). Steps that no
    series has residuals for (horizons longer than half the history) take the last step that has
    them, widened by the square root of the step ratio, as a random walk's errors grow.
    """
    levels = [float(q) for q in levels]
    stacked, counts, pooled_all, use_own = _residual_sets(residuals, horizon)
    width, n_series = stacked.shape[:2]
    offsets = np.empty((n_series, horizon, len(levels)))
    clipped_any = False
    # The same for every level. Location and scale, not the root-mean-square: a model that under-forecasts a trend
    # has residuals all of one sign (airline at step 24: 20 residuals of mean 131 and sd 33), and a tail scaled
    # by their root-mean-square around 0 put the 2.5 % quantile 350 below the 10 % one.
    own_loc, own_scale = _location_scale(stacked)
    pooled_loc, pooled_scale = _location_scale(pooled_all)
    with np.errstate(invalid="ignore", divide="ignore"):  # a series forecast exactly (scale 0) lends no shape
        shapes = ((stacked - own_loc[None]) / own_scale[None]).reshape(width * n_series, horizon)[:, None, :]
    shapes_loc, shapes_scale = _location_scale(shapes)  # [1, L]
    own_ranked, shapes_ranked, pooled_ranked = _ranked(stacked), _ranked(shapes), _ranked(pooled_all)
    for j, q in enumerate(levels):
        z = _normal_quantile(q)
        tail_z, tail_normal = _quantile_or(shapes_ranked, q, shapes_loc + z * shapes_scale)  # [1, L]
        own, own_clipped = _quantile_or(own_ranked, q, own_loc + tail_z[0] * own_scale)
        pooled, pooled_normal = _quantile_or(pooled_ranked, q, pooled_loc + z * pooled_scale)
        offsets[:, :, j] = np.where(use_own, own, pooled[0])
        normal_used = np.where(use_own, own_clipped & tail_normal[0], pooled_normal[0])
        clipped_any = clipped_any or bool(normal_used.any())
    # Monotone in the level even where the normal fallback meets an order statistic.
    order = np.argsort(levels, kind="stable")
    offsets[:, :, order] = np.sort(offsets[:, :, order], axis=-1)
    offsets = _extend_to_uncovered_steps(offsets, counts.sum(axis=0) > 0)
    if clipped_any:
        log.warning(
            "too few calibration residuals for some quantile levels (n residuals resolve levels from 1/(n+1) "
            "to n/(n+1)); those levels use a normal approximation of the residuals (intervals may under-cover). "
            "Use more history or a larger conformal_windows"
        )
    return offsets


def _residual_sets(residuals: list[np.ndarray], horizon: int):
    """Per-series residuals stacked [W, N, L] (NaN-padded), their counts [N, L], all series' pooled
    [W*N, 1, L], and where a series uses its own set [N, L] (at least ``MIN_OWN_RESIDUALS``)."""
    width = max([r.shape[0] for r in residuals] + [0])
    stacked = np.full((width, len(residuals), horizon), np.nan)
    for i, r in enumerate(residuals):
        stacked[: r.shape[0], i] = r
    counts = np.count_nonzero(~np.isnan(stacked), axis=0)
    pooled = stacked.reshape(width * len(residuals), 1, horizon)
    return stacked, counts, pooled, counts >= MIN_OWN_RESIDUALS


def residual_moments(residuals: list[np.ndarray], horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance [N, L] of the normalised residuals that ``residual_offsets`` ranks: per series and
    step its own set when it holds at least ``MIN_OWN_RESIDUALS``, else all series' set at that step.

    They describe the same conformal distribution as the quantiles (the point forecast shifted by the
    residuals), for ``predict_var`` and ``predict_proba``. Steps no series has residuals for take the last
    covered step, the mean and standard deviation widened by the square root of the step ratio, as there."""
    stacked, counts, pooled, use_own = _residual_sets(residuals, horizon)
    width, n_series = stacked.shape[:2]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no residuals there
        pooled_n = np.count_nonzero(~np.isnan(pooled), axis=0)  # a series' own set has at least 2 where used
        pooled_mean = np.nanmean(pooled, axis=0)
        own_var = np.nanvar(stacked, axis=0, ddof=1) if width > 1 else np.zeros((n_series, horizon))
        pooled_var = np.nanvar(pooled, axis=0, ddof=1) if width * n_series > 1 else np.zeros((1, horizon))
        # One residual has no spread of its own, and its quantiles are the normal fallback around the point
        # forecast, as wide as the residual is large: the distribution is centred there with the residual's
        # square as variance. Variance 0 with the residual as mean made the step whose interval is the widest
        # a point mass, which CRPS scored as perfect and log-loss as NaN (dropped from its average).
        single = pooled_n == 1
        pooled_var = np.where(single, np.nanmean(pooled**2, axis=0), np.where(pooled_n > 1, pooled_var, 0.0))
        pooled_mean = np.where(single, 0.0, pooled_mean)
        mean = np.where(use_own, np.nanmean(stacked, axis=0), pooled_mean)
    var = np.where(use_own, own_var, pooled_var)
    covered = counts.sum(axis=0) > 0
    if not covered.all():
        source, growth = _covering_steps(covered)
        mean, var = mean[:, source] * growth, var[:, source] * growth**2
    return mean, var


def _location_scale(residuals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation along axis 0 of residuals [W, ...] where at least two are present;
    0 and the single residual's size where one is (so that it still gives an interval of non-zero width);
    NaN where none is."""
    present = np.count_nonzero(~np.isnan(residuals), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        mean = np.nanmean(residuals, axis=0)
        sd = np.nanstd(residuals, axis=0, ddof=1) if residuals.shape[0] > 1 else np.full(mean.shape, np.nan)
    rms = _root_mean_square(residuals)
    return np.where(present >= 2, mean, np.where(present == 1, 0.0, np.nan)), np.where(present >= 2, sd, rms)


def _root_mean_square(residuals: np.ndarray) -> np.ndarray:
    """Along axis 0 of residuals [W, ...], NaN where there are none."""
    present = np.count_nonzero(~np.isnan(residuals), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(np.nansum(residuals**2, axis=0) / present)


def _quantile_or(ranked, q: float, fallback: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Conformal quantile at level q of ranked residuals (``_ranked`` of [W, N, L]), or where its rank is
    out of range the wider of the extreme residual and ``fallback`` [N, L]: (values, clipped)."""
    values, clipped = _ranked_quantile(ranked, q)
    # fmax/fmin: a NaN fallback (every series forecast exactly, so no root-mean-square lends a shape) leaves
    # the extreme residual, not a NaN interval.
    wider = np.fmax(values, fallback) if q >= 0.5 else np.fmin(values, fallback)
    return np.where(clipped, wider, values), clipped & ~np.isnan(values)


def _normal_quantile(q: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(min(max(q, 1e-12), 1 - 1e-12))


def _extend_to_uncovered_steps(offsets: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Steps without residuals [L] take offsets [N, L, Q] of the nearest earlier covered step."""
    if covered.all():
        return offsets
    source, growth = _covering_steps(covered)
    steps = np.arange(covered.size)
    out = offsets[:, source] * growth[None, :, None]
    log.warning(
        "no calibration residuals for horizon steps %s; their intervals are those of step %d widened by "
        "sqrt(step ratio). Store more history for calibrated intervals that far ahead",
        _step_ranges(steps[~covered] + 1),
        int(source[~covered][0]) + 1,
    )
    return out


def _covering_steps(covered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every step [L], the covered step whose residuals it takes and the growth sqrt(step ratio)."""
    if not covered.any():
        raise ValueError(
            "no calibration residuals: every series is too short to forecast from inside its own history; "
            "prediction intervals need at least a few points more than the horizon"
        )
    steps = np.arange(covered.size)
    last = np.maximum.accumulate(np.where(covered, steps, -1))  # covered step at or before each step
    source = np.where(last >= 0, last, np.argmax(covered))  # steps before the first covered take it
    return source, np.sqrt((steps + 1) / (source + 1))


def _step_ranges(steps: np.ndarray) -> str:
    return f"{steps[0]}-{steps[-1]}" if steps.size > 1 else str(steps[0])
