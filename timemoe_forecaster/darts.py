"""darts adapter: ``TimeMoEModel``, a global darts model for zero-shot (or fine-tuned) Time-MoE forecasts.

It subclasses darts' ``GlobalForecastingModel`` rather than ``FoundationModel``: the latter is a
PyTorch-Lightning ``TorchForecastingModel`` with fixed input/output chunks, and neither Lightning nor
fixed chunks fit a model that forecasts any horizon autoregressively from any context length (and
pytorch-lightning is not a dependency of this package). Forecasting runs through
:mod:`timemoe_forecaster.preprocess`, like the sktime adapter: every component of every series is
one row of a left-padded batch (channel independence), chunked by ``batch_size``.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import os
from collections.abc import Sequence

import numpy as np

from .extras import missing

try:
    from darts import TimeSeries
    from darts.models.forecasting.forecasting_model import GlobalForecastingModel
except ImportError as err:  # a bare ModuleNotFoundError named no extra
    raise missing("darts", "timemoe_forecaster.darts", err) from None

from . import preprocess

log = logging.getLogger(__name__)

# historical_forecasts cuts and forecasts this many contexts at a time (at least batch_size).
HISTORICAL_CHUNK_ROWS = 1024


class TimeMoEModel(GlobalForecastingModel):
    def __init__(
        self,
        model_path=None,
        config=None,
        context_length: int | None = None,
        device="auto",
        dtype=None,
        batch_size: int = 64,
        fine_tune: dict | None = None,
        scaling: str = "standard",
        seed: int = 0,
        progress: bool = False,
        add_encoders: dict | None = None,
    ):
        """Time-MoE foundation model for darts: zero-shot forecasts of any horizon, optionally fine-tuned.

        Univariate and multivariate series (components are forecast independently, in one batch),
        one series or a list of them. Covariates are not used. Missing values: leading NaN are
        dropped, interior gaps linearly interpolated, trailing NaN hold the last observation.

        Parameters
        ----------
        model_path
            Checkpoint directory or hub id; None is the checkpoint embedded in the package (a
            6.3M-parameter model we pretrained ourselves, ``docs/model_card.md``).
        config
            A preset name (``"tiny"``…) with ``model_path=None`` builds a fresh model seeded by
            ``seed``; a dict overrides checkpoint config keys, or with ``"preset"`` a preset's.
        context_length
            Points of history fed to the model; None is the model's default context where its config.json
            records one (fine-tuning records the longest window it drew, ``max_length`` or less on shorter
            series, but at least 128 points, or ``max_length`` where that is shorter; the embedded default
            records 3,072, the length that forecast best on validation data), else all history up to the model's
            limit (``max_position_embeddings``), keeping the most recent points of longer series. A value above the
            limit is a ``ValueError``; one above the recorded default, a logged warning.
        device
            "auto" (CUDA when available), "cpu", "cuda", …
        dtype
            Weights' dtype; None is float32.
        batch_size
            Series (components) per forward pass. A chunk that runs out of GPU memory is retried in halves,
            with a warning.
        fine_tune
            None: zero-shot, ``fit`` only validates. A dict of settings of
            ``timemoe_forecaster.train.finetune.train_on_series`` (``steps`` or ``epochs``, ``lr``,
            ``batch_size``, ``max_length``, …): ``fit`` fine-tunes a private copy of the model on every
            component of the given series.
        scaling
            "standard" (each context standardised by its own mean and std, forecasts mapped back),
            "robust" (the same after clipping values beyond 20 robust standard deviations from the context's
            median: one glitch no longer sets the scale) or "none" (raw values, for models trained on
            unscaled values; refused with ``fine_tune``, which trains on standardised windows).
        seed
            Seed of a fresh preset model and of fine-tuning.
        progress
            Progress bar while fine-tuning, and while a forecast (``predict``, ``historical_forecasts``) takes
            more than one batch of ``batch_size`` series; darts' ``verbose=True`` (of ``fit``, ``predict``,
            ``historical_forecasts``) shows them too.
        add_encoders
            Not supported (the model takes no covariates); must be None.

        Examples
        --------
        >>> from darts.datasets import AirPassengersDataset
        >>> from timemoe_forecaster.darts import TimeMoEModel
        >>> series = AirPassengersDataset().load()  # darts downloads it on first use
        >>> model = TimeMoEModel().fit(series)  # the embedded default checkpoint, zero-shot  # doctest: +SKIP
        >>> model.predict(12)  # doctest: +SKIP
        """
        super().__init__(add_encoders=add_encoders)
        if add_encoders is not None:
            raise ValueError("TimeMoEModel takes no covariates, so add_encoders must be None")
        preprocess.check_scaling(scaling)
        if context_length is not None:
            preprocess.check_context_length(context_length, 1 << 62)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if fine_tune is not None and not isinstance(fine_tune, dict):
            raise TypeError(f"fine_tune must be None or a dict of settings, got {type(fine_tune).__name__}")
        if fine_tune is not None:
            preprocess.refuse_training_with_raw_scaling(scaling)
        from .loading import check_config, check_seed, check_training_settings, resolve_stored_dtype

        check_training_settings(fine_tune)
        check_seed(seed)
        resolve_stored_dtype(dtype)
        check_config(config)
        self.model_path = model_path
        self.config = config
        self.context_length = context_length
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.fine_tune = fine_tune
        self.scaling = scaling
        self.seed = seed
        self.progress = progress
        self._model = None
        self._saved_weights = None  # a fine-tuned model's (config, weights) from a pickle, built on first use
        self._saved_fingerprint = None  # a zero-shot model's weights' fingerprint from a pickle, checked on reload
        self.fine_tune_result = None

    # Model ------------------------------------------------------------------------------------
    def _load(self):
        from .loading import check_same_checkpoint, load_model

        if self._model is None:
            if getattr(self, "_saved_weights", None) is not None:  # built here, not when unpickled: see load()
                self._model = _model_from_weights(*self._saved_weights, device=self.device, dtype=self.dtype)
            else:
                model = load_model(self.model_path, self.config, seed=self.seed, device=self.device, dtype=self.dtype)
                if getattr(self, "_saved_fingerprint", None) is not None:
                    check_same_checkpoint(model, self._saved_fingerprint, self.model_path, "TimeMoEModel was saved")
                self._model = model
            preprocess.context_points(self.context_length, self._model.config)
        return self._model

    @property
    def torch_model(self):
        """The underlying TimeMoEForPrediction (loaded on first access; after ``fit``, the fitted one).
        On a GPU, compile it in place for faster predictions: ``compile_blocks(model.torch_model)``
        (``timemoe_forecaster.compile``); a later ``fit`` starts again from an uncompiled model."""
        return self._load()

    # Saving: darts pickles the model and unpickles with an allow-list; keep the pickle to plain
    # values (config dict, weights as numpy arrays), so only this class needs allow-listing. A
    # zero-shot model is reloaded from model_path / config instead of being stored.
    def __getstate__(self):
        state = self.__dict__.copy()
        model = state.pop("_model", None)
        saved = state.pop("_saved_weights", None)
        fingerprint = state.pop("_saved_fingerprint", None)
        if model is not None and self.fine_tune is not None:  # trained weights cannot be reloaded
            weights = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
            state["_weights"] = (model.config.to_dict(), weights)
        elif saved is not None:  # unpickled and never used: pass the weights on
            state["_weights"] = saved
        if model is not None and self.fine_tune is None:
            from .loading import cached_checkpoint_fingerprint

            fingerprint = cached_checkpoint_fingerprint(model)
        if fingerprint is not None:  # a plain str: darts' safe loading takes it
            state["_fingerprint"] = fingerprint
        # darts' safe loading allow-lists plain values only: a pathlib.Path model_path saved but never loaded.
        if isinstance(state.get("model_path"), os.PathLike):
            state["model_path"] = os.fspath(state["model_path"])
        params = state.get("_model_params")
        if isinstance(params, dict) and isinstance(params.get("model_path"), os.PathLike):
            state["_model_params"] = {**params, "model_path": os.fspath(params["model_path"])}
        return state

    def __setstate__(self, state):
        weights = state.pop("_weights", None)
        fingerprint = state.pop("_fingerprint", None)
        self.__dict__.update(state)
        self._model = None
        self._saved_weights = weights
        self._saved_fingerprint = fingerprint

    @classmethod
    def load(cls, path, trusted: bool = False, device=None, **kwargs):
        """Load a model saved with :meth:`save` (this class is allow-listed for darts' safe loading).

        ``device``: where to put the model instead of the device it was saved with (a model fine-tuned with
        ``device="cuda"`` loads on a machine without a GPU with ``device="cpu"``), as darts' ``map_location``.
        """
        from darts.utils.serialization import safe_globals

        with safe_globals([TimeMoEModel]):
            model = super().load(path, trusted=trusted, **kwargs)
        if device is not None:
            model.device = device
            if isinstance(getattr(model, "_model_params", None), dict):
                model._model_params["device"] = device
        return model

    # darts API ----------------------------------------------------------------------------------
    def fit(self, series, past_covariates=None, future_covariates=None, verbose=None, **kwargs):
        """Validate ``series`` and load the model; with ``fine_tune``, fine-tune a private copy on it."""
        if past_covariates is not None or future_covariates is not None:
            raise ValueError("TimeMoEModel does not use covariates; pass only the target series")
        # Code written for darts' global models passes their fit options (val_series=None, sample_weight=None):
        # left unset they mean nothing here; set, they are refused rather than ignored.
        used = sorted(name for name, value in kwargs.items() if value is not None)
        if used:
            raise TypeError(
                f"TimeMoEModel.fit got arguments it does not use: {used} (fine-tuning takes its settings from "
                "fine_tune={...} at construction)"
            )
        listed = _as_list(series)
        values = _component_arrays(listed)
        # A refit that fails (a series fine-tuning refuses, Ctrl-C in a notebook) leaves the model as it was: it
        # kept the base model it had just loaded, and forecast zero-shot while still reporting the earlier fit.
        previous = (self._model, self._saved_weights, self._saved_fingerprint, getattr(self, "fine_tune_result", None))
        # Every fit starts from the configured model, as it is now: refits are idempotent.
        self._model = self._saved_weights = self._saved_fingerprint = None
        try:
            model = self._load()
            if _fit_warning_due("untrained"):
                preprocess.warn_if_untrained(self.config, self.fine_tune is not None or self._saved_weights is not None)
            if self.fine_tune is not None:
                from .loading import train_private_copy

                names = [
                    f"series {k}, component {c!r}" if len(listed) > 1 else f"component {c!r}"
                    for k, s in enumerate(listed)
                    for c in s.components
                ]
                self._model, self.fine_tune_result = train_private_copy(
                    model, values, self.fine_tune, seed=self.seed, progress=self.progress or bool(verbose), names=names
                )
        except BaseException:
            self._model, self._saved_weights, self._saved_fingerprint, self.fine_tune_result = previous
            raise
        if _fit_warning_due("context"):
            preprocess.warn_if_past_default_context(self.context_length, self._load().config)
        from darts.utils.ts_utils import seq2series

        # A list of one series is that series, as darts' own models store it, so predict(n) needs no `series`.
        return super().fit(seq2series(series))

    def predict(
        self,
        n: int,
        series=None,
        past_covariates=None,
        future_covariates=None,
        num_samples: int = 1,
        verbose=None,
        predict_likelihood_parameters: bool = False,
        show_warnings: bool = True,
        random_state=None,
        **kwargs,
    ):
        """Forecast ``n`` steps after the end of ``series`` (one series or a list; default: the fit series)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive integer (steps after the end of the series), got {n!r}")
        if predict_likelihood_parameters:
            raise ValueError("TimeMoEModel is deterministic: predict_likelihood_parameters is not supported")
        if past_covariates is not None or future_covariates is not None:
            raise ValueError("TimeMoEModel does not use covariates; pass only the target series")
        if kwargs:  # a misspelt `series=` would otherwise silently forecast the training series
            raise TypeError(f"TimeMoEModel.predict got unexpected arguments {sorted(kwargs)}")
        if series is None:
            if not self._fit_called:
                raise ValueError(
                    "this TimeMoEModel is not fitted: call fit(series) first (zero-shot, it only checks the series "
                    "and loads the model; darts requires it even when predict() gets `series`)"
                )
            if self.training_series is None:
                raise ValueError(
                    "pass `series` to predict(): the model was fit on several series, or saved with clean=True"
                )
            series = self.training_series
        super().predict(n, series, num_samples=num_samples, verbose=verbose, show_warnings=show_warnings)
        single = isinstance(series, TimeSeries)
        series_list = _as_list(series)
        values = _component_arrays(series_list)
        model = self._load()
        if show_warnings:
            self._warn_if_truncated(max(_history_length(v, len(v)) for v in values), model)
        points = preprocess.forecast_series(
            model,
            values,
            int(n),
            context_length=self.context_length,
            scaling=self.scaling,
            batch_size=self.batch_size,
            device=next(model.parameters()).device,
            progress=self.progress or bool(verbose),
            warn=show_warnings,
        )  # [sum of components, n]
        out, row = [], 0
        for s in series_list:
            block = points[row : row + s.n_components].T  # [n, C]
            row += s.n_components
            out.append(self._build_forecast_series(block.astype(s.dtype, copy=False), input_series=s))
        return out[0] if single else out

    def _warn_if_truncated(self, longest: int, model) -> None:
        """``longest``: the most points of history any forecast has."""
        points = preprocess.context_points(self.context_length, model.config)
        if self.context_length is None and longest > points:
            preprocess.log_history_cut("series", longest, points, model.config.max_position_embeddings)

    # Historical forecasts: every cut-off of every series in one batched call -------------------------
    def historical_forecasts(self, *args, **kwargs):
        """darts' ``historical_forecasts``. With ``retrain``, darts fits a fresh copy of this model at every
        cut-off: its fit-time warnings (a context past the model's default, an untrained preset) come once per
        call, not once per cut-off (31 times over a 31-cut-off backtest), and not at all with
        ``show_warnings=False``, which darts does not pass to ``fit``."""
        show = inspect.signature(super().historical_forecasts).bind_partial(*args, **kwargs).arguments
        token = _FIT_WARNINGS_SAID.set(set() if show.get("show_warnings", True) else None)
        try:
            return super().historical_forecasts(*args, **kwargs)
        finally:
            _FIT_WARNINGS_SAID.reset(token)

    def _check_optimizable_historical_forecasts(self, retrain) -> bool:
        from darts.utils.historical_forecasts.utils import _check_optimizable_historical_forecasts_global_models

        return _check_optimizable_historical_forecasts_global_models(retrain)

    def _optimized_historical_forecasts(
        self,
        series,
        past_covariates=None,
        future_covariates=None,
        num_samples: int = 1,
        start=None,
        start_format="value",
        forecast_horizon: int = 1,
        stride: int = 1,
        overlap_end: bool = False,
        last_points_only: bool = True,
        verbose: bool = False,
        show_warnings: bool = True,
        predict_likelihood_parameters: bool = False,
        random_state=None,
        predict_kwargs=None,
    ):
        """Forecasts from all cut-offs at once; each equals ``predict(forecast_horizon, series[:cut-off])``."""
        from darts.utils.historical_forecasts.utils import (
            _get_historical_forecast_boundaries,
            _process_predict_start_points_bounds,
        )
        from darts.utils.timeseries_generation import _build_forecast_series_from_schema

        if past_covariates is not None or future_covariates is not None:
            raise ValueError("TimeMoEModel does not use covariates; pass only the target series")
        if predict_likelihood_parameters or num_samples != 1:
            raise ValueError("TimeMoEModel is deterministic: use num_samples=1 and no likelihood parameters")
        predict_kwargs = dict(predict_kwargs or {})
        verbose = predict_kwargs.pop("verbose", verbose)  # darts allows predict()'s own verbose here
        if predict_kwargs:  # as predict() refuses them; this path never calls predict()
            raise TypeError(f"TimeMoEModel.predict got unexpected arguments {sorted(predict_kwargs)}")
        series = _as_list(series)
        bounds = []
        for idx, s in enumerate(series):
            first, last = _get_historical_forecast_boundaries(
                self, s, idx, None, None, start, start_format, forecast_horizon, overlap_end, stride, s.freq,
                show_warnings,
            )[:2]  # fmt: skip
            left = len(s) if first > s.end_time() else s.get_index_at_point(first)
            right = len(s) if last > s.end_time() else s.get_index_at_point(last)
            bounds.append((left, right))
        bounds, _ = _process_predict_start_points_bounds(series, np.array(bounds), stride)
        model = self._load()
        length = preprocess.context_points(self.context_length, model.config)
        windows, jobs, counts, longest = [], [], [], 0  # windows: (values, observed_at, cut) per forecast row
        for idx, (s, (left, right)) in enumerate(zip(series, bounds)):
            values = preprocess.as_float_array(s.values(copy=False), name=f"series {idx}")  # [T, C]
            cuts = _forecastable_cuts(s, values, np.arange(left, right + 1, stride), idx, show_warnings)
            observed_at = [np.flatnonzero(~np.isnan(values[:, c])) for c in range(values.shape[1])]
            if cuts.size:
                longest = max(longest, *(_history_length(values[:, c], int(cuts[-1])) for c in range(values.shape[1])))
            for cut in cuts:
                windows.extend((values[:, c], observed_at[c], cut) for c in range(values.shape[1]))
                jobs.append(int(cut))
            counts.append(cuts.size)
        if show_warnings:
            self._warn_if_truncated(longest, model)
        points = np.empty((len(windows), forecast_horizon))  # [jobs * C, L]
        # Contexts are cut chunk by chunk: all of them at once, copied again by the forecast, took 47 KB a row at
        # the default context (1,000 series x 200 cut-offs: about 9 GB).
        chunk = max(self.batch_size, HISTORICAL_CHUNK_ROWS)
        bar = preprocess._progress_bar(len(windows), self.progress or bool(verbose), "forecast")
        with bar:
            for lo in range(0, len(windows), chunk):
                contexts = [_context_window(v, seen, cut, length) for v, seen, cut in windows[lo : lo + chunk]]
                points[lo : lo + len(contexts)] = preprocess.forecast_series(
                    model, contexts, forecast_horizon, context_length=length, scaling=self.scaling,
                    batch_size=self.batch_size, device=next(model.parameters()).device,
                    warn=show_warnings and lo == 0,  # once per call, not per chunk
                )  # fmt: skip
                bar.update(len(contexts))
        out, row, job = [], 0, 0
        for s, count in zip(series, counts):
            c = s.n_components
            block = points[row : row + count * c].reshape(count, c, forecast_horizon).transpose(0, 2, 1)  # [F, L, C]
            cuts = jobs[job : job + count]
            row, job = row + count * c, job + count
            schema = s.schema()
            starts = [_time_at(s, k) for k in cuts]
            if last_points_only:
                schema["time_freq"] = s.freq * stride
                out.append(
                    _build_forecast_series_from_schema(
                        values=block[:, -1, :].astype(s.dtype),
                        schema=schema,
                        pred_start=starts[0] + (forecast_horizon - 1) * s.freq,
                        predict_likelihood_parameters=False,
                    )
                )
            else:
                out.append([
                    _build_forecast_series_from_schema(
                        values=block[k].astype(s.dtype), schema=schema, pred_start=starts[k],
                        predict_likelihood_parameters=False,
                    )
                    for k in range(count)
                ])  # fmt: skip
        return out

    # darts properties ---------------------------------------------------------------------------
    @property
    def supports_multivariate(self) -> bool:
        return True

    @property
    def supports_probabilistic_prediction(self) -> bool:
        return False

    @property
    def supports_sample_weight(self) -> bool:
        return False

    @property
    def supports_transferable_series_prediction(self) -> bool:
        return True

    @property
    def _requires_training(self) -> bool:
        return self.fine_tune is not None

    @property
    def min_train_samples(self) -> int:
        return 1

    @property
    def _target_window_lengths(self) -> tuple[int, int]:
        return self._min_context, 0

    @property
    def _min_context(self) -> int:
        # The fewest points a forecast needs; context_length is an upper bound, and shorter
        # histories are forecast from what they have (as predict() does).
        return preprocess.MIN_OBSERVED

    @property
    def extreme_lags(self):
        return -self._min_context, -1, None, None, None, None, 0

    @property
    def _model_encoder_settings(self):
        return None, None, False, False, None, None


def _model_from_weights(config: dict, state: dict, device, dtype):
    import torch

    from .config import TimeMoEConfig
    from .loading import resolve_device, resolve_stored_dtype
    from .model import TimeMoEForPrediction

    with torch.device("meta"):
        model = TimeMoEForPrediction(TimeMoEConfig.from_dict(config))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, assign=True)
    target = resolve_stored_dtype(dtype)  # auto (None): as saved
    return model.to(device=resolve_device(device), dtype=target).requires_grad_(False).eval()


