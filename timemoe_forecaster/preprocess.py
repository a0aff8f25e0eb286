"""Turn user series into model contexts and model outputs back into forecasts.

Shared by the sktime and darts adapters, so validation, missing values, scaling, left padding and
batching are written once. A "series" here is a 1-D numpy array on the user's scale; many series of
different lengths go through the model together, left-padded, in chunks of ``batch_size``.

Missing values: leading NaN are dropped (the series starts at its first observation), interior NaN
are filled by linear interpolation between the neighbouring observations, and trailing NaN hold the
last observation. A series needs at least 2 observed points.

Scaling "standard": each context is standardised by its own mean and standard deviation and the
forecast is mapped back, so forecasts are shift- and (positive) scale-equivariant. A constant context
(zero spread) is forecast as that constant. "none" feeds the values as they are.

Shape legend: N series, B batch (one chunk of series), S context length, L horizon.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

SCALINGS = ("standard", "robust", "none")
# scaling="robust": values further than this many robust standard deviations (1.4826 x the median absolute
# deviation) from the context's median are clipped to that bound before the standard scaling. On the validation
# splits of ETTh1/2 and ETTm1/2 (context 512, horizon 96) it changed no forecast; on Weather, whose channels have
# real heavy tails, MSE 0.397 -> 0.415 (at 10: 0.422), so it is not the default. One glitch of 1e8 in a series
# living in [9, 11] moved the standard forecast to 2e5-4e5; clipped, it stays in [9, 11].
ROBUST_CLIP = 20.0
MIN_OBSERVED = 2


# Validation and missing values -------------------------------------------------------------
def as_float_array(values, name: str = "y") -> np.ndarray:
    """A float64 copy of ``values``; TypeError for non-numeric data, ValueError for inf or no values."""
    arr = np.asarray(values)
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"{name} holds non-numeric values; convert it to numbers (e.g. pd.to_numeric) first"
            ) from None
    if arr.dtype.kind == "b" or not (np.issubdtype(arr.dtype, np.number)):
        raise TypeError(f"{name} must hold numeric values, got dtype {arr.dtype}; convert it to float first")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} holds complex values; pass real numbers")
    arr = arr.astype(np.float64, copy=True)
    if arr.size == 0:
        raise ValueError(f"{name} is empty; pass a series with at least {MIN_OBSERVED} observed points")
    if np.isinf(arr).any():
        raise ValueError(f"{name} holds inf values; replace them by NaN (treated as missing) or finite numbers")
    return arr


def fill_missing(series: np.ndarray, name: str = "series") -> np.ndarray:
    """Drop leading NaN, interpolate interior NaN linearly, hold the last observation over trailing NaN."""
    observed = ~np.isnan(series)
    count = int(observed.sum())
    if count == 0:
        raise ValueError(f"{name} has only missing values; every series needs at least {MIN_OBSERVED} observations")
    if count < MIN_OBSERVED:
        raise ValueError(f"{name} has {count} observed point; every series needs at least {MIN_OBSERVED} observations")
    start = int(np.argmax(observed))
    x = series[start:]
    if count == x.size:
        return x.copy()
    obs = ~np.isnan(x)
    positions = np.arange(x.size)
    # np.interp holds the end values constant beyond the last observation (trailing NaN).
    return np.interp(positions, positions[obs], x[obs])


def check_scaling(scaling: str) -> str:
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    return scaling


def refuse_training_with_raw_scaling(scaling: str, what: str = "fine_tune") -> None:
    """Training standardises every window; scaling='none' then feeds the trained model raw values it never saw
    (fine-tuned on the airline data, its forecasts stayed near 0 for a series near 450, silently)."""
    if scaling == "none":
        raise ValueError(
            f"{what} trains the model on windows standardised one by one, but scaling='none' forecasts from raw "
            "values, which the trained model never saw: use scaling='standard'"
        )


def check_context_length(context_length, limit: int) -> int:
    """The number of points fed to the model: context_length, or the model's limit when None."""
    if context_length is None:
        return limit
    if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)) or context_length < 1:
        raise ValueError(f"context_length must be a positive integer or None, got {context_length!r}")
    if context_length > limit:
        raise ValueError(
            f"context_length={context_length} exceeds the model's limit of {limit} points "
            "(config.max_position_embeddings); use a smaller value or None"
        )
    return int(context_length)


