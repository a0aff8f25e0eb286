"""The Time-300B binary layout: a folder with ``meta.json`` and raw ``data-{i}-of-{n}.bin`` files, memory-mapped."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .frames import frame_to_series
from .sources import META_FILE, SeriesSource, as_float_series


class BinarySource(SeriesSource):
    """The Time-300B binary layout, memory-mapped.

    ``folder/meta.json`` = ``{num_sequences, dtype, files: {name: num_points}, scales: [{offset, length[,
    mean, std]}]}``; the ``.bin`` files hold raw values of ``dtype``. Offsets index the concatenation of the
    files sorted by name (as the official reader does; :func:`write_binary_dataset` writes ``files`` in
    that order). When ``mean``/``std`` are given the stored values are standardised and
    ``x * std + mean`` is returned.
    """

    def __init__(self, folder: str | Path, name: str | None = None) -> None:
        self.folder = Path(folder)
        self.name = name or self.folder.name
        meta = _read_meta(self.folder)
        try:
            self.dtype = np.dtype(meta["dtype"])
        except TypeError:
            raise ValueError(f"{self.folder / META_FILE}: unknown dtype {meta['dtype']!r}") from None
        if self.dtype.kind not in "iuf":
            raise ValueError(f"{self.folder / META_FILE}: dtype {self.dtype} is not a real numeric type")
        where = self.folder / META_FILE
        files = sorted(meta["files"].items())
        self._file_paths = [self.folder / fn for fn, _ in files]
        self._file_points = _whole_numbers([n for _, n in files], where, "'files'")
        self._file_starts = np.concatenate([[0], np.cumsum(self._file_points)])
        for path, n in zip(self._file_paths, self._file_points):
            _check_bin_file(path, int(n), self.dtype)
        num_sequences = int(_whole_numbers([meta["num_sequences"]], where, "num_sequences")[0])
        if len(meta["scales"]) != num_sequences:
            raise ValueError(
                f"{where}: num_sequences is {num_sequences} but scales has {len(meta['scales'])} entries; "
                "regenerate meta.json"
            )
        self._offsets, self._lengths, self._means, self._stds = _read_scales(meta["scales"], where)
        total = int(self._file_starts[-1])
        bad = (self._offsets < 0) | (self._lengths < 0) | (self._offsets + self._lengths > total)
        if bad.any():
            k = int(np.argmax(bad))
            raise ValueError(
                f"{self.folder / META_FILE}: sequence {k} (offset {self._offsets[k]}, length {self._lengths[k]}) "
                f"lies outside the {total} points the .bin files hold; the data is truncated or meta.json is wrong"
            )
        self._maps: list[np.memmap | None] = [None] * len(self._file_paths)

    def __getstate__(self) -> dict:
        # Memmaps would be pickled by value; DataLoader workers reopen the files instead.
        state = self.__dict__.copy()
        state["_maps"] = [None] * len(self._file_paths)
        return state

    def _map(self, k: int) -> np.memmap:
        if self._maps[k] is None:
            n = int(self._file_points[k])
            self._maps[k] = np.memmap(self._file_paths[k], dtype=self.dtype, mode="r", shape=(n,))
        return self._maps[k]

    def __len__(self) -> int:
        return int(self._offsets.shape[0])

    def length(self, i: int) -> int:
        return int(self._lengths[self._check_index(i)])

    def lengths(self) -> np.ndarray:
        return self._lengths

    def __getitem__(self, i: int) -> np.ndarray:
        i = self._check_index(i)
        return self.read(i, 0, int(self._lengths[i]))

    def read(self, i: int, start: int, stop: int) -> np.ndarray:
        i = self._check_index(i)
        length = int(self._lengths[i])
        start, stop, _ = slice(start, stop).indices(length)
        start, stop = int(self._offsets[i]) + start, int(self._offsets[i]) + max(start, stop)
        parts = []
        k = int(np.searchsorted(self._file_starts, start, side="right")) - 1
        while start < stop:
            file_start, file_stop = int(self._file_starts[k]), int(self._file_starts[k + 1])
            take = min(stop, file_stop)
            if take > start:
                parts.append(self._map(k)[start - file_start : take - file_start])
            start = max(start, take)
            k += 1
        out = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
        mean, std = self._means[i], self._stds[i]
        if np.isfinite(mean) and np.isfinite(std):
            out = (out.astype(np.float64) * std + mean).astype(np.float32)
        return out


def _read_meta(folder: Path) -> dict:
    path = folder / META_FILE
    if not path.is_file():
        raise ValueError(f"{folder} is not a binary dataset: {META_FILE} is missing")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); regenerate it with write_binary_dataset") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object")
    missing = [k for k in ("num_sequences", "dtype", "files", "scales") if k not in meta]
    if missing:
        raise ValueError(f"{path} lacks the keys {missing}; expected num_sequences, dtype, files, scales")
    if not isinstance(meta["files"], dict) or not isinstance(meta["scales"], list):
        raise ValueError(f"{path}: 'files' must map file names to point counts and 'scales' must be a list")
    return meta


def _read_scales(scales: list, where: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Offsets and lengths (int64) and means and stds (float64, NaN where absent) of meta.json's ``scales``."""
    try:
        offsets, lengths = [s["offset"] for s in scales], [s["length"] for s in scales]
        means, stds = [s.get("mean") for s in scales], [s.get("std") for s in scales]
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{where}: every entry of scales needs integer 'offset' and 'length' ({err})") from None
    return (
        _whole_numbers(offsets, where, "'offset' in scales"),
        _whole_numbers(lengths, where, "'length' in scales"),
        _real_numbers(means, where, "'mean' in scales"),
        _real_numbers(stds, where, "'std' in scales"),
    )


