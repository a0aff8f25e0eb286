"""pandas frames of the sktime adapter <-> lists of 1-D series, and the indices of forecasts.

sktime hands over one DataFrame: a single (multivariate) series, a ``pd-multiindex`` panel or a
``pd_multiindex_hier`` hierarchy. Each (instance, column) pair becomes one 1-D float64 array,
instance-major, which is what :mod:`timemoe_forecaster.preprocess` batches.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from . import preprocess

log = logging.getLogger(__name__)

# pandas 3 copies lazily (copy-on-write) and deprecates the ``copy`` keyword of ``astype``.
_PANDAS_COPIES_ON_WRITE = int(pd.__version__.split(".")[0]) >= 3


class SeriesSet:
    """Every (instance, column) of a frame as a 1-D array, instance-major; ``times`` holds each instance's time
    labels (its values' index), ``ends`` the last of them."""

    def __init__(self, values, keys, ends, names, num_columns, times=None):
        self.values, self.keys, self.ends, self.names, self.num_columns = values, keys, ends, names, num_columns
        self.times = times


def _regular_range(times: pd.Index, freq) -> pd.Index | None:
    """Every time point from the first of ``times`` to the last at ``freq``; None if ``times`` are not on
    that grid (then nothing can be said about gaps)."""
    if isinstance(times, pd.PeriodIndex):
        full = pd.period_range(times[0], times[-1], freq=times.freq)
    elif isinstance(times, pd.DatetimeIndex) and freq is not None:
        full = pd.date_range(times[0], times[-1], freq=freq)
    elif _is_integer_index(times):
        return _integer_range(times)
    else:
        return None
    return full if times.isin(full).all() else None


def _is_integer_index(times: pd.Index) -> bool:
    return pd.api.types.is_integer_dtype(times.dtype) and len(times) > 1


# An integer index whose gaps would more than double it is not read as a series with missing points.
_MAX_INTEGER_FILL = 1.0


def _integer_range(times: pd.Index) -> pd.Index | None:
    """Every integer from the first of ``times`` to the last, for an integer time index of step 1.

    sktime reads an integer index as time points one unit apart (fh=1 is the cut-off plus 1), so 1, 2, 4, 5 skips
    the point 3. An index whose points share a larger step (0, 10, 20, ...) has no gaps in that view, and one
    whose gaps would more than double it (0, 1, 2, 1000) is more likely labels than a clock: both are read as
    consecutive points, the second with a warning."""
    values = np.asarray(times, dtype=np.int64)
    steps = np.diff(values)
    if (steps <= 0).any() or np.gcd.reduce(steps) != 1:
        return None
    total = int(values[-1] - values[0]) + 1
    if total - len(values) > _MAX_INTEGER_FILL * len(values):
        log.warning(
            "y's integer index skips %d of the %d points from %d to %d; too many to be missing values, so its "
            "points are read as consecutive",
            total - len(values),
            total,
            values[0],
            values[-1],
        )
        return None
    return pd.Index(np.arange(values[0], values[-1] + 1, dtype=values.dtype), dtype=times.dtype, name=times.name)


_UNIT_NANOS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def _ticks(times: pd.DatetimeIndex, step_nanos: int) -> tuple[np.ndarray, np.ndarray]:
    """``times`` as whole multiples of a step of ``step_nanos`` nanoseconds, and what is left over.

    Read in the index's own unit (pandas 3 defaults to microseconds): converting a long index to
    nanoseconds first took 0.35 s per call at 5M points, and ``update`` runs this on the whole history.
    """
    unit = _UNIT_NANOS.get(getattr(times, "unit", "ns"))
    if unit is None or step_nanos % unit:
        return np.divmod(times.as_unit("ns").asi8, step_nanos)
    return np.divmod(times.asi8, step_nanos // unit)


def _evenly_filled(frame: pd.DataFrame, times: pd.Index, freq) -> bool:
    """Fast check that no instance skips a point, where the time points are integers apart: periods, integer
    indices and fixed-size frequencies (days, hours, ...). False means "not known", and the slower check runs."""
    if isinstance(times, pd.PeriodIndex):
        ticks = pd.Series(times.asi8, index=frame.index)
    elif isinstance(times, pd.DatetimeIndex) and freq is not None:
        try:
            step = pd.tseries.frequencies.to_offset(freq).nanos  # months, weeks, ...: not a fixed size
        except ValueError:
            return False
        whole, rest = _ticks(times, step)
        # Points off one grid (an update at :30 to an hourly series) take the slower check, which refuses them.
        # Local times across a daylight-saving change move against UTC's grid by an hour: not a mark of that.
        local = times.tz is not None and str(times.tz) != "UTC"
        if not local and rest.size and (rest != rest[0]).any():
            return False
        ticks = pd.Series(whole, index=frame.index)
    elif _is_integer_index(times):
        ticks = pd.Series(np.asarray(times, dtype=np.int64), index=frame.index)
    else:
        return False
    if frame.index.nlevels == 1:
        return bool(ticks.iloc[-1] - ticks.iloc[0] + 1 == len(ticks))
    spans = ticks.groupby(level=list(range(frame.index.nlevels - 1)), sort=False).agg(["min", "max", "size"])
    return bool((spans["max"] - spans["min"] + 1 == spans["size"]).all())


def fill_time_gaps(frame: pd.DataFrame, freq=None, one_grid: bool = True) -> tuple[pd.DataFrame, int]:
    """Rows of NaN where a regular time index skips points, per instance, and how many were added.

    A series whose PeriodIndex (or DatetimeIndex of frequency ``freq``) skips months, days, ... is a series
    with missing values there, not a shorter series: the model reads positions, so skipped points would
    silently join the values around them. The NaN rows are then filled like any other missing value.

    ``one_grid``: every series must lie on the grid of ``freq`` (a DatetimeIndex), as forecasts are labelled on
    it; a series off it, or of another frequency, is a ValueError (see :func:`off_grid`). Off, such a series is
    left as it is (pretraining reads each series as a sequence of its own).
    """
    times = frame.index.get_level_values(-1)
    freq = freq if freq is not None else getattr(times, "freq", None)
    if _evenly_filled(frame, times, freq):
        return frame, 0
    if frame.index.nlevels == 1:
        full = _regular_range(times, freq)
        if one_grid and (reason := off_grid(times, full, freq)):
            _refuse_off_grid("y", reason, panel=False)
        if full is None or len(full) == len(times):
            return frame, 0
        return frame.reindex(full.rename(frame.index.name)), len(full) - len(times)
    parts, added = [], 0
    for key, group in frame.groupby(level=list(range(frame.index.nlevels - 1)), sort=False):
        own = group.index.get_level_values(-1)
        full = _regular_range(own, freq)
        if reason := off_grid(own, full, freq):
            if one_grid:
                _refuse_off_grid(
                    f"instance {key[0] if isinstance(key, tuple) and len(key) == 1 else key!r} of y", reason
                )
            full = None  # a series of its own frequency: left on its own grid
        if full is not None and len(full) != len(own):
            key = key if isinstance(key, tuple) else (key,)
            group = group.reindex(output_index(frame.index, [key], full))  # the instance's key on every time point
            added += len(full) - len(own)
        parts.append(group)
    return (pd.concat(parts), added) if added else (frame, 0)


def off_grid(times: pd.Index, full: pd.Index | None, freq) -> str | None:
    """Why a series' DatetimeIndex is not one of the grid of ``freq``, or None when it is: off that grid
    (``full is None``), or filling less than half of it with a frequency of its own that differs.

    A daily instance in a weekly panel was forecast 25 and 26 days ahead under the labels of weeks 25 and 26,
    and a weekly one in a daily panel became 86% interpolated days, both without an error; sktime's own
    forecasters refuse such panels."""
    if not isinstance(times, pd.DatetimeIndex) or freq is None or len(times) < 2:
        return None
    if full is not None and len(full) <= 2 * len(times):
        return None
    # A few points a week apart in a daily panel are sparse data (intermittent demand), not a weekly series:
    # only a longer run says that a series has a frequency of its own.
    own = pd.infer_freq(times) if len(times) >= _OWN_FREQUENCY_POINTS else None
    if full is not None and (own is None or _offset(own) == _offset(freq)):
        return None  # sparse, but of this frequency: missing values
    name = getattr(_offset(freq), "freqstr", freq)
    detail = f"its own frequency is {own}" if own is not None else f"e.g. {_first_off_grid(times, freq)}"
    return f"has times off the time grid of y's frequency {name} ({detail})"


_OWN_FREQUENCY_POINTS = 8


def _refuse_off_grid(what: str, reason: str, panel: bool = True):
    if not panel:
        raise ValueError(f"{what} {reason}; forecasts are labelled on that grid: resample y to one frequency")
    raise ValueError(
        f"{what} {reason}; the series of one panel must share one frequency and alignment, as forecasts are "
        "labelled on that grid. Forecast them separately, or resample them to one frequency"
    )


def _offset(freq):
    return pd.tseries.frequencies.to_offset(freq)


def _first_off_grid(times: pd.DatetimeIndex, freq):
    grid = pd.date_range(times[0], times[-1], freq=freq)
    off = times[~times.isin(grid)]
    return off[0] if len(off) else times[0]


def instance_starts(frame: pd.DataFrame) -> np.ndarray | None:
    """The first row of every instance of a panel, or None when an instance's rows are not one run.

    Instances are runs of rows (update() and sktime keep them sorted): read off the index codes; a groupby took
    0.56 s at 5M rows, and the checks that use this run at every update."""
    codes = np.stack([np.asarray(frame.index.codes[j]) for j in range(frame.index.nlevels - 1)])  # [L-1, n]
    first = np.ones(len(frame), dtype=bool)
    first[1:] = (codes[:, 1:] != codes[:, :-1]).any(axis=0)
    starts = np.flatnonzero(first)
    if len(np.unique(codes[:, starts], axis=1)[0]) != len(starts):  # an instance in several runs
        return None
    return starts


def inferred_freq(frame: pd.DataFrame) -> str | None:
    """The frequency of a DatetimeIndex time level that carries none, or None.

    Inferred per instance: a panel's time level mixes its instances' times, and one instance with skipped
    points must not hide the others' frequency. The most common frequency of the longest instances wins: the
    first one regular enough to tell was taken before, and a sparse instance sorted first (3 points two days
    apart in a daily panel) set the whole panel's frequency to theirs.
    """
    times = frame.index.get_level_values(-1)
    if not isinstance(times, pd.DatetimeIndex):
        return None
    if times.freq is not None:
        return times.freqstr
    if frame.index.nlevels == 1:
        return infer_series_freq(times)
    found = []
    for own in _longest_instances(frame, times):
        freq = infer_series_freq(own)
        if freq is not None:
            found.append(freq)
    if not found:
        return None
    counts = {f: found.count(f) for f in found}
    return max(found, key=lambda f: counts[f])  # ties: the longer instance's


# Runs of this many points vote on the frequency of a series that skips points; at most _FREQUENCY_RUNS of them.
_RUN_POINTS, _FREQUENCY_RUNS = 8, 64


def infer_series_freq(times: pd.DatetimeIndex) -> str | None:
    """The frequency of one series' times, or None.

    pandas infers none for a series that skips a point (a daily series missing one day), so such a series was
    accepted by ``fit`` and every ``predict`` then failed. Then runs of a few points vote, and the winner counts
    only if every time lies on its grid and the skipped points are fewer than the series' own: a business-day
    series missing a holiday is "B", not "D" with every weekend missing."""
    if len(times) < 3:
        return None
    freq = pd.infer_freq(times)
    if freq is not None or len(times) < 2 * _RUN_POINTS:
        return freq
    starts = np.unique(np.linspace(0, len(times) - _RUN_POINTS, _FREQUENCY_RUNS).astype(int))
    votes = [pd.infer_freq(times[i : i + _RUN_POINTS]) for i in starts]
    votes = [v for v in votes if v is not None]
    if not votes:
        return None
    freq = max(votes, key=votes.count)
    try:
        grid = pd.date_range(times[0], times[-1], freq=freq)
    except ValueError:
        return None
    if len(grid) > 2 * len(times) or not times.isin(grid).all():
        return None
    return freq


# Instances whose frequencies are compared to infer a panel's (the longest ones): enough to outvote a few
# sparse ones, few enough that a panel of 100k instances is not read whole.
_FREQUENCY_VOTERS = 20


def _longest_instances(frame: pd.DataFrame, times: pd.DatetimeIndex) -> list[pd.DatetimeIndex]:
    """The time points of the panel's :data:`_FREQUENCY_VOTERS` longest instances, longest first."""
    starts = instance_starts(frame)
    if starts is None:  # an instance in several runs of rows: the slower way
        groups = [g.index.get_level_values(-1) for _, g in frame.groupby(level=list(range(frame.index.nlevels - 1)))]
        return sorted(groups, key=len, reverse=True)[:_FREQUENCY_VOTERS]
    stops = np.append(starts[1:], len(frame))
    order = np.argsort(-(stops - starts), kind="stable")[:_FREQUENCY_VOTERS]
    return [times[starts[k] : stops[k]] for k in order]


def refuse_non_numeric(y, what: str = "y") -> None:
    """A clear error for text, categorical, datetime or boolean columns of a pandas ``y``, naming them (sktime's
    own check says only "Forecasters do not support categorical features in endogeneous y"). Others pass."""
    if isinstance(y, pd.Series):
        if _is_number(y):
            return
        named = f" ({y.name!r})" if y.name is not None else ""
        problem = f"{what}{named} must hold numbers, not {y.dtype}"
    elif isinstance(y, pd.DataFrame):
        bad = [(name, y[name].dtype) for name in y.columns if not _is_number(y[name])]
        if not bad:
            return
        named = ", ".join(f"{name!r} ({dtype})" for name, dtype in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        problem = f"{what} must hold numbers; column(s) {named}{more} do not"
    else:
        return
    raise TypeError(
        f"{problem}: forecasting needs numbers, not text, categorical, date or boolean values. Convert numbers "
        f"stored as text with pd.to_numeric (errors='coerce' turns what is no number into NaN, treated as missing) "
        f"and flags with astype(float), or drop what is not a series of numbers"
    )


def _is_number(values) -> bool:
    """Real numbers; booleans are flags, not a series to forecast (``astype(float)`` makes them one). Numbers held
    in an object column (sktime's own test data, frames built row by row) count."""
    types, dtype = pd.api.types, values.dtype
    if types.is_object_dtype(dtype):
        return types.infer_dtype(values, skipna=True) in ("floating", "integer", "mixed-integer-float", "empty")
    return types.is_numeric_dtype(dtype) and not (types.is_bool_dtype(dtype) or types.is_complex_dtype(dtype))


def checked_frame(y, require_points: bool = True, copy: bool = True) -> pd.DataFrame:
    """A validated float64 copy of ``y`` (numeric, no inf, at least 2 observations per series)."""
    if not isinstance(y, pd.DataFrame):
        y = pd.DataFrame(y)
    refuse_non_numeric(y)
    if len(y) == 0:
        raise ValueError("y is empty; pass a series with at least 2 observed points")
    refuse_duplicate_times(y.index)
    frame = y.astype(np.float64) if _PANDAS_COPIES_ON_WRITE else y.astype(np.float64, copy=copy)
    if np.isinf(frame.to_numpy()).any():
        raise ValueError("y holds inf values; replace them by NaN (treated as missing) or finite numbers")
    if not require_points:
        return frame
    series = split_series(frame)
    for values, name in zip(series.values, series.names):
        preprocess.fill_missing(values, name)  # raises for all-NaN or too short series
    return frame


def refuse_duplicate_times(index: pd.Index) -> None:
    """A time point given twice (in one instance) is a ValueError naming it. Unchecked, an integer index read
    the duplicate as one more point, and a PeriodIndex whose duplicate filled the span of a skipped day shifted
    every later value by a day, both silently; other indices failed inside pandas."""
    if index.is_unique:
        return
    first = index[index.duplicated()][0]
    if index.nlevels == 1:
        raise ValueError(f"y has time point {first} more than once; keep one value per time point")
    instance = first[:-1] if len(first) > 2 else first[0]
    raise ValueError(
        f"instance {instance!r} of y has time point {first[-1]} more than once; keep one value per time point"
    )


def refuse_strided_integer_index(frame: pd.DataFrame) -> None:
    """An integer time index whose points share a step above 1 (0, 10, 20, ...) is a ValueError.

    sktime counts integer time in units of 1: fh=1 after 390 is 391, and the absolute time 400 is 10 steps on.
    Read as consecutive points, such a series was forecast 1 and 2 steps ahead under the labels 391 and 392, 10
    and 20 steps ahead for fh 400 and 410, and a panel member ending one point (10 units) early was forecast 10
    steps further out than the others, all without a word."""
    times = frame.index.get_level_values(-1)
    if not _is_integer_index(times):
        return
    values = np.asarray(times, dtype=np.int64)
    same = np.ones(len(values) - 1, dtype=bool)  # consecutive rows of one instance
    if frame.index.nlevels > 1:
        for level in range(frame.index.nlevels - 1):
            codes = np.asarray(frame.index.codes[level])
            same &= codes[1:] == codes[:-1]
    steps = np.abs(np.diff(values)[same])
    step = int(np.gcd.reduce(steps)) if steps.size else 1
    if step > 1:
        raise ValueError(
            f"y's integer time index steps by {step} (e.g. {values[0]}, {values[0] + step}, ...), but sktime counts "
            f"integer time in units of 1 (fh=1 after {values[-1]} is {values[-1] + 1}), so forecasts would be "
            f"labelled between y's points. Give y an index of step 1 (its index // {step}, or a RangeIndex), or "
            "a PeriodIndex/DatetimeIndex of its frequency"
        )


def split_series(frame: pd.DataFrame):
    columns = list(frame.columns)
    if frame.index.nlevels == 1:
        values = frame.to_numpy(np.float64)
        names = [f"column {c!r} of y" for c in columns]
        return SeriesSet(list(values.T), [None], [frame.index[-1]], names, len(columns), [frame.index])
    levels = list(range(frame.index.nlevels - 1))
    values, keys, ends, names, times = [], [], [], [], []
    for key, group in frame.groupby(level=levels, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        keys.append(key)
        ends.append(group.index[-1][-1])
        times.append(group.index.get_level_values(-1))
        block = group.to_numpy(np.float64)
        values.extend(block.T)
        names.extend(f"instance {key if len(key) > 1 else key[0]!r}, column {c!r} of y" for c in columns)
    return SeriesSet(values, keys, ends, names, len(columns), times)


def steps_between(end, cutoff: pd.Index, what: str = "a series of y") -> int:
    """Number of steps from ``end`` (one instance's last time) to the global cutoff."""
    last = cutoff[0]
    if end == last:
        return 0
    if isinstance(cutoff, pd.PeriodIndex):
        return int((last - end).n)
    if isinstance(cutoff, pd.DatetimeIndex):
        if cutoff.freq is None:
            raise ValueError(
                "the series of y end at different times and their frequency is unknown; "
                "give y a DatetimeIndex with a freq"
            )
        steps = pd.date_range(end, last, freq=cutoff.freq)
        if len(steps) == 0 or steps[0] != end or steps[-1] != last:
            # Counted from an end off the grid, the forecasts were labelled at times the series never has (an
            # hourly series at :30 in a panel at :00 got its next hour labelled :00).
            raise ValueError(
                f"{what} ends at {end}, off the time grid of y's last point {last} at frequency "
                f"{cutoff.freq.freqstr}; the series of one panel must share one frequency and alignment, as "
                "forecasts are labelled on that grid. Forecast them separately, or resample them to one grid"
            )
        return len(steps) - 1
    return int(last - end)


def output_index(index: pd.Index, keys: list, fh_abs: pd.Index) -> pd.Index:
    if index.nlevels == 1:
        return fh_abs
    m = len(fh_abs)
    arrays = [np.repeat(np.array([k[j] for k in keys], dtype=object), m) for j in range(index.nlevels - 1)]
    times = fh_abs[np.tile(np.arange(m), len(keys))]
    return pd.MultiIndex.from_arrays(
        [pd.Index(a).astype(index.levels[j].dtype) for j, a in enumerate(arrays)] + [times], names=index.names
    )


def to_rows(values: np.ndarray, num_columns: int) -> np.ndarray:
    """[instances * columns, m] -> [instances * m, columns] (rows instance-major, then time)."""
    n, m = values.shape
    return values.reshape(n // num_columns, num_columns, m).transpose(0, 2, 1).reshape(-1, num_columns)