def context_points(context_length, config) -> int:
    """The points of history fed to the model: ``context_length`` (checked against the model's limit) or, when
    None, the model's recorded default context (``config.default_context_length``: the windows it was last trained
    on), else its limit."""
    limit = config.max_position_embeddings
    if context_length is None:
        return min(config.default_context_length or limit, limit)
    return check_context_length(context_length, limit)


def warn_if_past_default_context(context_length, config, name: str = "context_length") -> None:
    """A logged warning when an explicit context is longer than the model's recorded default context."""
    default = config.default_context_length
    if context_length is not None and default is not None and context_length > default:
        log.warning(
            "%s=%d is longer than this model's default context of %d points (as its config.json records: the "
            "windows it was trained on, or for the embedded default the length that forecast best on validation "
            "data): models forecast worse from longer contexts (docs/estimators.md); leave it unset to use %d",
            name,
            context_length,
            default,
            default,
        )


def warn_if_untrained(config, trained: bool) -> None:
    """A logged warning when an estimator forecasts with a fresh preset model that no training has touched."""
    from .loading import split_config

    preset, _ = split_config(config)
    if preset is not None and not trained:
        log.warning(
            "config=%r builds a fresh, randomly initialised model: its forecasts are meaningless until it is "
            "trained (fine_tune=..., or pretrain() on a panel); leave config unset for the pretrained default",
            preset,
        )


