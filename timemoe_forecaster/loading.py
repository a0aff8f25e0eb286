"""The model an estimator works with: checkpoint weights (cached read-only) or a fresh seeded model.

Loading a checkpoint twice would double memory and time, so loaded weights are cached per
(directory, file times, dtype, device). The cache is never handed out: every caller gets its own
module whose parameters alias the cached tensors and have ``requires_grad=False``. Anything that
trains (fine-tuning, pretraining) first takes :func:`private_copy`, so no estimator can change the
weights another one uses.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import CheckpointError, checkpoint_files, load_pretrained, resolve_directory
from .config import PRESETS, TimeMoEConfig
from .model import TimeMoEForPrediction

log = logging.getLogger(__name__)

PLACEHOLDER_MARK = "UNTRAINED PLACEHOLDER"


def resolve_device(device) -> torch.device:
    """``device`` as a torch.device; "auto" (or None) picks the GPU when there is one. A device that this
    machine lacks is refused here, by name, not later by torch from deep inside the model's first move."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}, but PyTorch sees no CUDA GPU here; use device='auto' or 'cpu'")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device={device!r}, but PyTorch sees only {count} CUDA GPU(s): cuda:0 to cuda:{count - 1}"
            )
    if resolved.type == "meta":  # accepted, it failed only at the first forecast ("Tensor.item() ... meta")
        raise ValueError("device='meta' holds no values to forecast with; use 'auto', 'cpu' or 'cuda'")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}, but the MPS backend is not available here; use device='auto' or 'cpu'")
    return resolved


# The dtypes the model runs in. float8 types are floating point too, but torch has no CPU kernels for them
# and the model's checks (isfinite, SiLU) fail deep inside torch at the first forecast.
MODEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def resolve_stored_dtype(dtype) -> torch.dtype | None:
    """A model's ``dtype`` where "auto" is allowed: None for "auto" (the dtype the weights are stored in), else
    :func:`resolve_dtype`'s (None is float32). The estimators check it at construction (not at the first fit)."""
    if isinstance(dtype, str) and dtype == "auto":
        return None
    try:
        return resolve_dtype(dtype)
    except ValueError as err:
        raise ValueError(f"{err}; or 'auto' for the dtype the weights are stored in") from None


