"""pandas tables to lists of series: wide, long, one-row-per-series and sktime panels.

Wide tables hold one column per series. A column that is not numeric is skipped only when it is
clearly a date or an index (a datetime dtype, a date-like name such as ``date``/``timestamp``, values
that parse as dates, or an integer row counter such as ``Unnamed: 0``); any other non-numeric column is
an error that names it, because silently dropping data hides mistakes.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

ID_NAMES = ("unique_id", "item_id", "series_id", "ts_id", "id", "series", "key")
VALUE_NAMES = ("value", "target", "y", "values")
TIME_NAMES = ("timestamp", "ds", "date", "datetime", "time", "date_time", "period")
INDEX_NAMES = ("index", "no", "idx", "row", "unnamed: 0", "")
DATE_PART_NAMES = ("year", "month", "day", "hour", "minute", "second", "week", "weekday", "dayofweek", "quarter")


def frame_to_series(
    obj: pd.Series | pd.DataFrame,
    where: str,
    long: bool | None = None,
    id_col: str | None = None,
    value_col: str | None = None,
    time_col: str | None = None,
    orient: str = "columns",
    columns: list[str] | None = None,
    exclude: list[str] | None = None,
    dtype: Any = np.float32,
) -> tuple[list[np.ndarray], list[str]]:
    """Series (``dtype``, NaN kept) and their names from a pandas object; ``where`` names it in errors."""
    series, names = _float64_series(obj, where, long, id_col, value_col, time_col, orient, columns, exclude)
    # Read at full precision and cast once: write_binary_dataset stores int32 or float64 without a float32 detour.
    return [s.astype(dtype, copy=False) for s in series], names


def _float64_series(
    obj: pd.Series | pd.DataFrame,
    where: str,
    long: bool | None,
    id_col: str | None,
    value_col: str | None,
    time_col: str | None,
    orient: str,
    columns: list[str] | None,
    exclude: list[str] | None,
) -> tuple[list[np.ndarray], list[str]]:
    if isinstance(obj, pd.Series):
        return [_numeric(obj, where, str(obj.name))], [str(obj.name)]
    if not isinstance(obj, pd.DataFrame):
        raise TypeError(f"{where}: expected a pandas Series or DataFrame, got {type(obj).__name__}")
    df = obj
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise ValueError(f"{where} is empty (shape {df.shape})")
    if exclude:
        _require(df, exclude, where, "exclude")
        df = df.drop(columns=list(exclude))
    if long is None:
        long = id_col is not None or value_col is not None or looks_long(df)
    if orient not in ("columns", "rows"):
        raise ValueError(f"orient must be 'columns' (one column per series) or 'rows', got {orient!r}")
    if long:
        # Options of wide tables were accepted here and ignored: refused, so that no one trains on what they
        # did not ask for.
        if orient != "columns" or columns:
            raise ValueError(
                f"{where} is read as a long table (an id column, a value column): orient= and columns= are options "
                "of wide tables; pass long=False (a spec: '#long=false') if it is wide"
            )
        return _long(df, where, id_col, value_col, time_col)
    if columns:
        _require(df, columns, where, "columns")
    if time_col is not None:
        _require(df, [time_col], where, "time_col")
        if orient == "rows" or isinstance(df.index, pd.MultiIndex):
            raise ValueError(f"{where}: time_col= orders the rows of a wide table with one column per series only")
    chosen = df[list(columns)] if columns else df
    if orient == "rows":
        return _rows(chosen, where)
    if isinstance(df.index, pd.MultiIndex):
        return _panel(chosen, where)
    return _wide(df, where, columns, time_col)  # the whole table: a time column not chosen still orders the rows


def _lower(name: Any) -> str:
    return str(name).strip().lower()


def find_column(df: pd.DataFrame, candidates: tuple[str, ...]) -> str | None:
    lowered = {_lower(c): c for c in df.columns}
    return next((lowered[c] for c in candidates if c in lowered), None)


def _require(df: pd.DataFrame, names: list[str], where: str, what: str) -> None:
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: {what} names unknown columns {missing}; columns are {list(df.columns)[:20]}")


def looks_long(df: pd.DataFrame) -> bool:
    return find_column(df, ID_NAMES) is not None and find_column(df, VALUE_NAMES) is not None


def _numeric(col: pd.Series, where: str, name: str) -> np.ndarray:
    if pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col):
        converted = pd.to_numeric(col, errors="coerce")
        bad = converted.isna() & col.notna()
        if bad.any() or pd.api.types.is_bool_dtype(col):
            # A distinct text in every row reads as row ids: the first column of an M4 file (H1, H2, ...). Its
            # message led with exclude=, which read each time step across the file's series as one series.
            ids = len(col) > 1 and bool(bad.all()) and col.is_unique
            raise _not_numeric(col[bad] if bad.any() else col, where, name, ids=ids)
        col = converted
    return col.to_numpy(dtype=np.float64, na_value=np.nan)


def _not_numeric(bad: pd.Series, where: str, name: str, ids: bool = False) -> ValueError:
    """The error for a column whose values ``bad`` are not numbers (``ids``: a distinct one in every row)."""
    text = bad.astype(str).str.strip()
    commas = text.str.fullmatch(_DECIMAL_COMMA)
    if commas.any():
        return ValueError(
            f"{where}: column {name!r} holds numbers written with decimal commas (e.g. {text[commas].iloc[0]!r}); "
            "convert the file to '.' decimals (12.5, not 12,5)"
        )
    if ids:
        return ValueError(
            f"{where}: column {name!r} holds a different text in every row (e.g. {bad.iloc[0]!r}), as the ids of a "
            "table with one series per row (M4 style) do: pass orient='rows' ('#orient=rows'). If each column is a "
            f"series and this one only labels the rows, drop it with exclude=[{name!r}] ('#exclude={name}')"
        )
    return ValueError(
        f"{where}: column {name!r} is not numeric (e.g. value {bad.iloc[0]!r}). Drop it with "
        f"exclude=[{name!r}] (in a spec string: '#exclude={name}'), pick columns with columns=[...]; "
        "if each row is one series (M4 style) pass orient='rows' ('#orient=rows'); for long format "
        "pass long=True, id_col=..., value_col=..."
    )


def _is_date_or_index(col: pd.Series, name: Any, leading: bool = False) -> bool:
    """Whether a column is the time axis or row labels rather than a series. ``leading``: the column comes
    before any named one (where pandas' ``to_csv`` writes the index)."""
    return _column_role(col, name, leading) is not None


def _column_role(col: pd.Series, name: Any, leading: bool = False) -> str | None:
    """'time' for the time axis, 'labels' for row labels and date parts, None for a series."""
    lname = _lower(name)
    if pd.api.types.is_datetime64_any_dtype(col) or pd.api.types.is_timedelta64_dtype(col):
        return "time"
    if isinstance(col.dtype, pd.PeriodDtype):
        return "time"
    if lname in TIME_NAMES and pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        # yyyymmdd numbers (in any order) and increasing epoch seconds under a time name are the time axis, not a
        # series; other numbers under such a name are data.
        values = col.to_numpy(dtype=np.float64)
        if values.size > 1 and bool(np.isfinite(values).all() and (np.diff(values) > 0).all()):
            return "time"
        if _yyyymmdd(col) is not None:
            return "time"
    if pd.api.types.is_integer_dtype(col):
        return "labels" if _is_row_labels(col.to_numpy(), lname, leading) else None
    if not pd.api.types.is_numeric_dtype(col):
        if lname in TIME_NAMES:
            return "time"
        sample = col.dropna().astype(str).head(20)
        return "time" if parse_times(sample) is not None else None
    return None


def _is_row_labels(values: np.ndarray, lname: str, leading: bool) -> bool:
    if lname in DATE_PART_NAMES:
        return True
    if lname.startswith("unnamed") and leading:
        # A leading header left empty: pandas' to_csv writes the index so, and after rows were filtered or
        # shuffled it is no longer a counter, yet still row labels (distinct integers), never a series.
        return values.size > 1 and np.unique(values).size == values.size
    counter = values.size > 1 and bool((np.diff(values) == 1).all())
    return counter and (lname in INDEX_NAMES or lname.startswith("unnamed"))


def reads_as_dates(values: pd.Series) -> bool:
    """Whether every value is a date: text that reads as dates in one format, or yyyymmdd integers."""
    if pd.api.types.is_integer_dtype(values):
        return _yyyymmdd(values) is not None
    return not pd.api.types.is_numeric_dtype(values) and parse_times(values) is not None


def _yyyymmdd(col: pd.Series) -> pd.Series | None:
    """Integers that are all dates written as yyyymmdd (20200131), as dates; None otherwise."""
    if not pd.api.types.is_integer_dtype(col) or col.empty:
        return None
    if not bool(col.between(10000101, 99991231).all()):  # eight digits, the first a year
        return None
    dates = pd.to_datetime(col.astype(str), format="%Y%m%d", errors="coerce")
    return dates if bool(dates.notna().all()) else None


# What text dates look like: two digit groups joined by - / . or a space (2020-01-05, 05.01.2020, 1/5/20), an ISO
# week (2020-W03), a quarter (2020Q1, Q1 2020, 2020 Q1), a time of day (12:30), a compact ISO time (20200105T1200)
# or a month name.
_DATE_LIKE = (
    r"\d+[-/. ]\d+|\d{4}-?W\d{2}|\d{4}[-/ ]?Q[1-4]|Q[1-4][-/ ]?\d{4}|\d{1,2}:\d{2}|\d{8}T\d{2}"
    r"|(?<![a-z])(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
)
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
# 12,5 and 1.234,5: numbers as written where the comma is the decimal mark.
_DECIMAL_COMMA = r"[-+]?\d+(?:\.\d{3})*,\d+"


def _looks_like_dates(text: pd.Series) -> bool:
    """Whether every value of ``text`` (stripped strings) looks like a date or a time, and none like a number
    (1.5, or 12,5 with a decimal comma)."""
    if text.empty or text.str.fullmatch(f"{_NUMBER}|{_DECIMAL_COMMA}").any():
        return False
    return bool(text.str.contains(_DATE_LIKE, case=False, regex=True).all())


def parse_times(col: pd.Series, where: str | None = None) -> pd.Series | None:
    """Text dates read in one format for the whole column, or None when no single format reads them all, or when
    the values do not look like dates. ``where`` (a column's name, for printed dates) asks for a warning when the
    dates read two ways and nothing tells which is meant.

    The last check comes first: pandas' last resort reads almost any text as a date ('12,5', 'T1', '3rd', '1;2'),
    so a column of such values would be skipped as the time axis (its data silently lost), date a forecast in
    year 1, or reorder a long table's rows.

    Reading each value on its own would take 01.02.2020 as January 2 and 13.02.2020 as February 13 in
    the same column and silently reorder the rows. So pandas infers one format from the first value;
    month-first and day-first are both tried, and when both read every value differently, dates written
    between dots are day-first, else the reading with a calendar frequency wins, else the one with the more
    regular spacing (month-first on a tie, as pandas does).
    """
    text = col.astype(str).str.strip()
    months = dotted_months(text)
    if months is not None:  # before the check for numbers: 01.2020 is one
        return months
    if not _looks_like_dates(text):
        return None
    weeks = _iso_weeks(text)
    if weeks is not None:
        return weeks
    quarters = _quarters(text)
    if quarters is not None:
        return quarters
    months = _months_of_two_digit_years(text)
    if months is not None:
        return months
    if text.str.match(_YEAR_FIRST).all():
        # A leading four-digit year is year-month-day (ISO 8601) and nothing else: the day-first pass reads
        # 2021-02-01 as January 2, and for month-start data that reading even looks more regular.
        iso = _read_every_value(text, format="ISO8601")
        if iso is not None:
            return iso
    readings = [_read_every_value(text, dayfirst=first) for first in (False, True)]
    readings = [r for r in readings if r is not None]
    if not readings:
        # Neither one format reads every value (dates with and without a time of day, say): read each
        # value on its own, ISO 8601 first. Day-first dates never get here: the day-first pass reads them.
        iso = _read_every_value(text, format="ISO8601")
        return iso if iso is not None else _read_every_value(text, format="mixed")
    if len(readings) == 2 and not readings[0].equals(readings[1]):
        return _likelier_reading(text, *readings, where=where)
    return readings[0]


def _likelier_reading(text: pd.Series, month_first: pd.Series, day_first: pd.Series, where: str | None) -> pd.Series:
    """Of two readings of the same dates ``text``: day-first for dates between dots, else the one with a calendar
    frequency, else the one with the more regular spacing (month-first on a tie). Regularity alone misleads for
    month starts written day-first: 01.02.2022 read month-first is January 2, twelve days in a row each January
    (two distinct gaps), while the true months are 28 to 31 days apart (four distinct gaps). A frequency pandas
    can name is what real data has."""
    if text.str.match(_DOTTED).all():
        # Dates between dots are day-first wherever they are written so (German, Russian, Turkish...); none writes
        # the month first. Only this settles month starts of a year or less: both readings have a frequency then.
        return day_first
    has_freq = [_frequency(r) is not None for r in (month_first, day_first)]
    if has_freq[0] != has_freq[1]:
        return month_first if has_freq[0] else day_first
    chosen = min((month_first, day_first), key=_irregularity)
    if has_freq[0] and where is not None:
        _warn_read_both_ways(text, month_first, day_first, chosen is month_first, where)
    return chosen


def _warn_read_both_ways(
    text: pd.Series, month_first: pd.Series, day_first: pd.Series, chose_month_first: bool, where: str
) -> None:
    """Say that dates such as 01/02/2022 (month starts of a year or less, or the first days of one month) read as
    daily and as monthly alike: nothing in them tells, so the dates printed may be the wrong ones."""
    first = int(np.flatnonzero((month_first != day_first).to_numpy())[0])
    log.warning(
        "%s: dates such as %r read both month-first (%s, frequency %s) and day-first (%s, frequency %s); read "
        "%s. Nothing in them tells which is meant: write them year-first (yyyy-mm-dd), or day-first between dots "
        "(dd.mm.yyyy)",
        where,
        text.iloc[first],
        month_first.iloc[first].date(),
        _frequency(month_first),
        day_first.iloc[first].date(),
        _frequency(day_first),
        "month-first" if chose_month_first else "day-first",
    )


# Day, month and year between dots (01.02.2022, 1.2.22), maybe with a time of day after a space or a T.
_DOTTED = r"^\d{1,2}\.\d{1,2}\.\d{2,4}(?:$|[ T])"
_YEAR_FIRST = r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?:$|[ T])"
_ISO_WEEK = r"^(\d{4})-?W(\d{2})(?:-?([1-7]))?$"


