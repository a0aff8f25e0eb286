"""Series sources: every supported format behind one small interface.

A :class:`SeriesSource` is a sized, indexable collection of 1-D float32 series (NaN allowed: the
sampler splits at non-finite runs). :func:`open_source` turns a path, a comma-separated list of paths,
an array, a list of arrays or a pandas object into one. Large corpora should use the Time-300B binary
layout (:class:`BinarySource`), which is memory-mapped and never loaded into RAM; the text formats
(CSV, jsonl) are read whole and suit small and medium data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .frames import frame_to_series

logger = logging.getLogger(__name__)

META_FILE = "meta.json"  # marks a binary-dataset folder (binary.py)
TABULAR_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
ARRAY_SUFFIXES = (".npy", ".npz")
JSON_SUFFIXES = (".jsonl", ".json")
COMPRESSED = (".gz", ".bz2", ".xz", ".zst")


class SeriesSource:
    """A sized collection of 1-D series: ``len(src)``, ``src[i] -> float32 [n]`` (may hold NaN), ``.name``.

    ``weight`` (optional) is the default mixture weight the sampler gives this source;
    ``filter_low_quality`` says whether the sampler's quality filter applies to it.
    """

    name: str = "source"
    weight: float | None = None
    filter_low_quality: bool = True

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def length(self, i: int) -> int:
        """Number of points of series ``i`` (subclasses answer without reading the values)."""
        return int(self[i].shape[0])

    def read(self, i: int, start: int, stop: int) -> np.ndarray:
        """Points ``start:stop`` of series ``i`` as float32 (subclasses read only those: the sampler's windows of a
        series of 10 million points read the whole series for each window before)."""
        return self[i][start:stop]

    def lengths(self) -> np.ndarray | None:
        """Lengths of all series as int64 [len(self)] when cheap to know, else None (sampled uniformly)."""
        return None

    def wants_quality_filter(self, i: int) -> bool:
        return self.filter_low_quality

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def _check_index(self, i: int) -> int:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"series index {i} out of range for source {self.name!r} with {n} series")
        return i

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, num_series={len(self)})"


def as_float_series(x: Any, what: str, dtype: Any = np.float32) -> np.ndarray:
    """``x`` as a 1-D array of ``dtype``, or a clear error saying what it is instead."""
    try:
        arr = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} is not numeric ({err}); convert it to floats first") from None
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    return arr


class ArraySource(SeriesSource):
    """In-memory series: a list of 1-D arrays of any lengths."""

    def __init__(self, series: Sequence[Any], name: str = "arrays") -> None:
        self.name = name
        self._series = [as_float_series(s, f"series {k} of {name!r}") for k, s in enumerate(series)]
        if not self._series:
            raise ValueError(f"source {name!r} holds no series")
        self._finite = np.array([np.count_nonzero(np.isfinite(s)) for s in self._series], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._series)

    def __getitem__(self, i: int) -> np.ndarray:
        return self._series[self._check_index(i)]

    def length(self, i: int) -> int:
        return int(self._series[self._check_index(i)].shape[0])

    def lengths(self) -> np.ndarray:
        """Finite points per series: the NaN padding of a wide table's shorter columns drew their windows as if they
        were as long as the longest (a 200-point column beside a 100,000-point one got half of the windows)."""
        return self._finite


# Values counted at a time when a matrix source counts its finite points (bounds the temporary arrays to ~100 MB).
COUNT_BLOCK = 1 << 24


class MatrixSource(SeriesSource):
    """Rows of a 2-D array (possibly a read-only memmap from ``np.load(mmap_mode='r')``) as series.

    ``path``: the .npy file ``matrix`` maps whole (reshaped at most), which a pickled source (the data worker's) maps
    again instead of carrying the values."""

    def __init__(self, matrix: np.ndarray, name: str = "matrix", path: str | Path | None = None) -> None:
        if matrix.ndim != 2:
            raise ValueError(f"{name!r}: expected a 2-D array (rows are series), got shape {matrix.shape}")
        if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(matrix.dtype, np.complexfloating):
            raise TypeError(f"{name!r}: array dtype {matrix.dtype} is not real-valued numeric")
        if matrix.shape[0] == 0 or matrix.shape[1] == 0:
            raise ValueError(f"{name!r}: array of shape {matrix.shape} holds no data")
        self.name = name
        self._matrix = matrix
        self._path = None if path is None else Path(path)
        self._finite: np.ndarray | None = None  # see lengths()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self._path is not None:
            state["_matrix"] = self._matrix.shape
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._path is not None:
            self._matrix = np.load(self._path, mmap_mode="r", allow_pickle=False).reshape(state["_matrix"])

    def __len__(self) -> int:
        return int(self._matrix.shape[0])

    def __getitem__(self, i: int) -> np.ndarray:
        return self.read(i, 0, self._matrix.shape[1])

    def read(self, i: int, start: int, stop: int) -> np.ndarray:
        with np.errstate(over="ignore"):  # float64 values beyond float32's range are inf, split off as non-finite
            return np.asarray(self._matrix[self._check_index(i), start:stop], dtype=np.float32)

    def length(self, i: int) -> int:
        self._check_index(i)
        return int(self._matrix.shape[1])

    def lengths(self) -> np.ndarray:
        """Finite points per row (rows of unequal series are NaN-padded), counted once in blocks of at most
        COUNT_BLOCK values: a memory-mapped file is read through once, not loaded."""
        if self._finite is None:
            rows, cols = self._matrix.shape
            row_block = max(1, COUNT_BLOCK // cols)
            col_block = min(cols, COUNT_BLOCK)  # one long row (a 1-D file) is counted in pieces too
            counts = np.zeros(rows, dtype=np.int64)
            for a in range(0, rows, row_block):
                for b in range(0, cols, col_block):
                    with np.errstate(over="ignore"):  # as read: float64 values beyond float32's range are inf
                        part = np.asarray(self._matrix[a : a + row_block, b : b + col_block], dtype=np.float32)
                    counts[a : a + row_block] += np.count_nonzero(np.isfinite(part), axis=1)
            self._finite = counts
        return self._finite


class ConcatSource(SeriesSource):
    """Several sources seen as one (series of the first, then of the second, ...)."""

    def __init__(self, sources: Sequence[SeriesSource], name: str | None = None) -> None:
        if not sources:
            raise ValueError("ConcatSource needs at least one source")
        self.sources = list(sources)
        self.name = name or "+".join(s.name for s in self.sources)
        self._ends = np.cumsum([len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self._ends[-1])

    def _locate(self, i: int) -> tuple[SeriesSource, int]:
        i = self._check_index(i)
        k = int(np.searchsorted(self._ends, i, side="right"))
        start = 0 if k == 0 else int(self._ends[k - 1])
        return self.sources[k], i - start

    def __getitem__(self, i: int) -> np.ndarray:
        src, j = self._locate(i)
        return src[j]

    def length(self, i: int) -> int:
        src, j = self._locate(i)
        return src.length(j)

    def read(self, i: int, start: int, stop: int) -> np.ndarray:
        src, j = self._locate(i)
        return src.read(j, start, stop)

    def lengths(self) -> np.ndarray | None:
        parts = [s.lengths() for s in self.sources]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    def wants_quality_filter(self, i: int) -> bool:
        src, j = self._locate(i)
        return src.wants_quality_filter(j)


def finite_runs(x: np.ndarray, min_length: int = 1) -> np.ndarray:
    """(start, stop) of each run of finite values of ``x`` with at least ``min_length`` points: int64 [R, 2]."""
    x = np.asarray(x)
    finite = np.isfinite(x)
    if finite.all():
        runs = np.array([[0, x.shape[0]]], dtype=np.int64)
    else:
        edges = np.diff(np.concatenate([[0], finite.astype(np.int8), [0]]))
        runs = np.stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)], axis=1).astype(np.int64)
    return runs[runs[:, 1] - runs[:, 0] >= min_length]


def split_at_nonfinite(x: np.ndarray, min_length: int = 1) -> list[np.ndarray]:
    """Finite runs of ``x`` (split at NaN/inf) that have at least ``min_length`` points (views, in order)."""
    x = np.asarray(x)
    return [x[a:b] for a, b in finite_runs(x, min_length)]


# open_source -------------------------------------------------------------------------------------
def open_source(spec: Any, **kwargs: Any) -> SeriesSource:
    """Open any supported input as one :class:`SeriesSource`.

    ``spec``: a path (CSV/TSV/parquet, .npy/.npz, .jsonl/.json, a binary-dataset folder, or a folder of
    such files), several paths joined by commas (or as a list of paths), ``"synthetic"``, a numpy array
    (1-D = one series, 2-D = rows are series), a list of arrays, a pandas Series/DataFrame (sktime panels included) or a
    SeriesSource. Options for a path may follow ``#`` as ``key=value`` pairs joined by ``&``, list values
    split by ``;``: ``"m4.csv.gz#orient=rows"``, ``"pm25.csv#exclude=cbwd&weight=2"``.
    Keyword options (tables): ``long``, ``id_col``, ``value_col``, ``time_col``, ``orient`` ("columns" or
    "rows"), ``columns``, ``exclude``; any source: ``name``, ``weight``; synthetic: ``seed`` and the
    :class:`~timemoe_forecaster.data.synthetic.SyntheticSource` options.
    """
    sources = open_sources(spec, **kwargs)
    return sources[0] if len(sources) == 1 else ConcatSource(sources)


def open_sources(spec: Any, **kwargs: Any) -> list[SeriesSource]:
    """Like :func:`open_source` but one source per comma-separated path (for per-source mixture weights)."""
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(item, (str, os.PathLike)) for item in spec):
        # A list of paths, as Python code would pass several: it was read as a list of series ("series 0 of
        # 'list' is not numeric: could not convert string to float: 'a.json'").
        return [source for item in spec for source in open_sources(os.fspath(item), **kwargs)]
    if isinstance(spec, str) and ("," in spec or "#" in spec or spec.startswith("synthetic")):
        if _is_existing_path(spec):  # "sales, 2023.csv", "run#1.csv": a file's own name, not a list or options
            return [_open_one(spec, dict(kwargs))]
        try:
            return [_open_one_string(part.strip(), kwargs) for part in spec.split(",") if part.strip()]
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"{err} (in the spec {spec!r}, ',' separates paths and '#' starts options: a file whose name holds "
                "them opens when it is the whole spec, or through its folder)"
            ) from None
    return [_open_one(spec, dict(kwargs))]


def _is_existing_path(spec: str) -> bool:
    try:
        return Path(spec).expanduser().exists()
    except OSError:  # a name too long for the file system
        return False


def _open_one_string(part: str, kwargs: dict) -> SeriesSource:
    path, _, fragment = part.partition("#")
    opts = dict(kwargs)
    opts.update(_parse_fragment(fragment, part, path))
    return _open_one(path, opts)


_LIST_OPTS = ("columns", "exclude", "kinds")
_FLOAT_LIST_OPTS = ("kind_weights",)
_BOOL_OPTS = ("long",)
_FLOAT_OPTS = ("weight",)
_INT_OPTS = ("seed", "num_series", "min_length", "max_length")
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")
_ANY_SOURCE_OPTS = ("name", "weight")
_TABLE_OPTS = ("long", "id_col", "value_col", "time_col", "orient", "columns", "exclude", *_ANY_SOURCE_OPTS)


def _parse_fragment(fragment: str, part: str, path: str) -> dict:
    kind, accepted = _accepted_options(path)
    opts: dict[str, Any] = {}
    for item in filter(None, fragment.split("&")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"bad option {item!r} in {part!r}: write key=value pairs joined by '&'")
        key = key.strip()
        if key not in accepted:
            raise ValueError(f"unknown option {key!r} in {part!r}; options for {kind}: {', '.join(accepted)}")
        opts[key] = _option_value(key, value, part)
    return opts


def _accepted_options(path: str) -> tuple[str, tuple[str, ...]]:
    """What a spec's path names, in words, and the '#' options that kind of source takes."""
    if path.split(":")[0] == "synthetic":
        import inspect

        from .synthetic import SyntheticSource

        own = tuple(inspect.signature(SyntheticSource).parameters)  # seed, num_series, ..., name
        return "synthetic data", own + tuple(o for o in _ANY_SOURCE_OPTS if o not in own)
    folder = Path(path).expanduser()
    if folder.is_dir():
        if (folder / META_FILE).exists():
            return "a binary dataset", _ANY_SOURCE_OPTS
        return "a folder (they apply to its tables)", _TABLE_OPTS
    fmt = _suffixes(Path(path))[0]
    if fmt in TABULAR_SUFFIXES:
        return "tables (csv, tsv, parquet)", _TABLE_OPTS
    return (f"{fmt} files" if fmt else "this input"), _ANY_SOURCE_OPTS


def _option_value(key: str, value: str, part: str) -> Any:
    """The value of option ``key`` as the source takes it; ``part`` (the whole spec) names it in errors."""
    if key in _LIST_OPTS:
        return [v for v in value.split(";") if v]
    if key in _FLOAT_LIST_OPTS:
        try:
            return [float(v) for v in value.split(";") if v]
        except ValueError:
            raise ValueError(f"option {key} in {part!r} takes numbers joined by ';', got {value!r}") from None
    if key in _BOOL_OPTS:
        if value.strip().lower() not in _TRUE + _FALSE:
            raise ValueError(f"option {key} in {part!r} takes true or false (also 1/0, yes/no), got {value!r}")
        return value.strip().lower() in _TRUE
    if key in _FLOAT_OPTS or key in _INT_OPTS:
        convert, what = (float, "a number") if key in _FLOAT_OPTS else (int, "a whole number")
        try:
            return convert(value)
        except ValueError:
            raise ValueError(f"option {key} in {part!r} takes {what}, got {value!r}") from None
    return value


def _open_one(spec: Any, opts: dict) -> SeriesSource:
    name = opts.pop("name", None)
    weight = opts.pop("weight", None)
    src = _dispatch(spec, opts, name)
    if weight is not None:
        if not 0 < weight < float("inf"):  # inf passed, and failed later as "no usable window"
            raise ValueError(f"weight must be a positive number, got {weight}")
        src.weight = float(weight)
    return src


def _dispatch(spec: Any, opts: dict, name: str | None) -> SeriesSource:
    if isinstance(spec, SeriesSource):
        _no_opts(opts, "a SeriesSource")
        return spec
    if isinstance(spec, str) and spec.split(":")[0] == "synthetic":
        from .synthetic import SyntheticSource

        if ":" in spec:
            opts.setdefault("seed", _seed_of(spec))
        return SyntheticSource(**opts)
    if isinstance(spec, (str, Path)):
        return _open_path(Path(spec).expanduser(), opts, name)
    if isinstance(spec, np.ndarray):
        _no_opts(opts, "an array")
        return _from_array(spec, name or "array")
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(spec, (pd.Series, pd.DataFrame)):
        series, names = frame_to_series(spec, name or "frame", **opts)
        return ArraySource(series, name=name or "frame")
    if isinstance(spec, (list, tuple)):
        _no_opts(opts, "a list")
        if not spec:
            raise ValueError("open_source got an empty list; pass at least one series")
        if all(np.isscalar(v) for v in spec):
            return ArraySource([spec], name=name or "list")
        return ArraySource(list(spec), name=name or "list")
    raise TypeError(
        f"open_source cannot read {type(spec).__name__}; pass a path, an array, a list of arrays, "
        "a pandas object or a SeriesSource"
    )


def _seed_of(spec: str) -> int:
    """The seed of ``synthetic:3``."""
    text = spec.split(":", 1)[1]
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{spec!r}: the seed after 'synthetic:' must be a whole number, got {text!r}") from None


def _no_opts(opts: dict, what: str) -> None:
    if opts:
        raise TypeError(f"options {sorted(opts)} do not apply to {what}")


def _from_array(arr: np.ndarray, name: str) -> SeriesSource:
    if arr.dtype == object:
        return ArraySource(list(arr), name=name)
    if arr.ndim == 1:
        return ArraySource([arr], name=name)
    if arr.ndim == 2:
        return MatrixSource(arr, name=name)
    raise ValueError(f"{name!r}: arrays must be 1-D (one series) or 2-D (rows are series), got shape {arr.shape}")


# A .npy file of at least this many bytes stays memory-mapped (as rows of a MatrixSource: a 1-D file as one row, not a
# float32 copy in RAM). Smaller ones are read into RAM, so that a folder of thousands of small files does not hold a
# file descriptor and a mapping for each (1,024 open files is a common limit).
MAP_MIN_BYTES = 64 << 20


def _from_npy(arr: np.ndarray, name: str, path: Path) -> SeriesSource:
    """The source of an array read from the .npy file ``path`` (memory-mapped by ``read_numpy``)."""
    if isinstance(arr, np.memmap):
        if arr.nbytes >= MAP_MIN_BYTES and arr.dtype.kind in "iuf" and arr.ndim in (1, 2):
            return MatrixSource(arr.reshape(1, -1) if arr.ndim == 1 else arr, name=name, path=path)
        arr = np.array(arr)  # in RAM: the mapping and its file descriptor are released
    return _from_array(arr, name)


def _suffixes(path: Path) -> tuple[str, bool]:
    """Format suffix (ignoring a compression suffix) and whether the file is compressed."""
    sfx = [s.lower() for s in path.suffixes]
    compressed = bool(sfx) and sfx[-1] in COMPRESSED
    if compressed:
        sfx = sfx[:-1]
    return (sfx[-1] if sfx else ""), compressed


def _open_path(path: Path, opts: dict, name: str | None) -> SeriesSource:
    from .binary import BinarySource
    from .readers import read_json, read_numpy, read_table

    if path.is_dir():
        if (path / META_FILE).exists():
            _no_opts(opts, "a binary dataset")
            return BinarySource(path, name=name)
        return _open_folder(path, opts, name)
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty")
    fmt, compressed = _suffixes(path)
    name = name or path.name
    if fmt in TABULAR_SUFFIXES:
        series = read_table(path, fmt, opts)
        return ArraySource(series, name=name)
    if fmt in ARRAY_SUFFIXES:
        _no_opts(opts, "numpy files")
        parts = [
            _from_npy(arr, name, path) if fmt == ".npy" else _from_array(arr, f"{name}:{key}")
            for key, arr in read_numpy(path, fmt, compressed)
        ]
        return parts[0] if len(parts) == 1 else ConcatSource(parts, name=name)
    if fmt in JSON_SUFFIXES:
        _no_opts(opts, "json files")
        return ArraySource(read_json(path, fmt, compressed), name=name)
    if fmt == ".bin":
        raise ValueError(f"{path}: open the folder that holds meta.json, not a single .bin file")
    raise ValueError(
        f"{path}: unknown file type {fmt!r}; supported: csv, tsv, parquet, npy, npz, jsonl, json, "
        "or a folder with meta.json"
    )


def _open_folder(folder: Path, opts: dict, name: str | None) -> SeriesSource:
    found = []
    for p in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue  # hidden: Jupyter's .ipynb_checkpoints copies doubled the data, macOS '._x.csv' failed to read
        if p.is_dir() and (p / META_FILE).exists():
            found.append(p)
        elif p.is_file() and _suffixes(p)[0] in TABULAR_SUFFIXES + ARRAY_SUFFIXES + JSON_SUFFIXES:
            if not any(parent in found for parent in p.parents):
                found.append(p)
    if not found:
        raise ValueError(f"{folder} holds no readable data files (csv, parquet, npy, npz, jsonl, json, meta.json)")
    tables = [p for p in found if p.is_file() and _suffixes(p)[0] in TABULAR_SUFFIXES]
    if opts and not tables:
        raise ValueError(
            f"options {sorted(opts)} apply to tables (csv, tsv, parquet), and {folder} holds none; leave them out"
        )
    logger.info("opening %d data files under %s", len(found), folder)
    # The options are the tables' (the spec parser and the folder's docs say so): other files are read without them.
    sources = [_open_path(p, dict(opts) if p in tables else {}, None) for p in found]
    return ConcatSource(sources, name=name or folder.name)
