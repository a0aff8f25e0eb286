"""Split-conformal forecast quantiles from rolling in-context forecast residuals.

The model has no probabilistic head, so quantiles come from its own errors on the stored history:
from every cut-off t among the last ``num_windows + horizon - 1`` points of a series, forecast
``horizon`` points from the history before t (the same context length and scaling as the final
forecast) and keep the signed residuals y[t + h] - f_t(h). Residuals are divided by the scale of the
series' final context, so they are comparable across series.

For a level q and horizon step h, the offset added to the point forecast is the conformal quantile
of that series' residuals at step h: the k-th smallest of n, k = ceil((n + 1) q) for q >= 0.5 and
k = floor((n + 1) q) for q < 0.5 (the finite-sample split-conformal rule, one-sided at each end).
When a series has fewer residuals than the level needs (n < max(q, 1 - q) / min(q, 1 - q)), the
residuals of all series and channels at that step are pooled. If even the pool is too small, the
most extreme residual is used and a warning is logged.

Shape legend: N series, W cut-offs, L horizon, Q quantile levels.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from .preprocess import fill_missing, forecast_contexts, scale_stats

log = logging.getLogger(__name__)


def calibration_cutoffs(length: int, horizon: int, num_windows: int) -> np.ndarray:
    """Cut-offs (number of points used as history) for a cleaned series of ``length`` points.

    The last ``num_windows + horizon - 1`` positions, so that every step h sees up to ``num_windows``
    residuals; histories shorter than half the series (and than 2 points) are not used.
    """
    earliest = max(2, length // 2)
    latest = length - 1
    first = max(earliest, length - (num_windows + horizon - 1))
    return np.arange(first, latest + 1)


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
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per series, normalised residuals [W, L] (NaN where the target lies beyond the history or is
    missing), and the scale [N] they were divided by (that of the series' final context)."""
    raw, clean, finals, jobs = [], [], [], []
    for s in series:
        x = np.asarray(s, dtype=np.float64)
        start = int(np.argmax(~np.isnan(x)))
        raw.append(x[start:])  # targets: original values, NaN stays missing
        clean.append(fill_missing(x))
        finals.append(clean[-1][-context_length:])
    _, final_scale, _ = scale_stats(finals, scaling)
    contexts = []
    for i, c in enumerate(clean):
        for t in calibration_cutoffs(c.size, horizon, num_windows):
            contexts.append(c[max(0, t - context_length) : t])  # history before cut-off t
            jobs.append((i, t))
    preds = forecast_contexts(
        model, contexts, horizon, scaling=scaling, batch_size=batch_size, device=device, progress=progress
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
        out[i] = np.stack(rows)  # [W, L]
    return out, final_scale


def _needed(q: float) -> int:
    """Fewest residuals for which the conformal rank of level q is inside 1..n."""
    lo = min(q, 1.0 - q)
    return math.ceil(max(q, 1.0 - q) / lo - 1e-9) if lo > 0 else 1 << 30


def conformal_quantiles(residuals: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Conformal quantile at level q along axis 0 of residuals [W, ...] (NaN = absent).

    Returns (values [...], clipped [...]); clipped marks columns whose rank fell outside 1..n.
    """
    r = np.sort(residuals, axis=0)  # NaN sort last
    n = np.count_nonzero(~np.isnan(residuals), axis=0)
    k = np.ceil((n + 1) * q) if q >= 0.5 else np.floor((n + 1) * q)
    clipped = (k > n) | (k < 1)
    idx = (np.clip(k, 1, np.maximum(n, 1)) - 1).astype(np.int64)
    values = np.take_along_axis(r, idx[None], axis=0)[0] if r.shape[0] else np.full(n.shape, np.nan)
    return np.where(n > 0, values, np.nan), clipped


def residual_offsets(residuals: list[np.ndarray], levels, horizon: int) -> np.ndarray:
    """Normalised offsets [N, L, Q]: per series where enough residuals exist, else pooled per step."""
    levels = [float(q) for q in levels]
    width = max([r.shape[0] for r in residuals] + [0])
    stacked = np.full((width, len(residuals), horizon), np.nan)  # [W, N, L]
    for i, r in enumerate(residuals):
        stacked[: r.shape[0], i] = r
    counts = np.count_nonzero(~np.isnan(stacked), axis=0)  # [N, L]
    pooled_all = stacked.reshape(width * len(residuals), horizon)  # [W*N, L]
    offsets = np.empty((len(residuals), horizon, len(levels)))
    warned = False
    for j, q in enumerate(levels):
        own, _ = conformal_quantiles(stacked, q)  # [N, L]
        pooled, clipped = conformal_quantiles(pooled_all, q)  # [L]
        use_own = counts >= _needed(q)
        offsets[:, :, j] = np.where(use_own, own, np.nan_to_num(pooled)[None, :])
        warned = warned or bool((clipped[None, :] & ~use_own).any())
    if warned:
        log.warning(
            "too few calibration residuals for some quantile levels even after pooling series; "
            "the most extreme residual was used (intervals may under-cover). Use more history or series"
        )
    return offsets
