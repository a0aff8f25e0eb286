"""File readers for the text and numpy formats: each returns plain arrays, wrapped into sources by ``sources.py``."""

from __future__ import annotations

import gzip
import json
import logging
import lzma
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .frames import TIME_NAMES, dotted_months, frame_to_series, reads_as_dates

logger = logging.getLogger(__name__)

# What a damaged, cut-short or mis-encoded file raises from inside gzip, zipfile, the codecs or pandas; each becomes
# one line that names the file (the readers' callers, the CLI included, report ValueError as one line).
_UNREADABLE = (OSError, EOFError, UnicodeDecodeError, zipfile.BadZipFile, zlib.error, lzma.LZMAError)
_FORMAT_NAMES = {".csv": "CSV", ".tsv": "TSV", ".parquet": "parquet", ".pq": "parquet", ".npy": "numpy .npy"}
_FORMAT_NAMES.update({".npz": "numpy .npz", ".json": "JSON", ".jsonl": "JSON lines"})


def _unreadable(path: Path, fmt: str, err: BaseException) -> ValueError:
    """The one-line error for a file its reader failed on: the file, the format and the reader's own first line."""
    lines = str(err).strip().splitlines()
    detail = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return ValueError(f"{path}: cannot be read as {_FORMAT_NAMES.get(fmt, fmt)} ({detail})")


def _parse_errors() -> tuple[type[BaseException], ...]:
    import pandas as pd

    errors: tuple[type[BaseException], ...] = (*_UNREADABLE, pd.errors.ParserError)
    try:
        import pyarrow
    except ImportError:
        return errors
    return (*errors, pyarrow.ArrowException)


def read_table(path: Path, fmt: str, opts: dict) -> list[np.ndarray]:
    series, _ = frame_to_series(read_frame(path, fmt), str(path), **opts)
    return series


# Cells that mark a missing value beside pandas' own (NA, NaN, null, #N/A, ...): the UCI repository's "?". A column
# holding one was text, refused or passed over for the next numeric column.
MISSING_MARKS = ["?"]


def read_frame(path: Path, fmt: str):
    """The DataFrame of a CSV, TSV or parquet file (``fmt``: its suffix, without a compression suffix)."""
    import pandas as pd

    try:
        if fmt in (".parquet", ".pq"):
            return _index_as_column(_read_parquet(path))
        sep = "\t" if fmt == ".tsv" else ","
        # In a one-column file an empty cell is a blank line, which pandas skips: the gap closed up without a word
        # (30 values with 2 missing read as 28 contiguous ones). The header alone tells the column count.
        header = pd.read_csv(path, sep=sep, nrows=0)
        one_column = header.shape[1] == 1
        if sep == "," and one_column and ";" in str(header.columns[0]) and "\t" not in str(header.columns[0]):
            sep, text_frame = ";", _semicolon_table(path)
        else:
            text_frame = pd.read_csv(path, sep=sep, skip_blank_lines=not one_column, na_values=MISSING_MARKS)
            collapsed = isinstance(text_frame.index, pd.RangeIndex)  # row names 0, 1, 2, ... or none at all
            if one_column and collapsed and (split := _split_numbers_in_one_column(path, sep)) is not None:
                # "0,5", "1,2", "2,7": pandas makes first fields 0, 1, 2, ... a plain row index, so that
                # _without_row_names cannot tell them from rows as long as the header.
                raise _split_numbers(path, split)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path} is empty (no header, no rows)") from None
    except _parse_errors() as err:
        raise _unreadable(path, fmt, err) from None
    _check_separator(text_frame, path)
    _check_header(text_frame, path)
    frame = _without_row_names(text_frame, path, sep)
    # Read again as it was read: _semicolon_table skips blank lines, a one-column file keeps them.
    return _months_read_as_numbers(frame, path, sep, skip_blank_lines=sep == ";" or not one_column)


# Names under which a column of numbers may be months written mm.yyyy, beside the first column of any name.
_MONTH_NAMES = (*TIME_NAMES, "month", "monat", "mois", "mes", "mese", "maand", "periode", "zeitraum")