def _iso_weeks(text: pd.Series) -> pd.Series | None:
    """ISO 8601 week dates (2020-W03, 2020W03, 2020-W03-2) as the Monday (or given weekday) of that week, or None
    if any value is not one. pandas reads none of them, and as text W52 of 2020 sorts after W01 of 2021 only by luck.
    """
    parts = text.str.extract(_ISO_WEEK)
    if not len(text) or parts[0].isna().any():
        return None
    iso = parts[0] + "-W" + parts[1] + "-" + parts[2].fillna("1")
    parsed = pd.to_datetime(iso, format="%G-W%V-%u", errors="coerce")
    return parsed if parsed.notna().all() else None


# A quarter and its year, either way round (Q1 2015, Q1-2015, 2015 Q1, 2015-Q1, 2015Q1).
_QUARTER = r"^(?:Q([1-4])[-/ ]?(\d{4})|(\d{4})[-/ ]?Q([1-4]))$"


def _quarters(text: pd.Series) -> pd.Series | None:
    """Quarters (Q1 2015, 2015 Q1 ...) as the first day of the quarter, or None if any value is not one. pandas reads
    2015Q1 but not Q1 2015: such a file was undated and kept file order (newest first, forecast backwards)."""
    if not len(text) or not re.fullmatch(_QUARTER, str(text.iloc[0]).upper()):  # most columns tell at once
        return None
    parts = text.str.upper().str.extract(_QUARTER)
    quarter, year = parts[0].fillna(parts[3]), parts[1].fillna(parts[2])
    if quarter.isna().any():
        return None
    months = (quarter.astype(int) - 1) * 3 + 1
    return pd.to_datetime(year + "-" + months.astype(str).str.zfill(2) + "-01", format="%Y-%m-%d")


