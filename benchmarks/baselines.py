"""Library baselines run on the protocol's windows: naive, seasonal naive, statsforecast and darts models.

Every forecaster has the same small interface, used by ``leaderboard.py``:

- ``name`` (the label on the board), ``setting`` ("zero-shot": it only sees each window's context;
  "full-shot": it trains on the dataset's train split), ``max_windows`` (None = every test window;
  else that many per channel, evenly spaced) and ``shared_windows`` (subsample the same starts for all
  horizons, spread over the windows valid for horizon 720, so one fit serves every horizon);
- ``context_length(horizon)``, ``prepare(data, horizon)`` (training, where there is any),
  ``predict(contexts [N, L], horizon) -> [N, H]`` on the scaled data, and ``settings()`` (recorded per cell).

Naive and seasonal naive are vectorised over all windows with the libraries' definitions: sktime's
``NaiveForecaster(strategy="last", sp=m)`` and statsforecast's ``Naive``/``SeasonalNaive`` repeat the last
value, resp. the last full season (forecast step j is y[T - m + (j mod m)]).

Shape legend: N windows, L context length, H horizon.
"""

from __future__ import annotations

import hashlib
import logging
import math

import numpy as np

log = logging.getLogger(__name__)

MAX_HORIZON = 720


class Forecaster:
    """Base: a zero-shot forecaster with one context length for all horizons."""

    name = "base"
    setting = "zero-shot"
    shared_windows = False

    def __init__(self, lookback: int = 512, max_windows: int | None = None):
        self.lookback = lookback
        self.max_windows = max_windows

    def context_length(self, horizon: int) -> int:
        return self.lookback

    def prepare(self, data, horizon: int) -> None:
        """Nothing to train for a local model."""

    def predict(self, contexts: np.ndarray, horizon: int) -> np.ndarray:
        raise NotImplementedError

    def settings(self) -> dict:
        return {"lookback": self.lookback, "max_windows": self.max_windows}


class NaiveLast(Forecaster):
    """Repeat the last observed value (sktime NaiveForecaster(strategy="last"), statsforecast Naive)."""

    name = "Naive"

    def predict(self, contexts: np.ndarray, horizon: int) -> np.ndarray:
        return np.repeat(contexts[:, -1:], horizon, axis=1)  # [N, H]


class SeasonalNaive(Forecaster):
    """Repeat the last season of length m.

    As sktime NaiveForecaster(strategy="last", sp=m) and statsforecast SeasonalNaive.
    """

    name = "SeasonalNaive"

    def __init__(self, season: int, lookback: int = 512, max_windows: int | None = None):
        super().__init__(lookback, max_windows)
        if season > lookback:
            raise ValueError(f"season {season} is longer than the lookback {lookback}; raise the lookback")
        self.season = season

    def predict(self, contexts: np.ndarray, horizon: int) -> np.ndarray:
        last = contexts[:, -self.season :]  # [N, m]
        reps = math.ceil(horizon / self.season)
        return np.tile(last, (1, reps))[:, :horizon]  # [N, H]

    def settings(self) -> dict:
        return {**super().settings(), "season": self.season}


STATS_MODELS = ("AutoETS", "AutoTheta", "AutoARIMA")


class StatsForecast(Forecaster):
    """A statsforecast model fitted on each window's context (last ``lookback`` points).

    Each window is fitted once and forecast MAX_HORIZON steps; shorter horizons reuse the first points
    (a cache keyed by the context's bytes), as the mean forecast of these models does not depend on h.
    """

    shared_windows = True

    def __init__(self, kind: str, season: int, lookback: int = 512, max_windows: int | None = 50, jobs: int = 1):
        super().__init__(lookback, max_windows)
        if kind not in STATS_MODELS:
            raise ValueError(f"unknown statsforecast model {kind!r}; choose from {STATS_MODELS}")
        try:
            import statsforecast.models  # noqa: F401
        except ImportError as err:
            raise ImportError(f"{kind} needs statsforecast: pip install statsforecast") from err
        self.name = kind
        self.season = season
        self.jobs = jobs
        self._cache: dict[bytes, np.ndarray] = {}

    def _fit_one(self, y: np.ndarray) -> np.ndarray:
        from statsforecast import models

        model = getattr(models, self.name)(season_length=self.season)
        out = model.forecast(y=y.astype(np.float64), h=MAX_HORIZON)["mean"]
        if not np.isfinite(out).all():
            # A failed fit must not poison the pooled metric; fall back to the seasonal naive forecast.
            log.warning("%s produced non-finite values; using seasonal naive for this window", self.name)
            out = SeasonalNaive(self.season, len(y)).predict(y[None, :], MAX_HORIZON)[0]
        return np.asarray(out, dtype=np.float32)

    def predict(self, contexts: np.ndarray, horizon: int) -> np.ndarray:
        keys = [hashlib.sha1(row.tobytes()).digest() for row in contexts]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        if self.jobs > 1 and len(todo) > 1:
            from joblib import Parallel, delayed

            fits = Parallel(n_jobs=self.jobs)(delayed(self._fit_one)(contexts[i]) for i in todo)
        else:
            fits = [self._fit_one(contexts[i]) for i in todo]
        for i, f in zip(todo, fits):
            self._cache[keys[i]] = f
        return np.stack([self._cache[k][:horizon] for k in keys])  # [N, H]

    def settings(self) -> dict:
        return {**super().settings(), "season": self.season, "fit": "per window, once at h=720"}