def _months_read_as_numbers(frame, path: Path, sep: str, skip_blank_lines: bool):
    """``frame`` with its time column of months written mm.yyyy (01.2020, a German export's "MM.JJJJ") as their text.
    pandas reads them as the numbers 1.202, 2.202, ..., 12.2019 (the zeros lost), so the month column was a series
    and the file undated. Only the first column or one under a month or time name, whose every value reads as such
    a month as a number (1 to 12, then a year), is read again as text; it becomes text only when that is mm.yyyy
    months in a plausible monthly sequence (:func:`dotted_months`), so that numbers that only look so stay numbers.
    """
    import pandas as pd

    def maybe_months(position: int, name) -> bool:
        if position and str(name).strip().lower() not in _MONTH_NAMES:
            return False
        column = frame[name]
        if not pd.api.types.is_float_dtype(column) or len(column) < 3 or column.isna().any():
            return False
        month, fraction = np.divmod(column.to_numpy(dtype=np.float64), 1)
        year = fraction * 10000  # 1.202 is 01.2020: the year's four digits, trailing zeros lost
        whole = np.abs(year - np.round(year)) < 1e-6
        return bool(((month >= 1) & (month <= 12) & whole & (year >= 1000) & (year < 3000)).all())

    candidates = [name for position, name in enumerate(frame.columns) if maybe_months(position, name)]
    if not candidates:
        return frame
    try:
        text = pd.read_csv(path, sep=sep, dtype=str, skip_blank_lines=skip_blank_lines, na_values=MISSING_MARKS)
    except _parse_errors():
        return frame
    if text.shape != frame.shape or list(text.columns) != list(frame.columns):  # row names, ...: keep pandas' reading
        return frame
    for name in candidates:
        written = text[name].str.strip()
        if dotted_months(written) is not None:
            logger.info("%s: column %r holds months written mm.yyyy (%s), read as months", path, name, written.iloc[0])
            frame[name] = written.to_numpy()
    return frame


# A number as a ';'-separated file (a European spreadsheet's export) writes it: decimal comma, '.' between thousands.
_COMMA_DECIMAL = r"[-+]?(?:\d{1,3}(?:\.\d{3})+|\d+)(?:,\d+)?"


def _semicolon_table(path: Path):
    """A ';'-separated file, its columns of decimal-comma numbers ("1.234,5") read as numbers. They were refused
    ("save it comma-separated"), with no way to read them but re-saving the file. A column is read so only when one
    of its values has a decimal comma and all are such numbers; otherwise pandas' own reading stands ('.'
    decimals, dates such as 31.12.2020, text)."""
    import pandas as pd

    frame = pd.read_csv(path, sep=";", dtype=str, na_values=MISSING_MARKS)

    def comma_decimal(given) -> bool:
        return bool(len(given)) and bool(given.str.fullmatch(_COMMA_DECIMAL).all())

    texts = {name: frame[name].str.strip() for name in frame.columns}
    decimal = {name: comma_decimal(text.dropna()) for name, text in texts.items()}  # "1.234,5" or "1.234" or "12"
    # Where one column writes decimal commas, '.' is the thousands separator of every column: "1.020" beside
    # "9,50" is one thousand and twenty (it was read as 1.02).
    commas = any(decimal[name] and text.str.contains(",", regex=False).any() for name, text in texts.items())
    for name, text in texts.items():
        given = text.dropna()
        if decimal[name] and commas:
            frame[name] = pd.to_numeric(text.str.replace(".", "", regex=False).str.replace(",", ".", regex=False))
        else:
            numbers = pd.to_numeric(given, errors="coerce")
            if len(given) and numbers.notna().all():
                frame[name] = pd.to_numeric(text)
    logger.info("%s: read as ';'-separated (a decimal comma where a column has one)", path)
    return frame


def _split_numbers(path: Path, line: str) -> ValueError:
    return ValueError(
        f"{path}: data rows hold one field more than the header, and each is two whole numbers joined by a comma "
        f"({line!r}): numbers written with decimal commas (or thousands separators) split in two; save it with '.' "
        "decimals and no thousands separators (12.5, 1234)"
    )


def _split_numbers_in_one_column(path: Path, sep: str) -> str | None:
    """The first line of a one-column file whose every data line is two whole numbers joined by ``sep`` without
    quotes (``101,3`` under ``Wert``): numbers written with a decimal comma (or thousands separators) split in
    two. pandas took the digits before the comma for R's row names when they increased, and the digits after it for
    the values. R quotes its row names (``"1",5``); None for any other file."""
    import pandas as pd

    lines = _first_lines(path, 3)
    if sep != "," or not lines or len(lines) < 2 or not re.fullmatch(r"[-+]?\d+,\d+", lines[1].strip()):
        return None  # the first data line tells most files apart without reading them twice
    try:
        raw = pd.read_csv(path, sep="\x1f", dtype=str, quoting=3)  # each line whole, quotes kept
    except _parse_errors():
        return None
    given = raw.iloc[:, 0].dropna().str.strip() if raw.shape[1] == 1 else raw.iloc[:0, 0]
    return given.iloc[0] if len(given) and given.str.fullmatch(r"[-+]?\d+,\d+").all() else None