# A month and a four-digit year between a dot (01.2020: German exports' "MM.JJJJ"), the month with its leading zero.
_DOTTED_MONTH = r"^(0[1-9]|1[0-2])\.([12]\d{3})$"


def dotted_months(text: pd.Series) -> pd.Series | None:
    """Months written mm.yyyy (01.2020) as the first day of that month, or None unless every value is one and they
    form a plausible monthly sequence (see :func:`_plausible_months`). pandas reads 01.2020 as the number 1.202, so the
    month column of such a file was a series and the file undated; a column of numbers that only look so (repeated,
    scattered over decades) stays numbers."""
    if len(text) < 3 or not re.fullmatch(_DOTTED_MONTH, str(text.iloc[0])):  # most columns tell at once
        return None
    parts = text.str.extract(_DOTTED_MONTH)
    if parts[0].isna().any():
        return None
    parsed = pd.to_datetime(parts[1] + "-" + parts[0] + "-01", format="%Y-%m-%d", errors="coerce")
    return parsed if _plausible_months(parsed) else None


def _plausible_months(parsed: pd.Series) -> bool:
    """Whether dates read as months are a monthly sequence: all read, distinct, and filling at least half the span
    from the first to the last (a few missing months, rows in any order)."""
    if not parsed.notna().all() or not parsed.is_unique:
        return False
    months = parsed.dt.year * 12 + parsed.dt.month
    return bool(2 * len(parsed) >= months.max() - months.min() + 1)