def warn_if_horizon_past_window(horizon: int, config, name: str = "the horizon") -> None:
    """A logged warning when ``horizon`` is longer than the model's whole context window: every point past it is
    forecast from forecasts only, each pass at most the longest head's steps (100,000 steps took minutes). The
    estimators took such horizons without a word; the CLI warned."""
    if horizon > config.max_position_embeddings:
        log.warning(
            "%s (%d points) is longer than the model's whole context window (%d points): about %d forecast passes, "
            "each on forecasts of forecasts; this takes a while and drifts far from the data",
            name,
            horizon,
            config.max_position_embeddings,
            -(-horizon // max(config.horizon_lengths)),
        )


def log_history_cut(what: str, longest: int, points: int, limit: int) -> None:
    """Says that ``what`` has up to ``longest`` points of which each forecast reads ``points``: a warning at the
    model's limit, information at its recorded default context (shorter by design)."""
    if points < limit:
        log.info(
            "%s has up to %d points; the most recent %d of each series are used, this model's default context "
            "(as its config.json records; set context_length to change it)",
            what,
            longest,
            points,
        )
    else:
        log.warning(
            "%s has up to %d points but the model takes at most %d; the most recent %d points of each series are "
            "used (set context_length to silence this)",
            what,
            longest,
            limit,
            limit,
        )


# Scaling -----------------------------------------------------------------------------------
def scale_stats(contexts: list[np.ndarray], scaling: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-context (loc [N], scale [N], constant [N]); constant contexts get scale 1."""
    n = len(contexts)
    constant = np.array([np.ptp(c) == 0 for c in contexts], dtype=bool)
    if scaling == "none":
        return np.zeros(n), np.ones(n), constant
    loc, scale = np.array([mean_std(c) for c in contexts]).reshape(n, 2).T
    scale[constant | (scale == 0)] = 1.0
    return loc, scale, constant


def clip_outliers(x: np.ndarray, k: float = ROBUST_CLIP) -> np.ndarray:
    """``x`` with values beyond median +- k robust standard deviations clipped to those bounds (for
    ``scaling="robust"``); as it is where the median absolute deviation is 0 (a mostly constant or intermittent
    context, where every non-zero value would be an outlier)."""
    median = float(np.median(x))
    spread = 1.4826 * float(np.median(np.abs(x - median)))
    if not spread > 0:
        return x
    low, high = median - k * spread, median + k * spread
    # Copied only where something is clipped: every context was copied (+0.7 GB over 300 series' calibration).
    return np.clip(x, low, high) if (x.min() < low or x.max() > high) else x


def mean_std(x: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of ``x`` at any magnitude: taken of x / max|x| and scaled back, because
    x.std() squares the values, which overflows above ~1e154 (forecasts -inf) and underflows below ~1e-154
    (a std of 0, and the series cast to float32 zeros)."""
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak == 0:
        return 0.0, 0.0
    unit = x / peak
    return float(unit.mean()) * peak, float(unit.std()) * peak


# Batching ----------------------------------------------------------------------------------
@dataclass
class ContextBatch:
    """Left-padded, scaled contexts of one chunk."""

    context: torch.Tensor  # [B, S] float32, 0 on padding
    attention_mask: torch.Tensor | None  # [B, S] long, 1 real / 0 padding; None when nothing is padded


def pad_left(contexts: list[np.ndarray]) -> ContextBatch:
    """Stack contexts of different lengths into one left-padded batch."""
    width = max(c.size for c in contexts)
    values = np.zeros((len(contexts), width), dtype=np.float32)  # [B, S]
    mask = np.zeros((len(contexts), width), dtype=np.int64)  # [B, S]
    for row, c in enumerate(contexts):
        values[row, width - c.size :] = c
        mask[row, width - c.size :] = 1
    padded = bool((mask == 0).any())
    return ContextBatch(torch.from_numpy(values), torch.from_numpy(mask) if padded else None)


def prepare(series: list[np.ndarray], max_length: int, names: list[str] | None = None) -> list[np.ndarray]:
    """Validated, gap-filled, most recent ``max_length`` points of every series (new arrays)."""
    out = []
    for i, s in enumerate(series):
        name = names[i] if names is not None else f"series {i}"
        values = _series_values(s, name)
        if values.ndim != 1:
            raise ValueError(
                f"{name} must be 1-D (one channel), got shape {values.shape}; pass each channel as its own series"
            )
        # Only the context's end of the series: filling and copying all of it took 50 ms a forecast of a 1e7-point
        # history, as long as the model's own work.
        window = values[context_start(values, values.size, max_length) :]
        if np.isinf(window).any():
            # Named here: past this point it failed inside the model as "context holds NaN or inf at unmasked
            # positions; mask them", which named no series and gave advice for model.forecast's own inputs.
            raise ValueError(f"{name} holds inf values; replace them by NaN (treated as missing) or finite numbers")
        filled = fill_missing(window, name)
        # A copy, not a view: a view would keep the whole filled series alive with every context.
        out.append(filled[-max_length:].copy() if filled.size > max_length else filled)
    return out


def _series_values(s, name: str) -> np.ndarray:
    """One series as a float64 array, without copying a float or integer numpy array of it. A torch tensor is
    read whatever its dtype and autograd state (bfloat16 and tensors that require grad failed inside numpy); other
    data goes through :func:`as_float_array`, so strings, booleans and complex numbers are refused by name (complex
    values lost their imaginary part with only a numpy warning, booleans forecast as 0/1, strings failed naming no
    series)."""
    if isinstance(s, torch.Tensor):
        s = s.detach().cpu()
        s = s.to(torch.float64) if s.is_floating_point() else s
        s = s.numpy()
    values = np.asarray(s)
    if values.dtype.kind in "iuf":
        return values.astype(np.float64, copy=False)
    return as_float_array(values, name)


def context_start(values: np.ndarray, end: int, length: int, observed_at: np.ndarray | None = None) -> int:
    """Where the points of ``values[:end]`` that a forecast from its last ``length`` points reads begin.

    The last ``length`` points, reaching back to the last observation before them when they start in a gap
    (interpolating across it, or holding it over trailing NaN, needs that value) and to at least ``MIN_OBSERVED``
    observations; nothing older changes their filled values. ``observed_at``: the sorted indices of the observed
    points of ``values``, for a caller that cuts many contexts of one series; without it, only as much of the end of
    ``values`` is searched as the answer needs.
    """
    lo = max(0, end - length)
    in_gap = lo > 0 and np.isnan(values[lo])
    span = length + 4096
    while observed_at is None:
        first = max(0, end - span)
        seen = first + np.flatnonzero(~np.isnan(values[first:end]))
        if first == 0 or (seen.size >= MIN_OBSERVED and (not in_gap or seen[0] < lo)):
            observed_at = seen
        span *= 2
    if in_gap:
        before = int(np.searchsorted(observed_at, lo)) - 1  # the last observation before lo
        lo = int(observed_at[before]) if before >= 0 else lo
    count = int(np.searchsorted(observed_at, end))  # observations before end
    if count >= MIN_OBSERVED:
        lo = min(lo, int(observed_at[count - MIN_OBSERVED]))
    return lo


def forecast_contexts(
    model,
    contexts: list[np.ndarray],
    horizon: int,
    *,
    scaling: str = "standard",
    batch_size: int = 64,
    device=None,
    progress: bool = False,
    what: tuple[str, str] = ("forecast", "series"),
) -> np.ndarray:
    """Forecast ``horizon`` points after every (already prepared) context; returns [N, L] float64.

    Contexts are sorted by length so that chunks carry little padding, scaled one by one,
    forecast in chunks of ``batch_size`` and mapped back to their own scale. ``progress``: a progress
    bar over the series when there is more than one chunk (a large panel on a CPU takes minutes), labelled
    and counted as ``what`` says (description, unit).
    A chunk that runs out of GPU memory is retried in halves, and the remaining chunks keep the smaller
    size (a warning says so), so a batch size too large for the GPU costs time, not the forecast.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_scaling(scaling)
    n = len(contexts)
    out = np.empty((n, int(horizon)), dtype=np.float64)  # [N, L]
    if n == 0:
        return out
    if scaling == "robust":
        contexts = [clip_outliers(c) for c in contexts]
    loc, scale, constant = scale_stats(contexts, scaling)
    if scaling == "none":
        _check_raw_range([c for c, flat in zip(contexts, constant) if not flat])  # constants skip the model
    order = np.argsort([c.size for c in contexts], kind="stable")
    todo = [i for i in order if not constant[i]]
    size, start = int(batch_size), 0
    with _progress_bar(len(todo), enabled=progress and len(todo) > size, desc=what[0], unit=what[1]) as bar:
        while start < len(todo):
            rows = todo[start : start + size]
            batch = pad_left([((contexts[i] - loc[i]) / scale[i]) for i in rows])
            try:
                context = batch.context.to(device) if device else batch.context
                with _without_autograd(device):
                    pred = model.forecast(context, int(horizon), batch.attention_mask).double().cpu().numpy()  # [B, L]
            except torch.OutOfMemoryError as err:
                size = _smaller_batch(len(rows), batch.context.shape[1], int(horizon), err)
                continue
            out[rows] = pred * scale[rows, None] + loc[rows, None]
            start += len(rows)
            bar.update(len(rows))
    # A constant context is forecast as that constant (no spread to scale by).
    out[constant] = np.array([contexts[i][-1] for i in np.flatnonzero(constant)])[:, None]
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:  # finite inputs, so the model overflowed: never hand NaN back as a forecast
        dtype = next(model.parameters()).dtype
        if scaling == "none":
            hint = "with scaling='none' the values go to the model as they are; use scaling='standard'"
        elif dtype == torch.float16:
            hint = "float16 is too narrow for this model's activations; forecast in float32 or bfloat16"
        else:
            hint = f"the model ({dtype}) overflowed or holds non-finite weights (a fine-tune that diverged?)"
        raise ValueError(
            f"the model returned non-finite forecasts for {bad.size} of {n} series (the first: series {bad[0]}, "
            f"values up to {np.abs(contexts[bad[0]]).max():.3g}); {hint}"
        )
    return out


# Raw values beyond this break the model without a trace. Measured with the embedded default on 1 + 0.1 sin(t)
# scaled by b: b = 1e9 forecasts; from b = 1e10 the squares inside each layer's RMSNorm overflow float32, the
# hidden states become 0 and the (finite) forecast no longer depends on the input; NaN appears only from ~1e20.
RAW_VALUE_LIMIT = 1e9


def _check_raw_range(contexts: list[np.ndarray]) -> None:
    peak = max((float(np.abs(c).max()) for c in contexts if c.size), default=0.0)
    if peak > RAW_VALUE_LIMIT:
        raise ValueError(
            f"scaling='none' passes values to the model as they are, and beyond ±{RAW_VALUE_LIMIT:.0e} they overflow "
            f"inside it (float32); these reach {peak:.3g}. Use scaling='standard'"
        )


def _smaller_batch(rows: int, context_length: int, horizon: int, err: Exception) -> int:
    """The chunk size to retry with after ``rows`` series ran out of GPU memory (half), or a clear error for one."""
    if rows == 1:
        raise MemoryError(
            f"one series (context of {context_length} points, horizon {horizon}) does not fit in GPU memory; use a "
            "shorter context_length, a smaller horizon or model, or forecast on the CPU"
        ) from err
    size = rows // 2
    log.warning(
        "out of GPU memory forecasting %d series at once; retrying %d at a time (pass a smaller batch_size to "
        "skip the failed attempts)",
        rows,
        size,
    )
    return size


def _without_autograd(device) -> contextlib.AbstractContextManager:
    """``torch.inference_mode`` for forecasts on the CPU, whose results become numpy at once: it also skips the
    version counters and view tracking that the model's own ``no_grad`` keeps. On 2 shared cores that measured
    about 2 ms of a ~48 ms one-series forecast, no more than the machine's noise (``benchmarks/cpu_bounds.py``).
    On a GPU nothing changes: a CUDA-graph forecaster's static buffers, made under inference mode, could not be
    written outside it."""
    on_cpu = device is None or torch.device(device).type == "cpu"
    return torch.inference_mode() if on_cpu else contextlib.nullcontext()


def _progress_bar(total: int, enabled: bool, desc: str, unit: str = "series"):
    """A tqdm bar over ``total`` items; a disabled one (its ``update`` does nothing) unless ``enabled``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False, disable=not enabled)


def forecast_series(
    model,
    series: list[np.ndarray],
    horizon: int,
    *,
    context_length: int | None = None,
    scaling: str = "standard",
    batch_size: int = 64,
    device=None,
    names: list[str] | None = None,
    progress: bool = False,
    warn: bool = True,
) -> np.ndarray:
    """Forecast ``horizon`` points after each raw series (NaN allowed); returns [N, L] float64.

    Each series keeps its most recent ``context_length`` points (None: the model's default context, see
    :func:`context_points`). ``warn=False``: no warning of a horizon past the model's window (darts'
    ``show_warnings=False``).
    """
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        # Before the warning below, which compared a horizon of "5" or None with an int (a bare TypeError).
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    length = context_points(context_length, model.config)
    if warn:
        warn_if_horizon_past_window(horizon, model.config)
    contexts = prepare(series, length, names)
    return forecast_contexts(
        model, contexts, horizon, scaling=scaling, batch_size=batch_size, device=device, progress=progress
    )
