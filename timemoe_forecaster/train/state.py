"""Training checkpoints: everything a resumed run needs, written atomically.

Layout of ``<output_dir>/checkpoints/``::

    step_00000100/       one checkpoint (a loadable model directory plus the training state)
        config.json      \\ the model, official layout: TimeMoEForPrediction.from_pretrained(this dir)
        model.safetensors/  works; fp32, whatever the training precision
        optimizer.pt     full (unsharded) optimizer state dict keyed by parameter name
        trainer_state.pt step, scheduler, data-stream states of every shard, RNG states of every rank,
                         the TrainConfig used
    latest               name of the newest complete checkpoint

A checkpoint is built in a hidden temporary directory and renamed into place, then ``latest`` is
replaced (temp file + rename), so a crash at any moment leaves the previous checkpoint usable. State
files are read with ``torch.load(weights_only=True)``: no code from a checkpoint ever runs.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from ..checkpoint import (
    SAFE_SINGLE,
    _atomic_write,
    from_official,
    fsync_path,
    read_weights,
    to_official,
    write_official,
)
from ..config import TimeMoEConfig

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
OPTIMIZER_FILE = "optimizer.pt"
TRAINER_FILE = "trainer_state.pt"


# RNG ------------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """Python, numpy and torch (CPU and current CUDA device) generator states of this process."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        # numpy's tuple holds an array; store it as a tensor so weights_only loading accepts it
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


# Model weights --------------------------------------------------------------------------------
def write_model(directory: Path, config: TimeMoEConfig, state: dict[str, torch.Tensor], dtype=None) -> None:
    """Write a loadable model directory (config.json + model.safetensors) from a full state dict."""
    tensors = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in state.items()}
    write_official(directory, config, to_official(tensors))  # replaces an earlier save's shards too


def has_final_model(directory: str | Path, checkpoint: str | Path | None) -> bool:
    """Whether :func:`write_model` completed in ``directory`` (it writes config.json last) after ``checkpoint`` was
    saved: a model older than the checkpoint is an earlier step's, left by a run that died before its final save."""
    config, weights = Path(directory) / "config.json", Path(directory) / SAFE_SINGLE
    if not (config.exists() and weights.exists()):
        return False
    if checkpoint is None:
        return True
    saved = max((f.stat().st_mtime_ns for f in Path(checkpoint).rglob("*") if f.is_file()), default=0)
    return weights.stat().st_mtime_ns >= saved and config.stat().st_mtime_ns >= saved


def read_model(directory: Path) -> dict[str, torch.Tensor]:
    """Internal-name state dict of a model directory (as written by :func:`write_model`)."""
    return from_official(read_weights(Path(directory)))


