"""Local times around a daylight-saving change, as files write them: with UTC offsets that change (+01:00, then
+02:00), or without offsets, repeating the hour the clocks go back (02:00 twice at the end of October in Europe).

Both come with a timeline that dates can be computed on (UTC instants; times that count the repeated hour once
more) and the offset of each written time from it, so that times can be printed again as the file wrote them.
"""

from __future__ import annotations

import datetime
import functools
import zoneinfo

import numpy as np
import pandas as pd

# A time of day ending in a UTC offset: Z, +02, +0200 or +02:00 (a date alone ends in "-26": no offset).
_OFFSET = r"\d:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(Z|([-+])(\d{2}):?(\d{2})?)$"


def written_offsets(text: pd.Series) -> np.ndarray | None:
    """The UTC offset each time of ``text`` is written with (timedelta64), or None if one is written without."""
    parts = text.astype(str).str.strip().str.extract(_OFFSET)
    if not len(parts) or parts[0].isna().any():
        return None
    sign = np.where(parts[1] == "-", -1, 1)  # Z has no sign and no digits: zero
    minutes = parts[2].fillna("0").astype(int) * 60 + parts[3].fillna("0").astype(int)
    return (sign * minutes.to_numpy()).astype("timedelta64[m]").astype("timedelta64[ns]")


def fall_back_timeline(wall: pd.Series) -> tuple[pd.DatetimeIndex, np.ndarray] | None:
    """Times without offsets (``wall``, in file order, oldest or newest first) that repeat the hour when daylight
    saving time ends, read so: (a timeline counting the repeated times once more, each time's offset from it, in
    file order), or None if they are not such.

    A time index takes each time once, so 02:00 twice could not be dated. In time order the second 02:00 is one
    step (an hour) after the first: the rows before it were in summer time, ahead of the clock after the change,
    and less that lead they run on at the file's usual step. Read so only where each step back is one that some
    time zone's clock takes at that date and time, by the length it repeats: a row written twice at any other
    time, rows out of order or a daily series are not read so."""
    times = pd.DatetimeIndex(wall)
    if times.tz is not None or len(times) < 3:
        return None
    times = times.as_unit("ns")  # pandas reads text to microseconds: steps below count nanoseconds
    read = _oldest_first(times)
    if read is None:  # newest first, as some exports write them: the copies of a repeat are reversed too
        read = _oldest_first(times[::-1])
        read = None if read is None else (read[0][::-1], read[1][::-1])
    return read


def _oldest_first(times: pd.DatetimeIndex) -> tuple[pd.DatetimeIndex, np.ndarray] | None:
    """:func:`fall_back_timeline` of nanosecond times meant to be in time order."""
    steps = np.diff(times.asi8)
    backs = np.flatnonzero(steps <= 0) + 1  # rows that do not come after the row before
    if not backs.size or not (steps > 0).any():
        return None
    step = pd.Timedelta(int(np.median(steps[steps > 0])))
    offsets = np.zeros(len(times), dtype="timedelta64[ns]")
    for row in backs:
        length = times[row - 1] - times[row] + step  # what the clock went back by, if the rows are a step apart
        if not _repeated_by(times[row - 1], times[row], length):
            return None
        offsets[:row] += length.to_timedelta64()  # the rows before the clock went back were ahead by that much
    return times - offsets, offsets


def repeats_somewhere(time: pd.Timestamp) -> bool:
    """Whether some time zone's clock shows ``time`` twice (the hour repeated when daylight saving time ends)."""
    return any(_repeat_in(time, zone) is not None for zone in _zones())


def _repeated_by(last: pd.Timestamp, first: pd.Timestamp, length: pd.Timedelta) -> bool:
    """Whether some time zone's clock goes back by ``length`` so that it shows ``last`` (of the first pass) and then
    ``first`` (of the second) in the stretch it repeats."""
    return any(_repeat_in(first, zone) == length == _repeat_in(last, zone) for zone in _zones())


def _repeat_in(time: pd.Timestamp, zone: zoneinfo.ZoneInfo) -> datetime.timedelta | None:
    """How long ``zone``'s clock repeats where it shows ``time`` twice, or None where it shows it once (or never)."""
    wall = time.to_pydatetime()
    # fold=0 is the first pass of a repeated time, fold=1 the second; in a skipped hour the order is reversed.
    first, second = (wall.replace(tzinfo=zone, fold=fold).utcoffset() for fold in (0, 1))
    return first - second if first > second else None


@functools.lru_cache(maxsize=1)
def _zones() -> tuple[zoneinfo.ZoneInfo, ...]:
    # Read once, and only for a file whose times repeat: listing and loading the ~600 zones took 30 ms here.
    return tuple(zoneinfo.ZoneInfo(key) for key in sorted(zoneinfo.available_timezones()))
