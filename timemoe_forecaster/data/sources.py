"""Series sources: every supported format behind one small interface.

A :class:`SeriesSource` is a sized, indexable collection of 1-D float32 series (NaN allowed: the
sampler splits at non-finite runs). :func:`open_source` turns a path, a comma-separated list of paths,
an array, a list of arrays or a pandas object into one. Large corpora should use the Time-300B binary
layout (:class:`BinarySource`), which is memory-mapped and never loaded into RAM; the text formats
(CSV, jsonl) are read whole and suit small and medium data.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .frames import frame_to_series

logger = logging.getLogger(__name__)

META_FILE = "meta.json"
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


def _as_float32_1d(x: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} is not numeric ({err}); convert it to floats first") from None
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    return arr


class ArraySource(SeriesSource):
    """In-memory series: a list of 1-D arrays of any lengths."""

    def __init__(self, series: Sequence[Any], name: str = "arrays") -> None:
        self.name = name
        self._series = [_as_float32_1d(s, f"series {k} of {name!r}") for k, s in enumerate(series)]
        if not self._series:
            raise ValueError(f"source {name!r} holds no series")

    def __len__(self) -> int:
        return len(self._series)

    def __getitem__(self, i: int) -> np.ndarray:
        return self._series[self._check_index(i)]

    def length(self, i: int) -> int:
        return int(self._series[self._check_index(i)].shape[0])

    def lengths(self) -> np.ndarray:
        return np.array([s.shape[0] for s in self._series], dtype=np.int64)


class MatrixSource(SeriesSource):
    """Rows of a 2-D array (possibly a read-only memmap from ``np.load(mmap_mode='r')``) as series."""

    def __init__(self, matrix: np.ndarray, name: str = "matrix") -> None:
        if matrix.ndim != 2:
            raise ValueError(f"{name!r}: expected a 2-D array (rows are series), got shape {matrix.shape}")
        if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(matrix.dtype, np.complexfloating):
            raise TypeError(f"{name!r}: array dtype {matrix.dtype} is not real-valued numeric")
        if matrix.shape[0] == 0 or matrix.shape[1] == 0:
            raise ValueError(f"{name!r}: array of shape {matrix.shape} holds no data")
        self.name = name
        self._matrix = matrix

    def __len__(self) -> int:
        return int(self._matrix.shape[0])

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self._matrix[self._check_index(i)], dtype=np.float32)

    def length(self, i: int) -> int:
        self._check_index(i)
        return int(self._matrix.shape[1])

    def lengths(self) -> np.ndarray:
        return np.full(self._matrix.shape[0], self._matrix.shape[1], dtype=np.int64)


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

    def lengths(self) -> np.ndarray | None:
        parts = [s.lengths() for s in self.sources]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    def wants_quality_filter(self, i: int) -> bool:
        src, j = self._locate(i)
        return src.wants_quality_filter(j)


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
        files = sorted(meta["files"].items())
        self._file_paths = [self.folder / fn for fn, _ in files]
        self._file_points = np.array([int(n) for _, n in files], dtype=np.int64)
        self._file_starts = np.concatenate([[0], np.cumsum(self._file_points)])
        for path, n in zip(self._file_paths, self._file_points):
            _check_bin_file(path, int(n), self.dtype)
        scales = meta["scales"]
        if len(scales) != int(meta["num_sequences"]):
            raise ValueError(
                f"{self.folder / META_FILE}: num_sequences is {meta['num_sequences']} but scales has "
                f"{len(scales)} entries; regenerate meta.json"
            )
        try:
            self._offsets = np.array([s["offset"] for s in scales], dtype=np.int64)
            self._lengths = np.array([s["length"] for s in scales], dtype=np.int64)
            self._means = np.array([s.get("mean", np.nan) for s in scales], dtype=np.float64)
            self._stds = np.array([s.get("std", np.nan) for s in scales], dtype=np.float64)
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(
                f"{self.folder / META_FILE}: every entry of scales needs integer 'offset' and 'length' ({err})"
            ) from None
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
        start, stop = int(self._offsets[i]), int(self._offsets[i] + self._lengths[i])
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


def _check_bin_file(path: Path, num_points: int, dtype: np.dtype) -> None:
    if not path.is_file():
        raise ValueError(f"binary dataset file {path} listed in {META_FILE} is missing")
    need = num_points * dtype.itemsize
    have = path.stat().st_size
    if have < need:
        raise ValueError(
            f"{path} is truncated: {have} bytes but {META_FILE} says {num_points} {dtype} points ({need} bytes)"
        )


def write_binary_dataset(
    series: Sequence[Any] | SeriesSource,
    folder: str | Path,
    dtype: str = "float32",
    num_files: int = 1,
    standardise: bool = False,
) -> Path:
    """Write series in the Time-300B binary layout (``meta.json`` + ``data-{i}-of-{n}.bin``).

    With ``standardise=True`` each series is stored standardised and its mean/std go to ``scales``
    (readers return the original values). Returns the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np_dtype = np.dtype(dtype)
    if num_files < 1:
        raise ValueError(f"num_files must be >= 1, got {num_files}")
    arrays, scales, offset = [], [], 0
    for k, s in enumerate(series):
        x = _as_float32_1d(s, f"series {k}").astype(np.float64)
        entry: dict[str, Any] = {"offset": offset, "length": int(x.shape[0])}
        if standardise:
            finite = x[np.isfinite(x)]
            mean = float(finite.mean()) if finite.size else 0.0
            std = float(finite.std()) if finite.size else 1.0
            std = std if std > 0 else 1.0
            x = (x - mean) / std
            entry.update(mean=mean, std=std)
        arrays.append(x.astype(np_dtype))
        scales.append(entry)
        offset += int(x.shape[0])
    flat = np.concatenate(arrays) if arrays else np.zeros(0, np_dtype)
    names = sorted(f"data-{i + 1}-of-{num_files}.bin" for i in range(num_files))
    bounds = np.linspace(0, flat.shape[0], num_files + 1).astype(np.int64)
    files = {}
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        flat[lo:hi].tofile(folder / name)
        files[name] = int(hi - lo)
    meta = {"num_sequences": len(scales), "dtype": np_dtype.name, "files": files, "scales": scales}
    (folder / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return folder


def split_at_nonfinite(x: np.ndarray, min_length: int = 1) -> list[np.ndarray]:
    """Finite runs of ``x`` (split at NaN/inf) that have at least ``min_length`` points (views, in order)."""
    x = np.asarray(x)
    finite = np.isfinite(x)
    if finite.all():
        return [x] if x.shape[0] >= min_length else []
    edges = np.diff(np.concatenate([[0], finite.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [x[a:b] for a, b in zip(starts, stops) if b - a >= min_length]


# open_source -------------------------------------------------------------------------------------
def open_source(spec: Any, **kwargs: Any) -> SeriesSource:
    """Open any supported input as one :class:`SeriesSource`.

    ``spec``: a path (CSV/TSV/parquet, .npy/.npz, .jsonl/.json, a binary-dataset folder, or a folder of
    such files), several paths joined by commas, ``"synthetic"``, a numpy array (1-D = one series,
    2-D = rows are series), a list of arrays, a pandas Series/DataFrame (sktime panels included) or a
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
    if isinstance(spec, str) and ("," in spec or "#" in spec or spec.startswith("synthetic")):
        return [_open_one_string(part.strip(), kwargs) for part in spec.split(",") if part.strip()]
    return [_open_one(spec, dict(kwargs))]


def _open_one_string(part: str, kwargs: dict) -> SeriesSource:
    path, _, fragment = part.partition("#")
    opts = dict(kwargs)
    opts.update(_parse_fragment(fragment, part))
    return _open_one(path, opts)


_LIST_OPTS = ("columns", "exclude")
_BOOL_OPTS = ("long",)
_FLOAT_OPTS = ("weight",)
_INT_OPTS = ("seed", "num_series", "min_length", "max_length")


def _parse_fragment(fragment: str, part: str) -> dict:
    opts: dict[str, Any] = {}
    for item in filter(None, fragment.split("&")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"bad option {item!r} in {part!r}: write key=value pairs joined by '&'")
        key = key.strip()
        if key in _LIST_OPTS:
            opts[key] = [v for v in value.split(";") if v]
        elif key in _BOOL_OPTS:
            opts[key] = value.lower() in ("1", "true", "yes")
        elif key in _FLOAT_OPTS:
            opts[key] = float(value)
        elif key in _INT_OPTS:
            opts[key] = int(value)
        else:
            opts[key] = value
    return opts


def _open_one(spec: Any, opts: dict) -> SeriesSource:
    name = opts.pop("name", None)
    weight = opts.pop("weight", None)
    src = _dispatch(spec, opts, name)
    if weight is not None:
        if not weight > 0:
            raise ValueError(f"weight must be positive, got {weight}")
        src.weight = float(weight)
    return src


def _dispatch(spec: Any, opts: dict, name: str | None) -> SeriesSource:
    if isinstance(spec, SeriesSource):
        _no_opts(opts, "a SeriesSource")
        return spec
    if isinstance(spec, str) and spec.split(":")[0] == "synthetic":
        from .synthetic import SyntheticSource

        if ":" in spec:
            opts.setdefault("seed", int(spec.split(":", 1)[1]))
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


def _suffixes(path: Path) -> tuple[str, bool]:
    """Format suffix (ignoring a compression suffix) and whether the file is compressed."""
    sfx = [s.lower() for s in path.suffixes]
    compressed = bool(sfx) and sfx[-1] in COMPRESSED
    if compressed:
        sfx = sfx[:-1]
    return (sfx[-1] if sfx else ""), compressed


def _open_path(path: Path, opts: dict, name: str | None) -> SeriesSource:
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
        series = _read_table(path, fmt, opts)
        return ArraySource(series, name=name)
    if fmt in ARRAY_SUFFIXES:
        _no_opts(opts, "numpy files")
        return _read_numpy(path, fmt, compressed, name)
    if fmt in JSON_SUFFIXES:
        _no_opts(opts, "json files")
        return ArraySource(_read_json(path, fmt, compressed), name=name)
    if fmt == ".bin":
        raise ValueError(f"{path}: open the folder that holds meta.json, not a single .bin file")
    raise ValueError(
        f"{path}: unknown file type {fmt!r}; supported: csv, tsv, parquet, npy, npz, jsonl, json, "
        "or a folder with meta.json"
    )


def _open_folder(folder: Path, opts: dict, name: str | None) -> SeriesSource:
    found = []
    for p in sorted(folder.rglob("*")):
        if p.is_dir() and (p / META_FILE).exists():
            found.append(p)
        elif p.is_file() and _suffixes(p)[0] in TABULAR_SUFFIXES + ARRAY_SUFFIXES + JSON_SUFFIXES:
            if not any(parent in found for parent in p.parents):
                found.append(p)
    if not found:
        raise ValueError(f"{folder} holds no readable data files (csv, parquet, npy, npz, jsonl, json, meta.json)")
    logger.info("opening %d data files under %s", len(found), folder)
    return ConcatSource([_open_path(p, dict(opts), None) for p in found], name=name or folder.name)


def _read_table(path: Path, fmt: str, opts: dict) -> list[np.ndarray]:
    import pandas as pd

    if fmt in (".parquet", ".pq"):
        try:
            df = pd.read_parquet(path)
        except ImportError as err:
            raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow ({err})") from None
    else:
        try:
            df = pd.read_csv(path, sep="\t" if fmt == ".tsv" else ",")
        except pd.errors.EmptyDataError:
            raise ValueError(f"{path} is empty (no header, no rows)") from None
    series, _ = frame_to_series(df, str(path), **opts)
    return series


def _read_numpy(path: Path, fmt: str, compressed: bool, name: str) -> SeriesSource:
    if compressed:
        raise ValueError(f"{path}: decompress numpy files first (np.load cannot memory-map them)")
    try:
        if fmt == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            return _from_array(arr, name)
        with np.load(path, allow_pickle=False) as npz:
            parts = [_from_array(npz[k], f"{name}:{k}") for k in npz.files]
    except ValueError as err:
        raise ValueError(f"{path}: not a readable numeric numpy file ({err})") from None
    if not parts:
        raise ValueError(f"{path} holds no arrays")
    return parts[0] if len(parts) == 1 else ConcatSource(parts, name=name)


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


def _read_json(path: Path, fmt: str, compressed: bool) -> list[np.ndarray]:
    series = []
    with _open_text(path, compressed) as fh:
        if fmt == ".json":
            try:
                data = json.load(fh)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} is not valid JSON ({err})") from None
            records = data if isinstance(data, list) else [data]
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