# Checkpoints ----------------------------------------------------------------------------------
def save_checkpoint(
    output_dir: str | Path,
    step: int,
    config: TimeMoEConfig,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    trainer_state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write ``checkpoints/step_{step}`` atomically, point ``latest`` at it, prune old ones."""
    root = Path(output_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = root / name
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{name}-"))
    try:
        try:
            write_model(tmp, config, model_state)
            torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
            torch.save({**trainer_state, "step": step}, tmp / TRAINER_FILE)
        except (OSError, RuntimeError) as err:  # torch.save on a full disk: "basic_ios::clear: iostream error"
            free = shutil.disk_usage(root).free
            raise OSError(
                f"writing checkpoint {final} failed ({err}); {free / 2**30:.2f} GiB free on its disk. The previous "
                "checkpoint is intact: if the disk is full, free space (or lower --keep-checkpoints) and --resume"
            ) from err
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        for written in (tmp / OPTIMIZER_FILE, tmp / TRAINER_FILE, tmp):  # on disk before the rename makes it count
            fsync_path(written)
        if final.exists():  # re-saving the same step (e.g. the final save after a periodic one)
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_path(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for left in root.glob(".tmp-step_*"):  # saves killed half-way: nothing else ever removes them
        shutil.rmtree(left, ignore_errors=True)
    _atomic_write(root / LATEST, lambda p: Path(p).write_text(name + "\n"))
    _prune(root, keep_last, keep=name)
    log.info("saved checkpoint %s", final)
    return final


def latest_checkpoint(output_dir: str | Path, intact: bool = False) -> Path | None:
    """The newest complete checkpoint under ``output_dir``, or None.

    ``intact=True`` (for resuming) also skips checkpoints whose files are missing, empty or cut short
    (:func:`checkpoint_damage`), with a warning naming them: a crash, a full disk or a power loss while one
    was written must not block the resume when an older checkpoint is intact."""
    root = Path(output_dir) / CHECKPOINTS
    pointer = root / LATEST
    candidates = []
    if pointer.exists():
        candidates.append(root / pointer.read_text().strip())
    # ``latest`` missing or stale: the highest complete step directories
    candidates += sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True) if root.exists() else []
    skipped = []
    for path in dict.fromkeys(candidates):  # the pointer's target comes first, once
        if not intact and not (path / TRAINER_FILE).exists():
            continue
        # Resuming: a step directory exists only by the rename that completes a save, so one without its trainer
        # state lost a file since; it was passed over without the warning the other damage gets.
        damage = checkpoint_damage(path) if intact else None
        if damage is None:
            for bad, why in skipped:
                log.warning("checkpoint %s is damaged (%s); resuming from %s instead. Delete it", bad, why, path)
            return path
        skipped.append((path, damage))
    if skipped:
        raise ValueError(
            f"every checkpoint under {root} is damaged ({'; '.join(f'{p.name}: {why}' for p, why in skipped)}); "
            "start again without --resume in a new --output-dir"
        )
    return None


def checkpoint_damage(path: Path) -> str | None:
    """Why a checkpoint directory cannot be read, judged from its files' framing without reading a tensor:
    a file missing, empty or cut short (its end records its length). None when it looks whole."""
    for name in ("config.json", OPTIMIZER_FILE, TRAINER_FILE):
        if not (path / name).is_file() or (path / name).stat().st_size == 0:
            return f"{name} is missing or empty"
    for name in (OPTIMIZER_FILE, TRAINER_FILE):  # torch.save writes zip archives: the directory is at the end
        try:
            zipfile.ZipFile(path / name).close()
        except (zipfile.BadZipFile, OSError):
            return f"{name} is cut short or damaged"
    try:
        json.loads((path / "config.json").read_text())
    except (ValueError, OSError):
        return "config.json does not read as JSON"
    weights = path / SAFE_SINGLE
    if not weights.is_file():
        return f"{SAFE_SINGLE} is missing"
    try:  # reads the header only, and checks that the file covers every tensor it lists
        with safe_open(weights, "pt"):
            pass
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for every framing problem
        return f"{SAFE_SINGLE} is cut short or damaged ({err})"
    return None


# Parameters that were several once and are one now, as (old names, new name, the dim they join along),
# matched at the end of a parameter's name. Before session 6 the routed experts' gate and up were two
# parameters; before session 11 q, k and v were three.
_JOINS = (
    (("w_gate_EFH", "w_up_EFH"), "w_gate_up_EGH", 1),
    (("q_proj.weight", "k_proj.weight", "v_proj.weight"), "qkv_proj.weight", 0),
    (("q_proj.bias", "k_proj.bias", "v_proj.bias"), "qkv_proj.bias", 0),
)


def upgrade_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict (keyed by parameter names) written before some parameters were joined, in the
    layout the model has now: per-element states concatenated the way the parameters are, the step kept.
    Raises ValueError when only some parts of a joined parameter have state (a part was frozen)."""
    per_param = dict(state.get("state", {}))
    renamed: dict[str, str | None] = {}
    for old_leaves, new_leaf, dim in _JOINS:
        prefixes = {k[: -len(leaf)] for k in per_param for leaf in old_leaves if k.endswith("." + leaf)}
        for prefix in sorted(prefixes):
            old_keys = [prefix + leaf for leaf in old_leaves]
            missing = [key for key in old_keys if key not in per_param]
            if missing:
                # A part frozen when the checkpoint was written has no moments; the joined parameter
                # needs them for every part, and inventing zeros would silently change the update.
                raise ValueError(
                    f"cannot resume this optimizer state: {prefix + new_leaf} joins {', '.join(old_keys)}, "
                    f"but the checkpoint has no optimizer state for {', '.join(missing)} (frozen when it was "
                    "written?). Start from its weights with a fresh optimizer instead (init_from)."
                )
            parts = [per_param.pop(key) for key in old_keys]
            per_param[prefix + new_leaf] = {
                name: torch.cat([part[name] for part in parts], dim=dim) if value.dim() > 0 else value
                for name, value in parts[0].items()
            }
            renamed.update(dict.fromkeys(old_keys[1:]))
            renamed[old_keys[0]] = prefix + new_leaf
    if not renamed:
        return state
    groups = []
    for group in state.get("param_groups", []):
        params = [renamed.get(p, p) for p in group["params"] if renamed.get(p, p) is not None]
        groups.append({**group, "params": params})
    log.info("upgraded %d optimizer states to joined parameters", len(renamed))
    return {**state, "state": per_param, "param_groups": groups}


def load_checkpoint(path: str | Path, weights: bool = True) -> dict[str, Any]:
    """Model state (internal names), optimizer state and trainer state of one checkpoint directory.

    ``weights=False`` skips the model and optimizer files (empty dicts instead).
    """
    path = Path(path)
    for required in ("config.json", OPTIMIZER_FILE, TRAINER_FILE):
        if not (path / required).exists():
            raise ValueError(f"{path} is not a training checkpoint: {required} is missing")
    return {
        "model": read_model(path) if weights else {},
        "optimizer": upgrade_optimizer_state(_read_state(path / OPTIMIZER_FILE)) if weights else {},
        "trainer": _checked_trainer_state(_read_state(path / TRAINER_FILE), path / TRAINER_FILE),
        "config": TimeMoEConfig.from_json_file(path / "config.json"),
    }


# What a resume reads from the trainer state; a file without them failed with a bare KeyError deep in the resume.
TRAINER_STATE_KEYS = {"step": int, "num_shards": int, "scheduler": dict, "data": list, "rng": list}


def _checked_trainer_state(state: Any, file: Path) -> dict:
    wrong = (
        list(TRAINER_STATE_KEYS)
        if not isinstance(state, dict)
        else [k for k, kind in TRAINER_STATE_KEYS.items() if not isinstance(state.get(k), kind)]
    )
    if not wrong and "last_epoch" not in state["scheduler"]:
        wrong = ["scheduler.last_epoch"]
    if wrong:
        raise ValueError(
            f"{file} is not a trainer state this library writes (missing or malformed: {', '.join(wrong)}); "
            f"delete {file.parent} to resume from the checkpoint before it"
        )
    return state


def _read_state(file: Path) -> Any:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as err:
        # Damaged inside (a file cut short is skipped before, by latest_checkpoint), or holding what weights_only
        # refuses to unpickle: torch's message ends with the reason.
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        if "Unsupported global" in str(err):  # whole, but not a file this library writes: deleting is not the fix
            raise ValueError(
                f"{file} holds objects that safe loading (weights_only=True) refuses ({lines[-1]}); it was not "
                "written by this library's trainer"
            ) from err
        raise ValueError(
            f"{file} cannot be read ({type(err).__name__}: {lines[-1] if lines else 'damaged'}); "
            f"delete {file.parent} to resume from the checkpoint before it"
        ) from err


def _prune(root: Path, keep_last: int, keep: str) -> None:
    if keep_last < 1:
        return
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep_last]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