def resolve_dtype(dtype) -> torch.dtype:
    """None means float32 (exact and safe on every device); strings like 'bfloat16' are accepted."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        resolved = getattr(torch, str(dtype).replace("torch.", ""), None)
    if resolved not in MODEL_DTYPES:
        names = ", ".join(repr(str(d).replace("torch.", "")) for d in MODEL_DTYPES)
        raise ValueError(f"dtype must be one of {names} (or the torch dtype), got {dtype!r}")
    return resolved


def _file_stamp(directory: Path) -> tuple:
    """What the checkpoint cache keys on: time and size of every file a load reads, shards in subfolders included,
    without listing the directory (one that may be entered but not listed failed here only)."""
    stamp = []
    for path in checkpoint_files(directory):
        try:
            stat = path.stat()
        except OSError:
            stamp.append((str(path.relative_to(directory)), None, None, None, None))
            continue
        # The inode and the change time too: a checkpoint written over another of the same architecture (same
        # sizes) and given its times (cp -p, rsync -a, tar, a file system with coarse times) kept serving the old
        # weights. A save replaces each file (a new inode), and no one can set a file's change time.
        stamp.append((str(path.relative_to(directory)), stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_ctime_ns))
    return tuple(stamp)


@functools.lru_cache(maxsize=4)
def _cached_weights(directory: str, stamp: tuple, dtype: torch.dtype | str, device: str) -> TimeMoEForPrediction:
    model = load_pretrained(directory, dtype=dtype, device=device)
    model.__dict__[_FINGERPRINT] = weights_fingerprint(model)
    _hold(model)
    return model.requires_grad_(False).eval()


# Where a model handed out over the cache keeps its checkpoint's fingerprint (a plain attribute, copied with it).
_FINGERPRINT = "_checkpoint_fingerprint"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A digest of ``model``'s weights (each tensor's name, shape, sum and norm in float64): tells whether a
    checkpoint reloaded later is the one a model was built from, without keeping a copy of its weights."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            stats = torch.stack(
                [tensor.sum(dtype=torch.float64), torch.linalg.vector_norm(tensor, dtype=torch.float64)]
            )
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(stats.cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def check_same_checkpoint(model: torch.nn.Module, fingerprint: str, model_path, stored: str) -> None:
    """Refuse ``model``, reloaded from ``model_path`` for an estimator stored without its zero-shot weights
    (``stored``: "TimeMoEForecaster was pickled", say), when its weights are not the ones it was stored with."""
    if (model.__dict__.get(_FINGERPRINT) or weights_fingerprint(model)) != fingerprint:
        raise ValueError(
            f"the checkpoint at model_path={model_path!r} has changed since this {stored} (a zero-shot model's "
            "weights are reloaded from it, not stored with it): fit it again"
        )


def cached_checkpoint_fingerprint(model: torch.nn.Module) -> str | None:
    """The fingerprint of the cached checkpoint whose tensors ``model`` reads (a zero-shot model from
    :func:`load_model`), or None for a model with weights of its own (fine-tuned, pretrained, a fresh preset)."""
    fingerprint = model.__dict__.get(_FINGERPRINT)
    return fingerprint if fingerprint is not None and shares_cached_weights(model) else None


def _aliasing_model(source: TimeMoEForPrediction, config: TimeMoEConfig) -> TimeMoEForPrediction:
    """A new module with ``config`` whose parameters alias ``source``'s tensors (read-only use); training it in
    place is refused (:func:`shares_cached_weights`)."""
    template = _alias_template(source, config)
    # A structural copy of the template: new modules, new Parameter objects (so one model's ``.to()`` or
    # ``requires_grad_`` leaves the others alone) over the same tensors. Building the module again instead ran
    # every initialiser on the meta device: load_model took ~37 ms on 2 CPU cores, and ~7 ms this way.
    shared = {id(p): torch.nn.Parameter(p.detach(), requires_grad=False) for p in template.parameters()}
    shared.update((id(b), b.detach()) for b in template.buffers())
    model = copy.deepcopy(template, memo=shared)
    _hold(model)
    return model.eval()


def _alias_template(source: TimeMoEForPrediction, config: TimeMoEConfig) -> TimeMoEForPrediction:
    """The aliasing module for (``source``, ``config``), built once and kept beside ``source`` in the cache."""
    key = json.dumps(config.to_dict(), sort_keys=True, default=str)
    with _TEMPLATES_LOCK:
        templates = source.__dict__.setdefault("_alias_templates", {})
        template = templates.get(key)
    if template is not None:
        return template
    with torch.device("meta"):
        template = TimeMoEForPrediction(copy.deepcopy(config))
    try:
        template.load_state_dict(source.state_dict(), assign=True)
    except RuntimeError as err:
        raise ValueError(
            f"config overrides change the shape of the checkpoint's weights ({str(err).splitlines()[-1].strip()}); "
            "only override settings such as max_position_embeddings, or pass a preset to build a fresh model"
        ) from None
    template.requires_grad_(False).eval()
    template.__dict__[_FINGERPRINT] = source.__dict__[_FINGERPRINT]
    _hold(template)
    with _TEMPLATES_LOCK:
        return templates.setdefault(key, template)


_TEMPLATES_LOCK = threading.Lock()


# The cached models and every model handed out over their tensors, held weakly (a dropped estimator's model
# leaves the set). Their tensors are alive, so no other tensor can sit at their addresses: a model with a tensor
# at one of them shares it. Comparing with live models, not stored addresses, keeps a copy whose new tensors
# reuse the memory of a freed cache entry from counting as shared.
_WEIGHT_HOLDERS: weakref.WeakSet = weakref.WeakSet()
# Adding to the set while another thread lists it raised "Set changed size during iteration" (a fine-tune's check
# next to concurrent loads).
_HOLDERS_LOCK = threading.Lock()


def _hold(model: TimeMoEForPrediction) -> None:
    with _HOLDERS_LOCK:
        _WEIGHT_HOLDERS.add(model)


def shares_cached_weights(model: torch.nn.Module) -> bool:
    """Whether ``model`` shares its tensors with the checkpoint cache or with another estimator's model, which
    training them in place would change too. A copy (``private_copy``, ``copy.deepcopy``, pickling) has tensors
    of its own."""
    mine = {p.data_ptr() for p in model.parameters()}
    with _HOLDERS_LOCK:
        holders = list(_WEIGHT_HOLDERS)
    return any(other is not model and any(p.data_ptr() in mine for p in other.parameters()) for other in holders)


def release_shared_weights(model: torch.nn.Module) -> None:
    """Give ``model`` tensors of its own where it shares them with the checkpoint cache or another caller's model,
    before it changes them in place (``load_state_dict``, ``reset_parameters``): copying into the shared tensors
    changed every other estimator on the checkpoint and every later load of it in the process."""
    if not shares_cached_weights(model):
        return
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone()
    model.__dict__.pop(_FINGERPRINT, None)  # its weights are its own from here on


def split_config(config) -> tuple[str | None, dict[str, Any]]:
    """``config`` parameter -> (preset name or None, overrides). Accepts None, a preset name, or a dict
    of overrides that may name a preset under the key "preset"."""
    if config is None:
        return None, {}
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"config {config!r} is not a preset; choose one of {sorted(PRESETS)} or pass a dict")
        return config, {}
    if isinstance(config, dict):
        overrides = dict(config)
        preset = overrides.pop("preset", None)
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"config['preset']={preset!r} is not a preset; choose one of {sorted(PRESETS)}")
        return preset, overrides
    raise TypeError(f"config must be None, a preset name or a dict of overrides, got {type(config).__name__}")


def check_config(config) -> None:
    """An estimator's ``config``: checked at construction (a preset name, or a dict of known keys), not at the
    first fit after the checkpoint loaded: ``config={"preset": "nope"}`` or ``config=3`` constructed silently."""
    import dataclasses

    _, overrides = split_config(config)
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TimeMoEConfig)})
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} in {config!r}")


def check_seed(seed) -> None:
    """A seed is a non-negative integer (what ``torch.manual_seed`` and numpy both accept)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