def _read_parquet(path: Path):
    import pandas as pd

    from ..extras import missing

    try:
        import pyarrow  # noqa: F401  (pandas' own message spans several lines, names two engines and hides why)
    except ImportError as err:  # an old pyarrow built for numpy 1 imports and fails under numpy 2
        raise missing("pyarrow", f"reading {path} (parquet, or convert it to CSV)", err) from None
    try:
        return pd.read_parquet(path)
    except ImportError as err:  # a pyarrow older than pandas wants, say: its first line says which
        lines = str(err).strip().splitlines()
        raise ImportError(f"reading {path} (parquet): {lines[0] if lines else type(err).__name__}") from None


def _index_as_column(df):
    """A parquet file keeps the index it was saved with. A named one (``df.set_index('unique_id').to_parquet()``)
    is a column of the table put aside, and comes back as one so that ids and dates are found; an unnamed index
    (row numbers) is no data, and a MultiIndex is an sktime panel, read as such."""
    if df.index.nlevels == 1 and df.index.name is not None and df.index.name not in df.columns:
        return df.reset_index()
    return df


# A file with another separator, read with ',', is one column named after its whole header: what the mark in that
# name says, and the fix.
_OTHER_SEPARATORS = {
    ";": ("';'-separated", "save it comma-separated with '.' decimals"),
    "\t": ("tab-separated", "name it .tsv or save it comma-separated"),
}


def _check_separator(df, path: Path) -> None:
    if df.shape[1] != 1:
        return
    name = str(df.columns[0])
    for mark, (what, fix) in _OTHER_SEPARATORS.items():
        if mark in name:
            raise ValueError(f"{path} looks {what} (its one column is named {name[:60]!r}); {fix}")


def _check_header(df, path: Path) -> None:
    """Refuse a file whose first line is data: pandas takes it for the header and silently reads one row fewer.

    Only a date followed by numbers is taken for a data row: numbers alone are as often a wide table's series ids
    (``1001,1002,1003``), and any other text is a header."""
    import pandas as pd

    names = [str(name) for name in df.columns]
    if len(names) < 2 or not all(_is_number(name) for name in names[1:]):
        return
    if reads_as_dates(pd.Series(names[:1])):
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        header = "date,value" if len(names) == 2 else "date,value1,value2" + (",..." if len(names) > 3 else "")
        raise ValueError(
            f"{path} looks like it has no header row (its first line {shown} is data); add a header such as {header}"
        )


def _is_number(name: str) -> bool:
    # pandas renames a repeated header name: the second '100.0' becomes '100.0.1'.
    for text in (name, name.rsplit(".", 1)[0]):
        try:
            float(text)
            return True
        except ValueError:
            pass
    return False


def _without_row_names(df, path: Path, sep: str = ","):
    """The frame with the row index pandas inferred dropped, or an error when that index is data.

    Data rows with one field more than the header make pandas take the first field as the row index. R's
    ``write.table`` writes row names so: a counter (1, 2, 3, ...; increasing with gaps after ``subset()``) or
    distinct text such as dates or names, which are no data. Anything else, integers out of order or repeated,
    or decimals, means the fields were split where they should not be (``12,5`` read as 12 and 5: decimal commas,
    or a ';'-separated file whose values hold commas) and the values are wrong: refusing beats training on the
    digits after the comma. Text or dates in the first field under a header that starts with a time column are
    split values too: ``date,sales`` over ``2023-01-01,100,5`` is ``100,5`` split in two, where R's row names
    would leave that column its own times.
    """
    import pandas as pd

    if df.index.equals(pd.RangeIndex(len(df))):  # every row as long as the header: nothing was taken as row names
        return df
    if _ends_in_a_delimiter(df, path, sep):
        shifted = df.reset_index().iloc[:, :-1]  # the fields where the header puts them, without the empty last one
        shifted.columns = df.columns
        return shifted
    first = ", ".join(map(str, df.index[:3]))
    if _times_pushed_into_row_names(df):
        raise ValueError(
            f"{path}: data rows hold one field more than the header, and the first fields ({first}, ...) stand "
            f"where the header puts its time column {str(df.columns[0])!r}, which holds numbers instead: values were "
            "split in two. Is the file ';'-separated or written with decimal commas? Save it comma-separated with '.' "
            "decimals (if the first fields are row names, give their column a header name)"
        )
    if _looks_like_row_names(df.index):
        split = _split_numbers_in_one_column(path, sep) if df.shape[1] == 1 else None
        if split is not None:  # an increasing counter by chance: the integer parts of a rising series
            raise _split_numbers(path, split)
        return df.reset_index(drop=True)
    raise ValueError(
        f"{path}: data rows hold one field more than the header, and the first fields ({first}"
        ", ...) are not row names (an increasing counter or distinct labels): is the file ';'-separated or written "
        "with decimal commas? Save it comma-separated with '.' decimals, or give the first column a header name"
    )