def _context_window(values: np.ndarray, observed_at: np.ndarray, cut: int, length: int) -> np.ndarray:
    """The points of ``values[:cut]`` that predict() on the truncated series would use (``preprocess.context_start``),
    as a copy, so that thousands of cut-offs never hold whole prefixes. ``observed_at``: indices of the observed
    points of ``values``, sorted."""
    return values[preprocess.context_start(values, cut, length, observed_at) : cut].copy()


def _time_at(s: TimeSeries, position: int):
    """The time of ``position`` in ``s``, continuing its frequency past the end (overlap_end's cut-offs). Reads
    ``_time_index``: the public ``time_index`` copies the whole index, once per cut-off here."""
    return s._time_index[position] if position < len(s) else s.end_time() + (position - len(s) + 1) * s.freq


def _forecastable_cuts(s: TimeSeries, values: np.ndarray, cuts: np.ndarray, idx: int, warn: bool) -> np.ndarray:
    """The cut-offs that leave every component at least ``MIN_OBSERVED`` observed points to forecast from.

    Earlier ones (inside leading missing values: a panel's series may start at different times) are
    skipped, as darts moves a ``start`` before a model's first forecastable point forward; their NaN
    forecasts made every bound of a ConformalNaiveModel built on them NaN. No cut-off left is an error,
    as in darts.
    """
    observed = np.cumsum(~np.isnan(values), axis=0)  # [T, C] observed points up to each time
    need = preprocess.MIN_OBSERVED
    counts = np.where(cuts > 0, observed[np.clip(cuts, 1, len(values)) - 1].min(axis=1), 0)
    enough = counts >= need  # non-decreasing along cuts: the skipped ones come first
    if not enough.any():
        raise ValueError(
            f"series {idx}: no historical forecast can start, since no cut-off leaves every component {need} "
            "observed points (leading missing values); start later or pass a longer series"
        )
    if warn and not enough.all():
        first = cuts[enough][0]
        at = _time_at(s, first)
        log.warning(
            "series %d: the first %d historical forecast(s) would start with fewer than %d observed points "
            "(leading missing values); starting at %s instead",
            idx,
            int((~enough).sum()),
            need,
            at,
        )
    return cuts[enough]