# Hub ids fetched in this process, and where to. Each fit resolved its model_path again, which for a hub id asks the
# hub: a request or two on every fit of a cross-validation, and a network timeout on each one when offline. A new
# revision pushed under the same id is picked up by a new process (or by passing the id to ``from_pretrained``).
_HUB_DIRECTORIES: dict[str, Path] = {}


def _checkpoint_directory(model_path) -> Path:
    """``resolve_directory(model_path)``, asking the hub at most once per process for each hub id."""
    if not isinstance(model_path, str) or Path(os.path.expanduser(model_path)).exists():
        return resolve_directory(model_path)  # None, a local path, or a bad value to be named by resolve_directory
    fetched = _HUB_DIRECTORIES.get(model_path)
    if fetched is None or not fetched.is_dir():  # a cleared hub cache is fetched again
        fetched = _HUB_DIRECTORIES[model_path] = resolve_directory(model_path)
    return fetched


# Outside inference mode whatever the caller's: a first load under torch.inference_mode() (a request handler wrapped
# in it) cached inference tensors, and every later load outside it failed on them; a fresh model made so could not
# be trained.
@torch.inference_mode(False)
def load_model(model_path=None, config=None, *, seed: int = 0, device="auto", dtype=None) -> TimeMoEForPrediction:
    """The model for an estimator (in eval mode, on ``device``).

    ``model_path=None`` and no preset: the embedded default checkpoint. A preset (``config="tiny"``
    or ``{"preset": "tiny", ...}``) with ``model_path=None``: a fresh model initialised from ``seed``.
    Other dict keys override the checkpoint's config where that keeps the weight shapes.
    """
    check_seed(seed)
    preset, overrides = split_config(config)
    # "auto": the dtype the checkpoint's weights are stored in (as from_pretrained takes it); a fresh model's float32.
    stored = resolve_stored_dtype(dtype)
    target_device, target_dtype = resolve_device(device), stored or torch.float32
    if preset is not None:
        if model_path is not None:
            raise ValueError(
                "config names a preset, which builds a fresh randomly initialised model, but model_path is also "
                "set; pass model_path=None for a fresh model, or a dict of overrides to load model_path"
            )
        try:
            cfg = TimeMoEConfig.from_preset(preset, **overrides)
        except TypeError as err:
            raise ValueError(f"unknown config key in {overrides}: {err}") from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = TimeMoEForPrediction(cfg)
            return model.to(device=target_device, dtype=target_dtype).eval()
    try:
        directory = _checkpoint_directory(model_path)
    except CheckpointError as err:
        raise ValueError(f"model_path: {err}") from None
    except TypeError as err:
        raise TypeError(f"model_path: {err}") from None
    as_stored = "auto" if stored is None else stored
    cached = _cached_weights(str(directory.resolve()), _file_stamp(directory), as_stored, str(target_device))
    cfg = cached.config
    if overrides:
        try:
            cfg = cfg.replace(**overrides)
        except TypeError as err:
            raise ValueError(f"unknown config key in {overrides}: {err}") from None
    if any(PLACEHOLDER_MARK in str(v) for v in cfg.extra.values()):
        log.warning(
            "the checkpoint at %s is an UNTRAINED PLACEHOLDER with random weights: its forecasts are meaningless. "
            "Pass model_path= a pretrained checkpoint",
            directory,
        )
    return _aliasing_model(cached, cfg)