DARTS_MODELS = ("DLinear", "NLinear", "TiDE", "TSMixer", "NHiTS")

# Small CPU configurations (the paper's baselines are tuned on GPUs; these are cheap references).
DARTS_KWARGS = {
    "DLinear": {},
    "NLinear": {},
    "TiDE": {"hidden_size": 64, "num_encoder_layers": 1, "num_decoder_layers": 1, "decoder_output_dim": 8},
    "TSMixer": {"hidden_size": 32, "ff_size": 32, "num_blocks": 2},
    "NHiTS": {"num_stacks": 3, "num_blocks": 1, "num_layers": 2, "layer_widths": 128},
}


class DartsModel(Forecaster):
    """A darts global model trained on the train split (all channels as univariate series), one per horizon."""

    setting = "full-shot"

    def __init__(
        self,
        kind: str,
        lookback: int = 512,
        epochs: int = 2,
        train_samples: int = 7000,
        batch_size: int = 256,
        max_windows: int | None = 1000,
        seed: int = 0,
    ):
        super().__init__(lookback, max_windows)
        if kind not in DARTS_MODELS:
            raise ValueError(f"unknown darts model {kind!r}; choose from {DARTS_MODELS}")
        try:
            import pytorch_lightning  # noqa: F401
        except ImportError as err:
            raise ImportError(f"darts {kind} needs pytorch-lightning: pip install pytorch-lightning") from err
        # lightning sets its loggers to INFO when imported, over any level set before: three lines of "GPU
        # available" and tips per predict call.
        for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self.name = kind
        self.epochs = epochs
        self.train_samples = train_samples
        self.batch_size = batch_size
        self.seed = seed
        self._model = None
        self._key = None
        self.train_seconds = 0.0

    def prepare(self, data, horizon: int) -> None:
        import time

        from darts import TimeSeries
        from darts import models as dm

        if self._key == (data.name, horizon):
            return
        series = [TimeSeries.from_values(data.train[:, c]) for c in range(data.num_channels)]
        per_series = max(1, self.train_samples // data.num_channels)
        cls = getattr(dm, f"{self.name}Model")
        trainer = {
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": False,
            "enable_checkpointing": False,
        }
        model = cls(
            input_chunk_length=self.lookback,
            output_chunk_length=horizon,
            n_epochs=self.epochs,
            batch_size=self.batch_size,
            random_state=self.seed,
            pl_trainer_kwargs=trainer,
            **DARTS_KWARGS[self.name],
        )
        start = time.perf_counter()
        model.fit(series, max_samples_per_ts=per_series, verbose=False)
        self.train_seconds = time.perf_counter() - start
        log.info("%s trained on %s for h=%d in %.1f s", self.name, data.name, horizon, self.train_seconds)
        self._model, self._key = model, (data.name, horizon)

    def predict(self, contexts: np.ndarray, horizon: int) -> np.ndarray:
        from darts import TimeSeries

        if self._model is None:
            raise RuntimeError("call prepare(data, horizon) before predict")
        series = [TimeSeries.from_values(row) for row in contexts]
        out = self._model.predict(horizon, series=series, batch_size=1024, verbose=False)
        return np.stack([s.values()[:, 0] for s in out]).astype(np.float32)  # [N, H]

    def settings(self) -> dict:
        return {
            **super().settings(),
            "epochs": self.epochs,
            "train_samples": self.train_samples,
            "batch_size": self.batch_size,
            "model_kwargs": DARTS_KWARGS[self.name],
            "train_seconds": round(self.train_seconds, 1),
        }


BASELINES = (
    "naive",
    "seasonal_naive",
    "autoets",
    "autotheta",
    "autoarima",
    "dlinear",
    "nlinear",
    "tide",
    "tsmixer",
    "nhits",
)


def make_baseline(key: str, season: int, *, quick: bool = False, **opts) -> Forecaster:
    """Build the baseline named ``key`` (see BASELINES). opts: stats_lookback, stats_windows, jobs,
    darts_lookback, darts_epochs, darts_samples, darts_windows, seed."""
    if key == "naive":
        return NaiveLast(max_windows=opts.get("max_windows"))
    if key == "seasonal_naive":
        return SeasonalNaive(season, lookback=max(512, season), max_windows=opts.get("max_windows"))
    stats = {"autoets": "AutoETS", "autotheta": "AutoTheta", "autoarima": "AutoARIMA"}
    if key in stats:
        return StatsForecast(
            stats[key],
            season,
            lookback=opts.get("stats_lookback", 512),
            max_windows=opts.get("stats_windows", 4 if quick else 50),
            jobs=opts.get("jobs", 1),
        )
    darts = {k.lower(): k for k in DARTS_MODELS}
    if key in darts:
        return DartsModel(
            darts[key],
            lookback=opts.get("darts_lookback", 512),
            epochs=opts.get("darts_epochs", 1 if quick else 2),
            train_samples=opts.get("darts_samples", 256 if quick else 7000),
            max_windows=opts.get("darts_windows", 16 if quick else 1000),
            seed=opts.get("seed", 0),
        )
    raise ValueError(f"unknown baseline {key!r}; choose from {', '.join(BASELINES)}")