def _ends_in_a_delimiter(df, path: Path, sep: str) -> bool:
    """Whether every data row ends in a separator the header lacks (``2023-01-01,100,7,`` under ``date,sales,store``,
    as some exports write them): its empty last field made pandas take the first one as a row name. Read off the
    file's first lines: R's row names beside an empty last column (written ``NA``) look the same in the frame."""
    if not len(df) or not df.iloc[:, -1].isna().all():
        return False
    lines = _first_lines(path, 6)
    if lines is None or len(lines) < 2:
        return False
    header, rows = lines[0], [line for line in lines[1:] if line]
    return bool(rows) and not header.endswith(sep) and all(line.endswith(sep) for line in rows)


def _first_lines(path: Path, count: int) -> list[str] | None:
    """The first ``count`` lines of a text file, compressed or not (by its suffix), without line ends; None when
    it cannot be read so (the caller then keeps to what pandas read)."""
    import bz2
    import gzip
    import itertools
    import lzma

    openers = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
    opener = openers.get(path.suffix.lower(), open)
    if path.suffix.lower() == ".zst":
        return None
    try:
        with opener(path, "rt", encoding="utf-8-sig", errors="replace") as f:
            return [line.rstrip("\r\n") for line in itertools.islice(f, count)]
    except OSError:
        return None


def _times_pushed_into_row_names(df) -> bool:
    """Whether the header starts with a time column whose values moved into the row index, the column under its
    name holding numbers: the first fields are text or yyyymmdd dates. R writes a counter as row names beside such
    a column; its text row names (``as.data.frame`` of an xts series) come under a header of series names."""
    import pandas as pd

    time_name = str(df.columns[0]).strip().lower()
    if time_name not in TIME_NAMES or not pd.api.types.is_numeric_dtype(df.iloc[:, 0]):
        return False
    labels = pd.Series(df.index)
    return not pd.api.types.is_numeric_dtype(labels) or reads_as_dates(labels)


def _looks_like_row_names(index) -> bool:
    import pandas as pd

    if index.nlevels != 1 or not index.is_unique:
        return False
    if pd.api.types.is_integer_dtype(index):
        return bool(index.is_monotonic_increasing)
    return not pd.api.types.is_numeric_dtype(index)


def read_numpy(path: Path, fmt: str, compressed: bool) -> list[tuple[str, np.ndarray]]:
    """(key, array) pairs: one for a .npy (memory-mapped), one per array of a .npz."""
    if compressed:
        raise ValueError(f"{path}: decompress numpy files first (np.load cannot memory-map them)")
    try:
        if fmt == ".npy":
            return [("", np.load(path, mmap_mode="r", allow_pickle=False))]
        with np.load(path, allow_pickle=False) as npz:
            arrays = [(k, npz[k]) for k in npz.files]
    except _UNREADABLE as err:  # before ValueError: UnicodeDecodeError is one
        raise _unreadable(path, fmt, err) from None
    except ValueError as err:
        raise ValueError(f"{path}: not a readable numeric numpy file ({err})") from None
    if not arrays:
        raise ValueError(f"{path} holds no arrays")
    return arrays


def _open_text(path: Path, compressed: bool):
    if compressed and path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    if compressed:
        raise ValueError(f"{path}: only .gz compression is supported for json files")
    return open(path, encoding="utf-8")


def _record_values(rec: Any, where: str) -> np.ndarray:
    if isinstance(rec, dict):
        for key in ("sequence", "target"):
            if key in rec:
                rec = rec[key]
                break
        else:
            raise ValueError(f"{where}: record has neither 'sequence' nor 'target' (keys: {sorted(rec)[:8]})")
    if not isinstance(rec, list):
        raise ValueError(f"{where}: expected a list of numbers, got {type(rec).__name__}")
    try:
        return np.array([np.nan if v is None else v for v in rec], dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: values are not all numbers or null") from None


def _is_number_or_null(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def read_json(path: Path, fmt: str, compressed: bool) -> list[np.ndarray]:
    try:
        series = _read_json_series(path, fmt, compressed)
    except _UNREADABLE as err:  # a damaged or cut-short .gz, text not in UTF-8
        raise _unreadable(path, fmt, err) from None
    if not series:
        raise ValueError(f"{path} holds no series")
    return series


def _read_json_series(path: Path, fmt: str, compressed: bool) -> list[np.ndarray]:
    series = []
    with _open_text(path, compressed) as fh:
        if fmt == ".json":
            try:
                data = json.load(fh)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} is not valid JSON ({err})") from None
            records = data if isinstance(data, list) else [data]
            if records and all(_is_number_or_null(v) for v in records):
                records = [records]  # a flat list of numbers is one series, not one series per number
            series = [_record_values(r, f"{path} item {k}") for k, r in enumerate(records)]
        else:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path} line {lineno} is not valid JSON ({err})") from None
                series.append(_record_values(rec, f"{path} line {lineno}"))
    return series
