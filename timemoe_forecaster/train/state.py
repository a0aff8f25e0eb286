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

import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import SAFE_SINGLE, _atomic_write, from_official, read_weights, to_official, write_official
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
        write_model(tmp, config, model_state)
        torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
        torch.save({**trainer_state, "step": step}, tmp / TRAINER_FILE)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        if final.exists():  # re-saving the same step (e.g. the final save after a periodic one)
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for left in root.glob(".tmp-step_*"):  # saves killed half-way: nothing else ever removes them
        shutil.rmtree(left, ignore_errors=True)
    _atomic_write(root / LATEST, lambda p: Path(p).write_text(name + "\n"))
    _prune(root, keep_last, keep=name)
    log.info("saved checkpoint %s", final)
    return final


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``output_dir``, or None."""
    root = Path(output_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.exists():
        path = root / pointer.read_text().strip()
        if (path / TRAINER_FILE).exists():
            return path
    # ``latest`` missing or stale: fall back to the highest complete step directory
    done = sorted(p for p in root.glob("step_*") if (p / TRAINER_FILE).exists()) if root.exists() else []
    return done[-1] if done else None


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
        "optimizer": upgrade_optimizer_state(torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
        if weights
        else {},
        "trainer": torch.load(path / TRAINER_FILE, map_location="cpu", weights_only=True),
        "config": TimeMoEConfig.from_json_file(path / "config.json"),
    }


def _prune(root: Path, keep_last: int, keep: str) -> None:
    if keep_last < 1:
        return
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep_last]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
