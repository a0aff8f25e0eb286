"""File readers for the text and numpy formats: each returns plain arrays, wrapped into sources by ``sources.py``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np

from .frames import frame_to_series


def read_table(path: Path, fmt: str, opts: dict) -> list[np.ndarray]:
    series, _ = frame_to_series(read_frame(path, fmt), str(path), **opts)
    return series


def read_frame(path: Path, fmt: str):
    """The DataFrame of a CSV, TSV or parquet file (``fmt``: its suffix, without a compression suffix)."""
    import pandas as pd

    if fmt in (".parquet", ".pq"):
        try:
            df = pd.read_parquet(path)
        except ImportError:  # pandas' own message spans several lines and names two engines
            raise ImportError(
                f"reading {path} (parquet) needs the optional package pyarrow, which is not installed: "
                "pip install pyarrow (or convert the file to CSV)"
            ) from None
        df = _index_as_column(df)
    else:
        try:
            df = pd.read_csv(path, sep="\t" if fmt == ".tsv" else ",")
        except pd.errors.EmptyDataError:
            raise ValueError(f"{path} is empty (no header, no rows)") from None
        _check_separator(df, path)
        df = _without_row_names(df, path)
    return df


def _index_as_column(df):
    """A parquet file keeps the index it was saved with. A named one (``df.set_index('unique_id').to_parquet()``)
    is a column of the table put aside, and comes back as one so that ids and dates are found; an unnamed index
    (row numbers) is no data, and a MultiIndex is an sktime panel, read as such."""
    if df.index.nlevels == 1 and df.index.name is not None and df.index.name not in df.columns:
        return df.reset_index()
    return df


def _check_separator(df, path: Path) -> None:
    if df.shape[1] == 1 and ";" in str(df.columns[0]):
        raise ValueError(
            f"{path} looks ';'-separated (its one column is named {str(df.columns[0])[:60]!r}); "
            "save it comma-separated with '.' decimals"
        )


def _without_row_names(df, path: Path):
    """The frame with the row index pandas inferred dropped, or an error when that index is data.

    Data rows with one field more than the header make pandas take the first field as the row index. R's
    ``write.table`` writes row names so (1, 2, 3, ...), which are no data. Anything else means the fields were
    split where they should not be (``12,5`` read as 12 and 5: decimal commas, or a ';'-separated file whose
    values hold commas) and the values are wrong: refusing beats training on the digits after the comma.
    """
    if _is_row_counter(df.index):
        return df.reset_index(drop=True)
    raise ValueError(
        f"{path}: data rows hold more fields than the header (the first field, e.g. {df.index[0]}, would be "
        "taken as row labels); is the file ';'-separated or written with decimal commas? Save it "
        "comma-separated with '.' decimals, or give the first column a header name"
    )


def _is_row_counter(index) -> bool:
    import pandas as pd

    if index.nlevels != 1 or not pd.api.types.is_integer_dtype(index):
        return False
    values = index.to_numpy()
    return any(np.array_equal(values, np.arange(start, start + len(values))) for start in (0, 1))


def read_numpy(path: Path, fmt: str, compressed: bool) -> list[tuple[str, np.ndarray]]:
    """(key, array) pairs: one for a .npy (memory-mapped), one per array of a .npz."""
    if compressed:
        raise ValueError(f"{path}: decompress numpy files first (np.load cannot memory-map them)")
    try:
        if fmt == ".npy":
            return [("", np.load(path, mmap_mode="r", allow_pickle=False))]
        with np.load(path, allow_pickle=False) as npz:
            arrays = [(k, npz[k]) for k in npz.files]
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
    if not series:
        raise ValueError(f"{path} holds no series")
    return series