def private_copy(model: TimeMoEForPrediction) -> TimeMoEForPrediction:
    """A deep copy with its own trainable weights (for fine-tuning and pretraining)."""
    clone = copy.deepcopy(model)
    clone.__dict__.pop(_FINGERPRINT, None)  # its weights are its own from here on
    return clone.requires_grad_(True)


def check_training_settings(settings: dict | None, name: str = "fine-tuning") -> None:
    """Refuse keys ``train_on_series`` does not take. The estimators call it at construction: a misspelt key
    ("stepz") failed only at fit, after the model had loaded, and in a grid search every candidate failed."""
    from .train.finetune import train_on_series

    # `names` too: the estimators name the series themselves, and a `names` setting made fit fail with
    # "train_on_series() got multiple values for keyword argument 'names'".
    accepted = set(inspect.signature(train_on_series).parameters) - {"model", "series", "names"}
    unknown = sorted(set(settings or {}) - accepted)
    if unknown:
        raise ValueError(f"unknown {name} setting(s) {unknown}; accepted: {sorted(accepted)}")
    # Values too, at construction: fine_tune={"batch_size": 0} failed at fit, after the model had loaded, with a
    # message that read like the estimator's own batch_size (and {"lr": "1e-3"} named an internal class).
    for key, value in (settings or {}).items():
        if key in _SETTING_COUNTS and value is not None:
            least = _SETTING_COUNTS[key]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"{name} setting {key!r} must be an integer >= {least}, got {value!r}")
        elif key in _SETTING_RATES:
            low, high = _SETTING_RATES[key]
            number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and low <= value <= high) or (key == "lr" and value == 0):
                raise ValueError(f"{name} setting {key!r} must be a number in [{low:g}, {high:g}], got {value!r}")


# What train_on_series takes for its counts (the least value) and rates (their range), checked by the estimators.
_SETTING_COUNTS = {"steps": 1, "epochs": 1, "batch_size": 1, "max_length": 2, "warmup_steps": 0}
_SETTING_RATES = {"lr": (0.0, 1e30), "weight_decay": (0.0, 1e30), "min_lr_ratio": (0.0, 1.0)}


def train_private_copy(
    model: TimeMoEForPrediction, series: list, settings: dict | None, *, seed: int, progress: bool, names=None
):
    """Fine-tune a private copy of ``model`` on ``series`` (1-D float arrays, called ``names`` in warnings);
    returns (copy, result dict)."""
    from .train.finetune import train_on_series

    settings = dict(settings or {})
    check_training_settings(settings)
    if "steps" not in settings and "epochs" not in settings:
        settings["steps"] = 100
    settings.setdefault("seed", seed)
    settings.setdefault("progress", progress)
    param = next(model.parameters())
    settings.setdefault("device", param.device)
    with torch.inference_mode(False):  # weights that can be trained, under a caller's inference_mode too
        trained = private_copy(model)
    result = train_on_series(trained, series, names=names, **settings)
    trained.requires_grad_(False).eval()
    return trained, result