# A month name and a two-digit year (Jan-20, Jan 20, January/20: Excel's "mmm-yy").
_MONTH_YEAR = r"^([A-Za-z]{3,9})[-/ .']?(\d{2})$"


def _months_of_two_digit_years(text: pd.Series) -> pd.Series | None:
    """Months written as a month name and a two-digit year (Jan-20) as the first day of that month, or None if any
    value is not one. pandas read Jan-20 as January 20 of year 1: the rows were put in order of month, then year.
    The same text can be a day without its year (Jan 05, Jan 06, ...): read as months those scatter over decades,
    so the months must be distinct and fill at least half the span from the first to the last."""
    if not len(text) or not re.fullmatch(_MONTH_YEAR, str(text.iloc[0])):  # most columns tell at once
        return None
    parts = text.str.extract(_MONTH_YEAR)
    if parts[0].isna().any():
        return None
    parsed = pd.to_datetime(parts[0].str[:3] + " " + parts[1], format="%b %y", errors="coerce")
    return parsed if _plausible_months(parsed) else None


def _read_every_value(text: pd.Series, **options) -> pd.Series | None:
    """``pd.to_datetime(text, **options)`` if it reads every value, else None.

    Times whose UTC offsets differ (local time written across a daylight-saving change: +01:00, then +02:00)
    are read as UTC: pandas refuses mixed offsets otherwise, and the rows kept file order.
    """
    with warnings.catch_warnings():  # "could not infer format" / "dayfirst ignored": the result is checked
        warnings.simplefilter("ignore", UserWarning)
        try:
            parsed = pd.to_datetime(text, errors="coerce", **options)
        except (TypeError, ValueError, OverflowError):
            parsed = None  # pandas 3 refuses mixed offsets
        if parsed is None or not pd.api.types.is_datetime64_any_dtype(parsed):  # pandas 2 gives objects for them
            try:
                parsed = pd.to_datetime(text, errors="coerce", utc=True, **options)
            except (TypeError, ValueError, OverflowError):
                return None
    return parsed if len(parsed) and parsed.notna().all() else None


