"""The paper's long-horizon evaluation protocol: datasets, splits, scaling, test windows, pooled metrics.

It follows the official ``run_eval.py`` of Time-MoE (its ``BenchmarkEvalDataset``), which takes the
Time-Series-Library borders:

- ETTh: 12/4/4 months of hours, train rows [0, 8640), val [8640, 11520), test [11520, 14400);
  ETTm: the same months in 15-minute rows (x4); Weather: int(0.7 n) train, int(0.2 n) test, the rest val.
  Rows after the test border (ETT files are longer than 20 months) are never used.
- A StandardScaler per column (population std, ddof=0, as sklearn), fit on the train rows only;
  forecasts and metrics live on that scale.
- Test windows: the first label point runs over every row t of the test split with t + horizon < test end
  (strictly: the official loop ``range(context + horizon, n_points)`` never uses the window that ends on the
  last test row), so a channel has ``test_rows - horizon`` windows (ETTh1 at 96: 2880 - 96 = 2784).
  The context is the ``context_length`` rows before t; for the first windows it reaches back into val/train.
- MSE and MAE are pooled over every forecast point of every window and channel (sum / count), and the
  "avg" row is the mean of the four horizons' values.

Shape legend: N windows, L context length, H horizon, C channels, R rows.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

HORIZONS = (96, 192, 336, 720)
# The paper's context length per horizon (Time-MoE evaluation).
DEFAULT_CONTEXT = {96: 512, 192: 1024, 336: 2048, 720: 3072}
DATA_ENV = "TIMEMOE_BENCH_DATA"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    file: str
    kind: str  # "etth" | "ettm" | "ratio" (70/10/20)
    season: int  # points per day: the seasonal-naive period


DATASETS: dict[str, DatasetSpec] = {
    "ETTh1": DatasetSpec("ETTh1", "ETTh1.csv", "etth", 24),
    "ETTh2": DatasetSpec("ETTh2", "ETTh2.csv", "etth", 24),
    "ETTm1": DatasetSpec("ETTm1", "ETTm1.csv.gz", "ettm", 96),
    "ETTm2": DatasetSpec("ETTm2", "ETTm2.csv.gz", "ettm", 96),
    "Weather": DatasetSpec("Weather", "weather.csv.gz", "ratio", 144),
}


def split_borders(kind: str, num_rows: int) -> tuple[int, int, int]:
    """(train end, val end = test start, test end) row indices of the official split."""
    if kind in ("etth", "ettm"):
        per_month = 30 * 24 * (4 if kind == "ettm" else 1)
        borders = (12 * per_month, 16 * per_month, 20 * per_month)
        if num_rows < borders[2]:
            raise ValueError(f"an {kind.upper()} file needs at least {borders[2]} rows, got {num_rows}")
        return borders
    if kind == "ratio":
        num_train, num_test = int(num_rows * 0.7), int(num_rows * 0.2)
        return num_train, num_rows - num_test, num_rows
    raise ValueError(f"unknown split kind {kind!r}; use 'etth', 'ettm' or 'ratio'")


def fit_scaler(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std (ddof=0) of train [R, C]; a zero std becomes 1, as in sklearn."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std == 0, 1.0, std)
    return mean, std


@dataclass
class BenchmarkData:
    """One dataset after splitting and scaling. ``values`` [R, C] float32 holds rows [0, test_end) scaled."""

    name: str
    columns: list[str]
    values: np.ndarray
    train_end: int
    test_start: int
    test_end: int
    season: int
    mean: np.ndarray = field(repr=False)
    std: np.ndarray = field(repr=False)

    @property
    def num_channels(self) -> int:
        return self.values.shape[1]

    @property
    def train(self) -> np.ndarray:
        return self.values[: self.train_end]  # [R_train, C]

    @property
    def val(self) -> np.ndarray:
        return self.values[self.train_end : self.test_start]  # [R_val, C]

    @property
    def test(self) -> np.ndarray:
        return self.values[self.test_start : self.test_end]  # [R_test, C]

    def num_windows(self, horizon: int) -> int:
        """Test windows per channel: test_rows - horizon (the official count)."""
        return max(0, self.test_end - self.test_start - horizon)

    def window_starts(
        self, horizon: int, max_windows: int | None = None, span_horizon: int | None = None
    ) -> np.ndarray:
        """Row index of the first label point of each test window, evenly subsampled to max_windows.

        With span_horizon (>= horizon) the subsample spreads over the windows valid for span_horizon, so
        that every horizon gets the same starts (a model fitted once per window then serves them all).
        """
        n = self.num_windows(horizon)
        if n == 0:
            rows = self.test_end - self.test_start
            raise ValueError(f"{self.name}: horizon {horizon} leaves no test window ({rows} test rows)")
        if max_windows is not None and span_horizon is not None and max_windows < n:
            n = max(1, self.num_windows(max(span_horizon, horizon)))
        return self.test_start + subsample(n, max_windows)

    def contexts(self, channel: int, starts: np.ndarray, context_length: int) -> np.ndarray:
        """The context_length rows before each start, of one channel: [N, L] float32 (a view-free copy)."""
        check_context(self, context_length)
        series = self.values[:, channel]
        idx = np.asarray(starts)[:, None] + np.arange(-context_length, 0)[None, :]  # [N, L]
        return series[idx]

    def targets(self, channel: int, starts: np.ndarray, horizon: int) -> np.ndarray:
        """The horizon rows from each start, of one channel: [N, H] float32."""
        series = self.values[:, channel]
        idx = np.asarray(starts)[:, None] + np.arange(horizon)[None, :]  # [N, H]
        if idx.max(initial=0) >= self.test_end:
            raise ValueError("a window runs past the test split")
        return series[idx]


def check_context(data: BenchmarkData, context_length: int) -> None:
    if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)) or context_length < 1:
        raise ValueError(f"context_length must be a positive integer, got {context_length!r}")
    if context_length > data.test_start:
        raise ValueError(
            f"{data.name}: context_length {context_length} reaches before the first row "
            f"(the test split starts at row {data.test_start}); use a shorter context"
        )


def subsample(n: int, max_windows: int | None) -> np.ndarray:
    """Indices 0..n-1, or max_windows of them evenly spaced (first and last included)."""
    if max_windows is None or max_windows >= n:
        return np.arange(n)
    if max_windows < 1:
        raise ValueError(f"max_windows must be a positive integer or None, got {max_windows!r}")
    if max_windows == 1:
        return np.array([n // 2])
    return np.unique(np.linspace(0, n - 1, max_windows).round().astype(np.int64))


def default_data_dir() -> Path:
    """$TIMEMOE_BENCH_DATA, else ../shared/data/benchmark next to the repository, else /work/shared/data/benchmark."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    repo = Path(__file__).resolve().parent.parent
    for candidate in (repo.parent / "shared" / "data" / "benchmark", repo / ".data" / "benchmark"):
        if candidate.is_dir():
            return candidate
    return Path("/work/shared/data/benchmark")


