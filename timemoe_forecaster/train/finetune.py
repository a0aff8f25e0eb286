"""Fine-tuning on a user's own series: the entry point of the estimators and the benchmarks.

``train_on_series`` builds the same :class:`~timemoe_forecaster.train.trainer.Trainer` as
pretraining (same step, clipping, schedule, NaN guard), over random windows of the given series,
each standardised by its own mean and standard deviation. Nothing is written to disk.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from ..config import OUR_SECTION
from ..model.modeling import TimeMoEForPrediction
from .parallel import DistContext
from .trainer import TrainConfig, Trainer, describe_as_trained_from, diverged_by_skips

log = logging.getLogger(__name__)

DEFAULT_STEPS = 100

# The shortest default context a fine-tune records (twice the longest head of the presets): series shorter than
# that set the windows, not the length the model reads well from.
MIN_RECORDED_CONTEXT = 128


# Interior gaps up to this many points are interpolated, as forecasting fills them; longer ones split the
# series, so that training never sees long straight lines that are not in the data.
MAX_FILLED_GAP = 32


def _segments(series, names: list[str] | None = None) -> list[np.ndarray]:
    """Training pieces of every series as float32, each standardised by its own mean and std.

    Standardising in float64 before the cast keeps what float32 would lose: a series at a level of 1e8
    steps by 8 in float32, and one with a spread of 1e-7 falls under the windows' absolute std floor.
    Fine-tuning then sees the same shapes whatever the series' level and scale, as forecasting does.
    """
    series = _as_series_list(series)
    segments, left_out = [], []
    for k, s in enumerate(series):
        x = _values(s, k)
        pieces = _pieces(x)
        if not pieces:
            left_out.append(k)
        segments.extend(_standardised(piece) for piece in pieces)
    if not segments:
        raise ValueError("no series has two finite values close enough together: nothing to fine-tune on")
    if left_out:  # forecast later all the same, but never trained on: say so
        log.warning(
            "%d of %d series have no two observations within %d points of each other and are left out of "
            "fine-tuning (%s)",
            len(left_out),
            len(series),
            MAX_FILLED_GAP + 1,
            ", ".join(names[k] if names else f"series {k}" for k in left_out[:5])
            + (", ..." if len(left_out) > 5 else ""),
        )
    return segments


def _as_series_list(series) -> list:
    """A list of series from a list of them, one 1-D array or pandas Series, or a list of numbers (one series)."""
    if hasattr(series, "to_numpy") and getattr(series, "ndim", 0) == 1:  # a pandas Series
        series = series.to_numpy()
    if isinstance(series, np.ndarray):
        if series.ndim != 1:
            raise TypeError(
                f"series is an array of shape {series.shape}: pass a 1-D array, or a list of them (list(array.T) "
                "for one series per column)"
            )
        return [series]
    if not isinstance(series, (list, tuple)) or not series:
        raise TypeError(f"series must be a non-empty list of 1-D arrays, got {type(series).__name__}")
    if all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in series):
        return [np.asarray(series, dtype=np.float64)]  # the values of one series
    return list(series)


def _values(s, k: int) -> np.ndarray:
    """Series ``k`` as float64: numbers only (complex or dates were cast silently), NaN for missing, no inf."""
    raw = s.to_numpy() if hasattr(s, "to_numpy") else np.asarray(s)
    refused = TypeError(f"series {k} has values of dtype {raw.dtype}, not numbers; pass 1-D arrays of floats")
    if raw.dtype.kind in "cmMUS":  # complex, durations, dates, text: a cast would not fail, only mislead
        raise refused
    try:
        x = raw.astype(np.float64)
    except (TypeError, ValueError):  # objects that are no numbers
        raise refused from None
    if x.ndim != 1:
        raise ValueError(f"series {k} must be 1-D, got shape {x.shape}")
    infinite = np.flatnonzero(np.isinf(x))
    if infinite.size:  # as forecasting refuses them: NaN marks a missing value
        raise ValueError(
            f"series {k} holds {infinite.size} infinite value(s) (first at position {infinite[0]}); replace them by "
            "NaN (missing) or finite numbers"
        )
    return x


def _pieces(x: np.ndarray) -> list[np.ndarray]:
    """Runs of ``x`` between gaps longer than MAX_FILLED_GAP, shorter gaps filled as forecasting fills them
    (``preprocess.fill_missing``); each holds at least 2 observations."""
    from ..preprocess import fill_missing

    observed = np.flatnonzero(~np.isnan(x))
    if observed.size < 2:
        return []
    breaks = np.flatnonzero(np.diff(observed) > MAX_FILLED_GAP + 1)  # a long gap after observed[b]
    starts = np.r_[observed[0], observed[breaks + 1]]
    stops = np.r_[observed[breaks], observed[-1]] + 1
    # A run starts and ends with an observation, so two points or more means two observations or more.
    return [fill_missing(x[lo:hi]) for lo, hi in zip(starts, stops) if hi - lo >= 2]


def _standardised(x: np.ndarray) -> np.ndarray:
    from ..preprocess import mean_std  # as forecasting scales: safe at any magnitude

    mean, std = mean_std(x)
    return ((x - mean) / (std if std > 0 else 1.0)).astype(np.float32)


def _check_converged(model: TimeMoEForPrediction, losses: list[float], lr: float, probe: np.ndarray) -> None:
    """A step whose loss and gradients were finite can still write weights that overflow the next forward
    (a learning rate far too large); the trainer then skips every later step as non-finite and ends normally,
    and after the last step nothing looks at the weights at all. So score one training window with every head
    at every position here: say so now rather than at the first forecast, as NaN forecasts."""
    from ..forecast import eval_mode

    param = next(model.parameters())  # the model is back in the caller's dtype (bf16, say) by now
    window = torch.as_tensor(probe).to(device=param.device, dtype=param.dtype)[None]  # [1, S + 1]
    with torch.no_grad(), eval_mode(model):
        probe_loss = model(window[:, :-1], labels=window[:, 1:]).loss
    if math.isfinite(losses[-1]) and bool(torch.isfinite(probe_loss)):
        return
    first = next((k + 1 for k, loss in enumerate(losses) if not math.isfinite(loss)), None)
    where = (
        f"the loss is non-finite from step {first}"
        if first
        else "the weights score the training data as NaN/inf after the last step"
    )
    raise ValueError(
        f"fine-tuning diverged: {where} of {len(losses)} (losses {', '.join(f'{v:.3g}' for v in losses[:3])}"
        f"{', ...' if len(losses) > 3 else ''}); lower the learning rate (lr={lr:g})"
    )


def _check_steps_taken(history: list[dict], lr: float) -> None:
    """Steps with non-finite gradients are skipped (a spike now and then is survivable). A run that skipped most
    of them did not train, and one whose last two steps were skipped ended on weights whose gradients are NaN/inf
    (lr=1e3 left a model that forecast every series' mean), though losses and weights may look finite: both
    are errors rather than models."""
    skipped = [r["step"] for r in history if r["skipped"]]
    if diverged_by_skips(history):
        which = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
        raise ValueError(
            f"fine-tuning diverged: {len(skipped)} of {len(history)} steps had non-finite gradients and were "
            f"skipped (steps {which}); lower the learning rate (lr={lr:g})"
        )
    if skipped:
        log.warning("fine-tuning skipped %d of %d steps with non-finite gradients", len(skipped), len(history))


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def train_on_series(
    model: TimeMoEForPrediction,
    series,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    lr: float = 1e-4,
    batch_size: int = 16,
    max_length: int | None = None,
    weight_decay: float = 0.1,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.1,
    seed: int = 0,
    progress: bool = False,
    device: str | torch.device | None = None,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` in place on ``series`` (1-D arrays on their own scale, NaN allowed).

    ``series``: a list of 1-D arrays (or pandas Series), or one of them. Exactly one of ``steps`` / ``epochs``
    (default ``steps=100``). An epoch is as many steps as it takes to draw, in expectation, every point once:
    ceil(windows / batch_size), a training piece of n points (a series, or its part between gaps longer than
    MAX_FILLED_GAP, shorter gaps filled) making ceil(n / (max_length + 1)) windows; at least one step, so one
    epoch of fewer windows than batch_size draws each point more than once. ``device=None`` trains where the
    model already is. ``names``: what warnings call the series (an estimator's instance and column names; default
    their positions).
    Returns {"steps", "skipped_steps", "final_loss", "losses"}; the model is left in eval mode.
    """
    from ..data import ArraySource, PackedBatchStream, WindowSampler

    if not isinstance(model, TimeMoEForPrediction):
        raise TypeError(f"model must be a TimeMoEForPrediction, got {type(model).__name__}")
    if steps is not None and epochs is not None:
        raise ValueError("pass either steps or epochs, not both")
    _check_count("batch_size", batch_size)
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, np.integer)) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    if not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    from ..loading import check_seed

    check_seed(seed)
    if max_length is None:  # 512, or the whole window a smaller model takes
        max_length = min(512, model.config.max_position_embeddings)
    _check_count("max_length", max_length)
    if max_length < 2:
        raise ValueError(
            f"max_length must be at least 2 (a window of one input point teaches nothing), got {max_length}"
        )
    if max_length > model.config.max_position_embeddings:
        raise ValueError(
            f"max_length {max_length} exceeds the model's max_position_embeddings "
            f"({model.config.max_position_embeddings})"
        )
    segments = _segments(series, names)
    if epochs is not None:
        _check_count("epochs", epochs)
        windows = sum(math.ceil(len(s) / (max_length + 1)) for s in segments)
        steps = epochs * math.ceil(windows / batch_size)
    elif steps is None:
        steps = DEFAULT_STEPS
    _check_count("steps", steps)
    if warmup_steps > steps:
        log.warning(
            "warmup_steps %d exceeds the %d steps: the learning rate warms up over all of them", warmup_steps, steps
        )
    from ..loading import resolve_device, shares_cached_weights

    if shares_cached_weights(model):
        raise ValueError(
            "this model's weights are the checkpoint cache's, which every estimator that loaded the same "
            "checkpoint reads: training them in place would change all of their forecasts. Fine-tune a copy: "
            "loading.private_copy(model)"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            "no parameter of the model requires grad: call model.requires_grad_(True) first (or fine-tune "
            "loading.private_copy(model), a trainable copy)"
        )
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    cfg = TrainConfig(
        config="(model)",
        data=["(in-memory series)"],
        output_dir=None,
        max_steps=int(steps),
        batch_size=batch_size,
        max_length=max_length,
        # 17 points (16 of context) by default, fewer when max_length or the shortest series allow no more: a
        # series shorter than min_length is never drawn, so 17 silently left the short members of a panel out.
        min_length=max(2, min(17, max_length + 1, min(len(s) for s in segments))),
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=min(warmup_steps, int(steps)),
        min_lr_ratio=min_lr_ratio,
        seed=seed,
        progress=progress,
        log_every=max(1, int(steps)),
        fsdp=False,
        device=str(device),
        # Windows cropped from in-memory arrays cost little; a worker process would fork the caller (often a
        # notebook) for a run of ~100 steps. Fine-tuning draws in the training loop, as when it was timed.
        data_prefetch="off",
    )
    model.to(device)  # only now: a refused setting must leave the caller's model where it was
    # Users' series are kept as they are: no quality filter (intermittent demand is mostly zeros).
    sampler = WindowSampler(
        ArraySource(segments, name="series"),
        max_length=max_length,
        min_length=cfg.min_length,
        seed=seed,
        quality_filter=False,
    )
    # One window per row, padded only to the longest row: short series waste no compute.
    stream = PackedBatchStream(sampler, batch_size=batch_size, max_length=max_length, pack=False, pad_to="longest")
    was_dtype = next(model.parameters()).dtype
    if was_dtype != torch.float32:
        model.float()  # train fp32 master weights; cast back at the end
    # Seeded torch RNG (dropout, if any) without touching the caller's generator state.
    devices = [device] if device.type == "cuda" else []
    try:
        # Training asked for, whatever the caller's grad mode: a batch job wrapped in no_grad or inference_mode
        # failed with autograd's "element 0 of tensors does not require grad".
        with torch.random.fork_rng(devices=devices), torch.inference_mode(False), torch.enable_grad():
            torch.manual_seed(seed)
            trainer = Trainer(cfg, DistContext(device=device), model, [stream])
            history = trainer.run()
    finally:
        if was_dtype != torch.float32:
            model.to(was_dtype)
        model.eval()
    meta = model.config.extra.get(OUR_SECTION)
    if isinstance(meta, dict) and meta.get("name"):
        # A named checkpoint of ours (the embedded default) trained further is no longer it: saved, it still called
        # itself the default, "pretrained" by its recipe. Named as the trainer names a fine-tuned model.
        describe_as_trained_from(model.config, meta["name"])
    # The longest context it was trained on (max_length, or less on shorter series) is its default from now on:
    # fine-tuned on 256-point windows, the default model's MSE on ETTh1 was 0.71 from 4,096 points, 0.08 from 256.
    # Where the series, not max_length, set the windows, not below MIN_RECORDED_CONTEXT (nor max_length, nor the
    # model's own default): fine-tuned on 2-point series, every later forecast (after an update brought more
    # history) read 1 point and came out flat, without a word.
    trained = min(max_length, max(len(s) for s in segments) - 1)
    if trained < max_length:
        before = model.config.default_context_length or model.config.max_position_embeddings
        trained = max(trained, min(MIN_RECORDED_CONTEXT, max_length, before))
    model.config.record_default_context_length(trained)
    losses = [r["loss"] for r in history]
    _check_converged(model, losses, lr, max(segments, key=len)[-(max_length + 1) :])
    _check_steps_taken(history, lr)
    skipped = sum(bool(r["skipped"]) for r in history)
    log.info("fine-tuned %d steps: loss %.4f -> %.4f", len(losses), losses[0], losses[-1])
    return {"steps": len(losses), "skipped_steps": skipped, "final_loss": losses[-1], "losses": losses}