def _whole_numbers(values: list, where: Path, what: str) -> np.ndarray:
    """JSON numbers as int64, or an error naming the file: text, null and fractions (an offset of 1.5 would be cut
    to 1 and read the wrong points) are refused, as are negative counts."""
    array = _as_array(values)
    if array is not None and array.dtype.kind == "f" and np.isfinite(array).all() and (array == np.round(array)).all():
        array = array.astype(np.int64)
    if array is None or array.dtype.kind not in "iu":
        bad = next((v for v in values if not _is_whole_number(v)), "a number beyond int64")
        raise ValueError(f"{where}: {what} holds {bad!r}, not a whole number; regenerate meta.json")
    if (array < 0).any():
        raise ValueError(f"{where}: {what} holds {int(array.min())}, a negative number; regenerate meta.json")
    return array.astype(np.int64)


def _real_numbers(values: list, where: Path, what: str) -> np.ndarray:
    """JSON numbers or nulls (absent: NaN) as float64, or an error naming the file."""
    array = _as_array([np.nan if v is None else v for v in values])
    if array is None or array.dtype.kind not in "iuf":
        bad = next(v for v in values if v is not None and not _is_real_number(v))
        raise ValueError(f"{where}: {what} holds {bad!r}, not a number (or null); regenerate meta.json")
    return array.astype(np.float64)


def _as_array(values: list) -> np.ndarray | None:
    """``values`` as a 1-D numpy array of numpy's choosing, or None if they do not make one (nested lists)."""
    if not values:
        return np.zeros(0, dtype=np.int64)
    try:
        array = np.array(values)
    except (ValueError, TypeError):
        return None
    return array if array.ndim == 1 else None