def _frequency(times: pd.Series) -> str | None:
    """The calendar frequency pandas infers for the distinct sorted times ('D', 'MS', 'QS-OCT'...), or None."""
    values = pd.DatetimeIndex(np.unique(times.to_numpy(dtype="datetime64[ns]")))
    if len(values) < 3:  # infer_freq needs three times
        return None
    try:
        return pd.infer_freq(values)
    except (TypeError, ValueError):
        return None


def _irregularity(times: pd.Series) -> int:
    # Distinct gaps between the sorted times: a daily series read the wrong way round has many.
    values = np.unique(times.to_numpy(dtype="datetime64[ns]").astype(np.int64))
    return int(np.unique(np.diff(values)).size)


def _wide(
    df: pd.DataFrame, where: str, columns: list[str] | None = None, time_col: str | None = None
) -> tuple[list[np.ndarray], list[str]]:
    duplicated = df.columns[df.columns.duplicated()]
    if len(duplicated):
        raise ValueError(f"{where}: column name {duplicated[0]!r} appears more than once; rename the duplicates")
    if columns:  # columns the user names are series, whatever their name or values suggest
        names = [c for c in columns if c != time_col]
        times = [c for c in df.columns if c not in names and _column_role(df[c], c) == "time"]
    else:
        names, times = _series_and_time_columns(df.drop(columns=[time_col]) if time_col is not None else df)
    if time_col is not None:  # the user's time column orders the rows and is no series (it was read as one)
        times = [time_col]
    if not names:
        raise ValueError(f"{where}: no numeric series columns (columns: {list(df.columns)[:20]})")
    series = [_numeric(df[name], where, str(name)) for name in names]
    order = _time_order(df[times[0]], where, times[0]) if len(times) == 1 else None
    if order is not None:
        series = [s[order] for s in series]
    return series, [str(name) for name in names]