# Inside historical_forecasts (backtest and residuals call it too): the fit-time warnings given so far, or None
# with show_warnings=False. Outside: the default, every fit warns.
_FIT_WARNINGS_SAID: contextvars.ContextVar = contextvars.ContextVar("fit_warnings_said", default=...)


def _fit_warning_due(kind: str) -> bool:
    said = _FIT_WARNINGS_SAID.get()
    if said is ...:
        return True
    if said is None or kind in said:
        return False
    said.add(kind)
    return True


def _as_list(series) -> list[TimeSeries]:
    if isinstance(series, TimeSeries):
        return _deterministic([series])
    if isinstance(series, Sequence) and not isinstance(series, (str, bytes)) and len(series) > 0:
        if all(isinstance(s, TimeSeries) for s in series):
            return _deterministic(list(series))
    raise TypeError(f"series must be a darts TimeSeries or a non-empty list of them, got {type(series).__name__}")


def _deterministic(series_list: list[TimeSeries]) -> list[TimeSeries]:
    """Refuses stochastic series: reading their values gave the first sample alone, the others dropped silently."""
    for k, s in enumerate(series_list):
        if s.n_samples > 1:
            where = f"series {k}" if len(series_list) > 1 else "the series"
            raise ValueError(
                f"{where} is stochastic ({s.n_samples} samples); TimeMoEModel forecasts one path: pass one "
                "path (series.mean() or series.median(), say)"
            )
    return series_list


def _history_length(values: np.ndarray, cut: int) -> int:
    """Points of history a forecast from the first ``cut`` of ``values`` has: leading NaN are dropped, not used."""
    observed = np.flatnonzero(~np.isnan(values[:cut]))
    return cut - int(observed[0]) if observed.size else 0


def _component_arrays(series_list: list[TimeSeries]) -> list[np.ndarray]:
    """Every component of every series as a validated float64 array (NaN allowed, inf not)."""
    out = []
    for k, s in enumerate(series_list):
        # Errors name the series by its place in a list, and by its time span, which also tells a cut-off
        # of darts' one-by-one historical forecasts apart from the whole series.
        where = (
            f"series {k} ({s.start_time()} to {s.end_time()})"
            if len(series_list) > 1
            else f"the series ({s.start_time()} to {s.end_time()})"
        )
        values = preprocess.as_float_array(s.values(copy=False), name=where)  # [T, C]
        for c, name in enumerate(s.components):
            preprocess.fill_missing(values[:, c], name=f"{where}, component {name!r}")  # validates
            out.append(values[:, c])
    return out