def _is_real_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_whole_number(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()  # False for inf and NaN too
    return isinstance(value, int) and not isinstance(value, bool)


def _check_bin_file(path: Path, num_points: int, dtype: np.dtype) -> None:
    if not path.is_file():
        raise ValueError(f"binary dataset file {path} listed in {META_FILE} is missing")
    need = num_points * dtype.itemsize
    have = path.stat().st_size
    if have < need:
        raise ValueError(
            f"{path} is truncated: {have} bytes but {META_FILE} says {num_points} {dtype} points ({need} bytes)"
        )


def _check_storable_as_integers(x: np.ndarray, dtype: np.dtype, name: str, standardised: bool) -> None:
    """Refuse values an integer dtype would silently change. A cast turns NaN/inf into the dtype's minimum
    (-2147483648 for int32), which readers then return, and the sampler trains on, as an ordinary value (it
    splits series only at NaN/inf); values out of range wrap around, and fractions are cut off."""
    hint = "write it with dtype='float32' (or 'float16')"
    bad = ~np.isfinite(x)
    if bad.any():
        raise ValueError(
            f"{name} holds {int(bad.sum())} NaN/inf value(s), which integer dtype {dtype.name} cannot store (the cast "
            f"would turn them into {np.iinfo(dtype).min}, trained on as data); {hint}, which keeps gaps as NaN, or "
            "split the series at its non-finite values and write the pieces"
        )
    info = np.iinfo(dtype)
    if x.size and (x.min() < info.min or x.max() > info.max):
        raise ValueError(
            f"{name} holds values from {x.min()} to {x.max()}, outside the range of {dtype.name} "
            f"[{info.min}, {info.max}]; {hint}"
        )
    if not np.array_equal(x, np.round(x)):
        cause = " (standardise=True makes them)" if standardised else ""
        raise ValueError(f"{name} holds non-whole values{cause} that {dtype.name} would cut off; {hint}")


def _check_in_float_range(x: np.ndarray, dtype: np.dtype, name: str) -> None:
    """float16 tops out at 65504: larger values would be stored as inf, which training skips as missing."""
    biggest = float(np.finfo(dtype).max)
    finite = x[np.isfinite(x)]
    largest = float(np.abs(finite).max()) if finite.size else 0.0
    if largest > biggest:
        raise ValueError(
            f"{name} holds values up to {largest:.6g}, beyond {dtype.name}'s largest {biggest:.6g} "
            "(they would be stored as inf); pass standardise=True, or a wider dtype such as float32"
        )


# Rounding may cost at most this share of a series' standard deviation (root-mean-square error). float16 keeps
# 11 significant bits, so a series that varies little around a large level (290.1-290.3 K, spacing 0.25
# there) would be stored flat; 1% leaves the shape intact while letting any standardised series through.
MAX_ROUNDING_SHARE = 0.01


def _check_precision_kept(x: np.ndarray, stored: np.ndarray, name: str) -> None:
    """Refuse a float dtype too coarse for the series: its variation would drown in rounding steps."""
    finite = np.isfinite(x)
    if finite.sum() < 2:
        return
    values = x[finite]
    spread = float(values.std())
    if spread == 0.0:
        return  # a constant stays constant whatever the rounding
    error = float(np.sqrt(np.mean((stored[finite].astype(np.float64) - values) ** 2)))
    if error > MAX_ROUNDING_SHARE * spread:
        raise ValueError(
            f"{name} would lose its shape in {stored.dtype.name}: rounding errors of {error:.3g} (root mean square) "
            f"against a standard deviation of {spread:.3g}; pass standardise=True, or a wider dtype such as float32"
        )


def _as_series_list(series: Any) -> Any:
    """The series of what open_source accepts in memory: a 1-D array is one series, a 2-D array's rows are series,
    a pandas Series or DataFrame reads as open_source reads it (wide, long or panel), a flat list of numbers is one
    series; anything else is iterated as series."""
    import pandas as pd

    if isinstance(series, np.ndarray) and series.dtype != object:
        if series.ndim == 1:
            return [series]
        if series.ndim == 2:
            return list(series)
        raise ValueError(
            f"write_binary_dataset: arrays must be 1-D (one series) or 2-D (rows are series), got shape {series.shape}"
        )
    if isinstance(series, (pd.Series, pd.DataFrame)):
        return frame_to_series(series, "write_binary_dataset", dtype=np.float64)[0]
    if isinstance(series, (list, tuple)) and series and all(np.isscalar(v) for v in series):
        return [series]
    if not isinstance(series, Iterable):
        raise TypeError(
            f"write_binary_dataset: expected a list of 1-D arrays, an array, a pandas Series or DataFrame or a "
            f"SeriesSource, got {type(series).__name__}"
        )
    return series


def write_binary_dataset(
    series: Any,
    folder: str | Path,
    dtype: str = "float32",
    num_files: int = 1,
    standardise: bool = False,
) -> Path:
    """Write series in the Time-300B binary layout (``meta.json`` + ``data-{i}-of-{n}.bin``).

    ``series``: a list of 1-D arrays, a SeriesSource, or what :func:`open_source` takes in memory (a 1-D array is one
    series, a 2-D array's rows are series, a pandas Series or DataFrame).

    With ``standardise=True`` each series is stored standardised and its mean/std go to ``scales``
    (readers return the original values). Returns the folder.
    """
    folder = Path(folder)
    np_dtype = np.dtype(dtype)
    if num_files < 1:
        raise ValueError(f"num_files must be >= 1, got {num_files}")
    if np_dtype.kind not in "iuf":
        raise ValueError(f"dtype must be a float or integer type, got {np_dtype.name}")
    # The series go one at a time to a scratch file in the folder (on its file system, whatever is mounted where),
    # which is cut into the dataset's files only once every series is known to fit the dtype. Holding them all, then
    # their concatenation, took twice the data in RAM. A failed write removes what it created.
    created = _first_missing(folder)
    folder.mkdir(parents=True, exist_ok=True)
    whole = folder / SCRATCH_FILE
    try:
        scales = _write_series(_as_series_list(series), whole, np_dtype, standardise)
        total = sum(entry["length"] for entry in scales)
        files = _split_into_files(whole, folder, np_dtype, total, num_files)
    except BaseException:
        whole.unlink(missing_ok=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    meta = {"num_sequences": len(scales), "dtype": np_dtype.name, "files": files, "scales": scales}
    (folder / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return folder


# Where write_binary_dataset gathers the series; hidden, so that readers of the folder skip one a killed write left
# (the next write into the folder replaces it).
SCRATCH_FILE = ".write_binary_dataset.partial"


def _first_missing(folder: Path) -> Path | None:
    """The topmost folder of ``folder``'s path that does not exist yet (what making it creates), or None."""
    missing = None
    for path in (folder.absolute(), *folder.absolute().parents):
        if path.exists():
            return missing
        missing = path
    return missing


def _write_series(series: Iterable, path: Path, np_dtype: np.dtype, standardise: bool) -> list[dict[str, Any]]:
    """Append each series, checked and converted to ``np_dtype``, to ``path``; their ``scales`` entries."""
    scales: list[dict[str, Any]] = []
    offset = 0
    with open(path, "wb") as out:
        for k, s in enumerate(series):
            # Straight to float64, never through float32: int32 16777217 or float64 1e39 must reach the dtype checks
            # as they are (float32 made them 16777216 and inf).
            x = as_float_series(s, f"series {k}", dtype=np.float64)
            entry: dict[str, Any] = {"offset": offset, "length": int(x.shape[0])}
            if standardise:
                finite = x[np.isfinite(x)]
                mean = float(finite.mean()) if finite.size else 0.0
                std = float(finite.std()) if finite.size else 1.0
                std = std if std > 0 else 1.0
                x = (x - mean) / std
                entry.update(mean=mean, std=std)
            if np_dtype.kind in "iu":
                _check_storable_as_integers(x, np_dtype, f"series {k}", standardise)
            else:
                _check_in_float_range(x, np_dtype, f"series {k}")
            stored = x.astype(np_dtype)
            if np_dtype.kind == "f" and np_dtype.itemsize < 4:
                # float16 only: sources hand series to training as float32 whatever the file holds, so a series that
                # float32 flattens is flattened on reading too (the trainer's data path works in float32).
                _check_precision_kept(x, stored, f"series {k}")
            stored.tofile(out)
            scales.append(entry)
            offset += int(x.shape[0])
    return scales


# Bytes copied at a time when the scratch file is cut into the dataset's files.
COPY_BLOCK = 1 << 26


def _split_into_files(whole: Path, folder: Path, np_dtype: np.dtype, total: int, num_files: int) -> dict[str, int]:
    """Cut the ``total`` values of ``whole`` into ``num_files`` files of ``folder``; {file name: values}. The files
    are cut from the end, the scratch file shortened after each, so that the disk holds the data about once."""
    names = sorted(f"data-{i + 1}-of-{num_files}.bin" for i in range(num_files))
    bounds = np.linspace(0, total, num_files + 1).astype(np.int64) * np_dtype.itemsize
    with open(whole, "r+b") as source:
        for name, lo, hi in reversed(list(zip(names[1:], bounds[1:-1], bounds[2:]))):
            source.seek(int(lo))
            with open(folder / name, "wb") as out:
                for _ in range(int(lo), int(hi), COPY_BLOCK):
                    out.write(source.read(min(COPY_BLOCK, int(hi) - source.tell())))
            source.truncate(int(lo))
    os.replace(whole, folder / names[0])
    return {name: int(hi - lo) // np_dtype.itemsize for name, lo, hi in zip(names, bounds[:-1], bounds[1:])}