def _series_and_time_columns(df: pd.DataFrame) -> tuple[list[Any], list[Any]]:
    """The columns of a wide table that are series, and those that are its time axis."""
    names, times = [], []
    for position, name in enumerate(df.columns):
        leading = all(_lower(c).startswith("unnamed") for c in df.columns[: position + 1])
        role = _column_role(df[name], name, leading)
        if role is None:
            names.append(name)
        elif role == "time":
            times.append(name)
    return names, times


def _time_order(col: pd.Series, where: str, name: Any) -> np.ndarray | None:
    """The row order that puts a wide table in time order; None when it is in order already or its time column
    does not read as times (the rows then keep file order). Rows with the same time keep their file order."""
    if not _holds_dates(col):
        return None  # times of day or month names: 23:00 then 00:00 crosses midnight, not back in time
    times = _times_of(col)
    if times is None:
        log.warning("%s: time column %r has missing or unreadable times; rows are kept in file order", where, name)
        return None
    times = times.reset_index(drop=True)
    repeated = times[times.duplicated()]
    if len(repeated):
        log.warning(
            "%s: time column %r holds %d repeated times (e.g. %s); rows with the same time keep their file order",
            where,
            name,
            len(repeated),
            repeated.iloc[0],
        )
    if times.is_monotonic_increasing:
        return None
    log.info("%s: rows are not in time order; sorted by column %r", where, name)
    return times.argsort(kind="stable").to_numpy()


# A year (four digits) or a day, month and year (1/5/20, 05.01.20): what makes a time absolute, hence sortable.
_FULL_DATE = r"\d{4}|\d+[-/.]\d+[-/.]\d+"


def _holds_dates(col: pd.Series) -> bool:
    """Whether a time column's values carry their date: numbers and datetime dtypes do, text must show it (a year,
    a day, month and year, or a month and a two-digit year such as Jan-20)."""
    if not (pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col)):
        return True
    text = col.dropna().astype(str).str.strip()
    return bool(text.str.contains(_FULL_DATE, regex=True).all()) or _months_of_two_digit_years(text) is not None


def _times_of(col: pd.Series) -> pd.Series | None:
    """A time column's values in an order-comparable form, or None if some are missing or do not read."""
    if pd.api.types.is_numeric_dtype(col):
        dates = _yyyymmdd(col)
        times = dates if dates is not None else col
    elif pd.api.types.is_datetime64_any_dtype(col) or pd.api.types.is_timedelta64_dtype(col):
        times = col
    elif isinstance(col.dtype, pd.PeriodDtype):
        times = col
    else:
        times = parse_times(col)
    return None if times is None or bool(times.isna().any()) else times