def read_values(path: Path) -> tuple[list[str], np.ndarray]:
    """Column names (all but the date) and values [R, C] float64 of a benchmark CSV (.csv or .csv.gz)."""
    import pandas as pd

    df = pd.read_csv(path)
    if df.shape[1] < 2:
        raise ValueError(f"{path}: expected a date column followed by value columns")
    cols = [str(c) for c in df.columns[1:]]
    # Text that is no number reads as NaN here, and is named by load_dataset's check with the rest.
    return cols, df.iloc[:, 1:].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)


def from_values(name: str, columns: list[str], raw: np.ndarray, kind: str, season: int) -> BenchmarkData:
    """Split and scale raw values [R, C] (rows in time order) as the official protocol does."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2:
        raise ValueError(f"values must be 2-D [rows, channels], got shape {raw.shape}")
    train_end, test_start, test_end = split_borders(kind, raw.shape[0])
    mean, std = fit_scaler(raw[:train_end])
    scaled = ((raw[:test_end] - mean) / std).astype(np.float32)
    return BenchmarkData(name, list(columns), scaled, train_end, test_start, test_end, season, mean, std)


def load_dataset(name: str, data_dir: str | Path | None = None) -> BenchmarkData:
    """Load, split and scale one of DATASETS from data_dir (default: see default_data_dir)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    spec = DATASETS[name]
    directory = Path(data_dir) if data_dir is not None else default_data_dir()
    path = directory / spec.file
    if not path.exists():
        alt = directory / spec.file.removesuffix(".gz")
        if not alt.exists():
            raise FileNotFoundError(f"{path} not found; pass --data-dir or set ${DATA_ENV} to the benchmark folder")
        path = alt
    columns, raw = read_values(path)
    missing = ~np.isfinite(raw[: split_borders(spec.kind, raw.shape[0])[2]])
    if missing.any():  # a NaN or inf in the train split made its column's statistics, and every forecast, NaN
        col = int(np.flatnonzero(missing.any(axis=0))[0])
        row = int(np.flatnonzero(missing[:, col])[0])
        raise ValueError(
            f"{path}: {int(missing.sum())} missing, infinite or non-numeric value(s) in the rows the protocol "
            f"uses (the first: column {columns[col]!r}, data row {row + 1}); the benchmark files hold none, so this "
            "copy is damaged"
        )
    data = from_values(name, columns, raw, spec.kind, spec.season)
    log.info("%s: %d channels, train %d, val %d, test %d rows", name, data.num_channels,
             data.train_end, data.test_start - data.train_end, data.test_end - data.test_start)  # fmt: skip
    return data


class PooledMetrics:
    """Sum of squared and absolute errors and the point count, so that MSE/MAE pool over all points."""

    def __init__(self) -> None:
        self.sum_sq = 0.0
        self.sum_abs = 0.0
        self.count = 0

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        pred = np.asarray(pred, dtype=np.float64)
        target = np.asarray(target, dtype=np.float64)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
        if not np.isfinite(pred).all():
            raise ValueError("a forecast contains NaN or inf")
        err = pred - target
        self.sum_sq += float(np.sum(err * err))
        self.sum_abs += float(np.sum(np.abs(err)))
        self.count += err.size

    @property
    def mse(self) -> float:
        return self.sum_sq / self.count if self.count else float("nan")

    @property
    def mae(self) -> float:
        return self.sum_abs / self.count if self.count else float("nan")