def _rows(df: pd.DataFrame, where: str) -> tuple[list[np.ndarray], list[str]]:
    # One row per series (M4 style): leading non-numeric columns are row ids, the rest values.
    cols = list(df.columns)
    k = 0
    # Ids are the leading text columns, and leading numeric ones named as ids (series_id 101, 102 became each
    # series' first value) or as a saved pandas index ("Unnamed: 0").
    while k < len(cols) and (
        not pd.api.types.is_numeric_dtype(df[cols[k]]) or _lower(cols[k]) in ID_NAMES + INDEX_NAMES
    ):
        k += 1
    values = df[cols[k:]]
    if values.shape[1] == 0:
        raise ValueError(f"{where}: orient='rows' found no numeric value columns")
    mat = np.stack([_numeric(values[c], where, str(c)) for c in values.columns], axis=1)  # [rows, points]
    # The first id column that is not a saved index names the rows.
    named = [c for c in cols[:k] if _lower(c) not in INDEX_NAMES]
    ids = df[(named or cols)[0]].astype(str).tolist() if k > 0 else [str(i) for i in df.index]
    return [np.ascontiguousarray(_trim_trailing_nan(r)) for r in mat], ids


def _trim_trailing_nan(x: np.ndarray) -> np.ndarray:
    # Rows of different lengths are NaN-padded at the end; the padding is not part of the series.
    finite = np.flatnonzero(~np.isnan(x))
    return x[: finite[-1] + 1] if finite.size else x[:0]


def _panel(df: pd.DataFrame, where: str) -> tuple[list[np.ndarray], list[str]]:
    # sktime pd-multiindex: outer levels identify the instance, the last level is time.
    series, names = [], []
    outer = list(range(df.index.nlevels - 1))
    for key, group in df.groupby(level=outer, sort=False):
        group = group.sort_index(level=-1)
        for name in group.columns:
            if _is_date_or_index(group[name], name):
                continue
            series.append(_numeric(group[name], where, str(name)))
            names.append(f"{key}/{name}")
    if not series:
        raise ValueError(f"{where}: the panel holds no numeric columns")
    return series, names


def _long(
    df: pd.DataFrame, where: str, id_col: str | None, value_col: str | None, time_col: str | None
) -> tuple[list[np.ndarray], list[str]]:
    id_col = id_col or find_column(df, ID_NAMES)
    value_col = value_col or find_column(df, VALUE_NAMES)
    if id_col is None or value_col is None:
        raise ValueError(
            f"{where}: long format needs an id column and a value column; pass id_col= and value_col= "
            f"(columns are {list(df.columns)[:20]})"
        )
    _require(df, [id_col, value_col] + ([time_col] if time_col else []), where, "long format")
    time_col = time_col or find_column(df, TIME_NAMES)
    values = _numeric(df[value_col], where, str(value_col))
    frame = pd.DataFrame({"id": df[id_col].to_numpy(), "v": values})
    no_id = int(frame["id"].isna().sum())
    if no_id:  # groupby drops them: say so rather than lose the rows quietly
        log.warning("%s: %d row(s) have no %r value and belong to no series; they are left out", where, no_id, id_col)
    if time_col is not None:
        t = df[time_col]
        if not pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_datetime64_any_dtype(t):
            t = parse_times(t)
            if t is None:
                log.warning(
                    "%s: time column %r does not read as dates in one format; rows are kept in file order",
                    where,
                    time_col,
                )
        if t is not None:
            frame["t"] = t.to_numpy()
            repeated = frame.duplicated(["id", "t"]) & frame["id"].notna()
            if repeated.any():  # the stable sort zig-zagged the two copies into one series
                first = frame[repeated].iloc[0]
                raise ValueError(
                    f"{where}: {int(repeated.sum())} rows repeat an earlier row's ({id_col}, {time_col}) pair, the "
                    f"first {first['id']!r} at {first['t']}; a series holds one value per time: drop the duplicates "
                    "(or give the copies ids of their own)"
                )
            frame = frame.sort_values(["t"], kind="stable")
    series, names = [], []
    for key, group in frame.groupby("id", sort=False):
        series.append(group["v"].to_numpy(dtype=np.float64))
        names.append(str(key))
    if time_col is not None:
        # Keep series in order of first appearance in the file, not in order of first timestamp.
        first = {str(k): i for i, k in enumerate(pd.unique(df[id_col]))}
        order = sorted(range(len(names)), key=lambda i: first[names[i]])
        series, names = [series[i] for i in order], [names[i] for i in order]
    return series, names
