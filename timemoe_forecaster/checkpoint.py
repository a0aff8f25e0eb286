"""Checkpoints in the official layout: config.json + model.safetensors (or shards + index).

Internally the routed experts of a layer are stacked ``[E, …]`` and q/k/v are one joined ``nn.Linear``;
on disk they are the official keys ``model.layers.{l}.ffn_layer.experts.{e}.{gate,up,down}_proj.weight``
and ``model.layers.{l}.self_attn.{q,k,v}_proj.{weight,bias}``. Loading never executes code from the
checkpoint: safetensors, or ``torch.load(weights_only=True)`` for ``.bin``.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import TimeMoEConfig, misspelt_key_hint, read_json
from .extras import missing
from .model.modeling import TimeMoEForPrediction

log = logging.getLogger(__name__)

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
# Internal stacked expert tensors -> the official per-expert projections they hold, in order along dim 1
# (``w_gate_up_EGH`` keeps each expert's gate rows, then its up rows).
_STACKED = {"w_gate_up_EGH": ("gate_proj", "up_proj"), "w_down_EHF": ("down_proj",)}
_OFFICIAL_EXPERT = re.compile(
    r"^(model\.layers\.\d+\.ffn_layer)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$"
)
# Internal joined linears -> the official linears whose rows they hold, in order (weight and bias alike).
_JOINED = {"qkv_proj": ("q_proj", "k_proj", "v_proj")}
_OFFICIAL_PART = {part: joined for joined, parts in _JOINED.items() for part in parts}


class CheckpointError(ValueError):
    """A checkpoint directory or file that cannot be loaded; the message names the file and key."""


# Key mapping ---------------------------------------------------------------------------------
def _qkv_sizes(rows: int, inputs: int) -> list[int]:
    """Rows of q, k and v in a joined q/k/v linear: q maps hidden to hidden, k and v share the rest
    (grouped-query attention makes them narrower than q)."""
    return [inputs, (rows - inputs) // 2, (rows - inputs) // 2]


def to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Internal names -> official names (stacked experts split per expert, joined linears split)."""
    out = {}
    for key, tensor in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        module_prefix, _, module = prefix.rpartition(".")
        if leaf in _STACKED:
            projections = _STACKED[leaf]
            for e in range(tensor.shape[0]):
                for proj, part in zip(projections, tensor[e].chunk(len(projections), dim=0), strict=True):
                    out[f"{prefix}.experts.{e}.{proj}.weight"] = part
        elif module in _JOINED:
            inputs = state_dict[f"{prefix}.weight"].shape[1]  # a bias takes its sizes from its weight
            parts = tensor.split(_qkv_sizes(tensor.shape[0], inputs), dim=0)
            for proj, part in zip(_JOINED[module], parts, strict=True):
                out[f"{module_prefix}.{proj}.{leaf}"] = part
        else:
            out[key] = tensor
    return out


def _join_linears(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official q/k/v linears (weights and biases) -> the joined internal tensors."""
    out, parts = {}, {}
    for key, tensor in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        module_prefix, _, module = prefix.rpartition(".")
        if module in _OFFICIAL_PART:
            parts.setdefault((module_prefix, _OFFICIAL_PART[module], leaf), {})[module] = tensor
        else:
            out[key] = tensor
    for (module_prefix, joined, leaf), found in parts.items():
        for proj in _JOINED[joined]:
            if proj not in found:
                raise CheckpointError(f"missing key {module_prefix}.{proj}.{leaf}")
            # A 1-D weight failed below as "tuple index out of range", naming no tensor.
            dims = {"weight": 2, "bias": 1}.get(leaf)
            if dims is not None and found[proj].dim() != dims:
                raise CheckpointError(
                    f"{module_prefix}.{proj}.{leaf} has shape {tuple(found[proj].shape)}; a {leaf} here is {dims}-D"
                )
    for (module_prefix, joined, leaf), found in parts.items():
        tensors = [found[proj] for proj in _JOINED[joined]]
        rows = [t.shape[0] for t in tensors]
        # The joined tensor is split back by _qkv_sizes (a bias by its weight's sizes, as in to_official), and the
        # model checks only its total: k and v of 6 and 10 rows instead of 8 and 8 loaded with rows moved between
        # k and v.
        weight_q = parts.get((module_prefix, joined, "weight"), {}).get("q_proj")
        inputs = weight_q.shape[1] if weight_q is not None else tensors[0].shape[-1]
        fits = rows == _qkv_sizes(sum(rows), inputs)
        if len({tensor.shape[1:] for tensor in tensors}) != 1 or not fits:
            shapes = ", ".join(f"{proj}: {tuple(t.shape)}" for proj, t in zip(_JOINED[joined], tensors, strict=True))
            raise CheckpointError(f"{module_prefix}: {leaf} shapes that do not fit together ({shapes})")
        if f"{module_prefix}.{joined}.{leaf}" in out:  # the joined tensor stored too: one of the two was dropped
            raise CheckpointError(f"{module_prefix}: both {joined}.{leaf} and its q/k/v parts are stored")
        out[f"{module_prefix}.{joined}.{leaf}"] = torch.cat(tensors, dim=0)
    return out


def from_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official names -> internal names (per-expert tensors stacked in expert order, linears joined)."""
    out, experts = {}, {}
    for key, tensor in _join_linears(state_dict).items():
        match = _OFFICIAL_EXPERT.match(key)
        if match is None:
            out[key] = tensor
            continue
        prefix, e, proj = match.group(1), int(match.group(2)), match.group(3)
        same = experts.setdefault((prefix, proj), {})
        if e in same:  # experts.01 and experts.1: the later one silently won
            raise CheckpointError(f"two tensors for {prefix}.experts.{e}.{proj}.weight (the second: {key})")
        same[e] = tensor
    stacked: dict[tuple[str, str], torch.Tensor] = {}
    for (prefix, proj), by_expert in experts.items():
        if sorted(by_expert) != list(range(len(by_expert))):
            # The first gap, found without building range(max index): one tensor named experts.999999999999
            # filled the memory.
            missing = next(e for e in range(len(by_expert) + 1) if e not in by_expert)
            raise CheckpointError(f"missing key {prefix}.experts.{missing}.{proj}.weight")
        first = by_expert[0]
        odd = next((e for e in range(len(by_expert)) if by_expert[e].shape != first.shape or first.dim() != 2), None)
        if odd is not None:  # torch.stack's own words named no tensor ("... at entry 2")
            raise CheckpointError(
                f"{prefix}.experts.{odd}.{proj}.weight has shape {tuple(by_expert[odd].shape)}, but "
                f"{prefix}.experts.0.{proj}.weight has shape {tuple(first.shape)} (each expert's must be the same 2-D "
                "shape)"
            )
        stacked[prefix, proj] = torch.stack([by_expert[e] for e in range(len(by_expert))])
    for prefix in sorted({prefix for prefix, _ in stacked}):
        for leaf, projections in _STACKED.items():
            parts = [stacked.get((prefix, proj)) for proj in projections]
            if all(part is None for part in parts):
                continue
            for proj, part in zip(projections, parts, strict=True):
                if part is None:
                    raise CheckpointError(f"missing key {prefix}.experts.0.{proj}.weight")
            if len({part.shape[0] for part in parts}) != 1:
                counts = ", ".join(f"{proj}: {part.shape[0]}" for proj, part in zip(projections, parts, strict=True))
                raise CheckpointError(f"{prefix}: different numbers of experts per projection ({counts})")
            if f"{prefix}.{leaf}" in out:
                raise CheckpointError(f"{prefix}: both {leaf} and the per-expert tensors it stacks are stored")
            out[f"{prefix}.{leaf}"] = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    return out


# Saving --------------------------------------------------------------------------------------
def _parse_size(size: int | str | None) -> int | None:
    if size is None:
        return None
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        value = size
    elif isinstance(size, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", size, re.IGNORECASE)
        if not match:
            raise ValueError(f"cannot read shard size {size!r}; use bytes or e.g. '16MiB', '2GB'")
        unit = (match.group(2) or "B").upper()
        scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
        value = float(match.group(1)) * scale
    else:
        raise ValueError(f"max_shard_size must be bytes or a string such as '16MiB', got {size!r}")
    if not value >= 1:  # 0 or less wrote one file per tensor
        raise ValueError(f"max_shard_size must be at least 1 byte, got {size!r}")
    return int(value)


def _atomic_write(path: Path, write) -> None:
    """Write ``path`` through a temporary file renamed into place, flushed to disk first: after a power loss
    or an OS crash a renamed file whose data never reached the disk reads back empty or cut short."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints are shared files
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    # Earlier writes killed half-way (can be gigabytes): mkstemp's names, the prefix and 8 characters, nothing else.
    ours = re.compile(re.escape(f".{path.name}.tmp-") + r"[a-z0-9_]{8}")
    for left in path.parent.glob(f".{path.name}.tmp-*"):
        if ours.fullmatch(left.name):
            left.unlink(missing_ok=True)


def fsync_path(path) -> None:
    """Flush a file's or a directory's contents to disk (directories: where the platform allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # a directory on Windows
    try:
        os.fsync(fd)
    except OSError:
        pass  # file systems that do not sync directories
    finally:
        os.close(fd)


# The files a save writes: replaced by the next save, while anything else in the folder is the user's.
_OUR_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def save_pretrained(
    model: TimeMoEForPrediction, directory, max_shard_size: int | str | None = None, dtype=None
) -> None:
    """Write config.json and the weights; shards (with an index) when larger than ``max_shard_size``.

    A shard holds whole tensors, so one tensor larger than the limit gets a shard of its own. See
    :func:`write_official` for the order of the files.
    """
    from .loading import resolve_dtype  # loading imports this module

    dtype = resolve_dtype(dtype) if dtype is not None else None
    limit = _parse_size(max_shard_size)
    state = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    write_official(directory, model.config, to_official(state), limit)


def write_official(
    directory, config: TimeMoEConfig, state: dict[str, torch.Tensor], max_shard_bytes: int | None = None
) -> None:
    """Write ``state`` (official names) and config.json into ``directory``.

    The weights are written first, each file atomically; then a previous save's shard index that this save
    does not replace is removed (the loader prefers an index to model.safetensors, so an interrupted save
    would have loaded the old shards under the new config); config.json comes last; then the previous save's
    other weight files (a single file or shards) go. Any other file in the folder stays.
    """
    # "~" as the loader reads it: saved into a folder literally named "~", a model was then loaded from $HOME.
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.clone() for k, v in state.items()}  # expert slices become own storage
    stored_dtype = str(next(iter(state.values())).dtype).replace("torch.", "")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(state):
        nbytes = state[key].numel() * state[key].element_size()
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = state[key]
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        _atomic_write(directory / SAFE_SINGLE, lambda p: save_file(shards[0], p, metadata=metadata))
        written = {SAFE_SINGLE}
        if (directory / SAFE_INDEX).is_file():
            (directory / SAFE_INDEX).unlink()
    else:
        weight_map, total, written = {}, 0, set()
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _atomic_write(directory / name, lambda p, s=shard: save_file(s, p, metadata=metadata))
            written.add(name)
            for key, tensor in shard.items():
                weight_map[key] = name
                total += tensor.numel() * tensor.element_size()
        index = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True)
        _atomic_write(directory / SAFE_INDEX, lambda p: Path(p).write_text(index + "\n"))
        written.add(SAFE_INDEX)
    _copy_code_files(config, directory)
    _atomic_write(directory / "config.json", lambda p: config.to_json_file(p, torch_dtype=stored_dtype))
    for path in directory.iterdir():
        ours = path.name in (SAFE_SINGLE, SAFE_INDEX) or _OUR_SHARD.fullmatch(path.name)
        if ours and path.name not in written and path.is_file():
            path.unlink()


def _auto_map_modules(config: TimeMoEConfig) -> list[str]:
    """The files of the modules that config.json's ``auto_map`` names in the checkpoint's own folder
    ("modeling_time_moe.TimeMoeForPrediction" -> modeling_time_moe.py; "owner/repo--module.Class" lives
    elsewhere)."""
    auto_map = config.extra.get("auto_map")
    if not isinstance(auto_map, dict):
        return []
    refs = [r for value in auto_map.values() for r in (value if isinstance(value, (list, tuple)) else [value])]
    return sorted({r.rsplit(".", 1)[0] + ".py" for r in refs if isinstance(r, str) and "." in r and "--" not in r})


def _copy_code_files(config: TimeMoEConfig, directory: Path) -> None:
    """The official checkpoints' Python files, copied beside a save of a model loaded from one.

    config.json keeps ``auto_map``, and the official loader (``AutoModelForCausalLM.from_pretrained(path,
    trust_remote_code=True)``) imports the modules it names from the saved folder: a save without them (a
    fine-tune of an official checkpoint, say) could not be loaded that way. The top-level ``.py`` files of the
    folder the config was read from are copied as bytes (the modules import each other); nothing here imports
    or runs them."""
    modules = _auto_map_modules(config)
    if not modules:
        return
    source = getattr(config, "code_source", None)
    if source is not None and Path(source).is_dir() and Path(source).resolve() != directory.resolve():
        if any((Path(source) / name).is_file() for name in modules):
            for path in sorted(Path(source).glob("*.py")):
                if path.is_file():
                    shutil.copyfile(path, directory / path.name)
    missing = [name for name in modules if not (directory / name).is_file()]
    if missing:
        log.warning(
            "config.json keeps its auto_map, which names %s: not in %s, so the official loader "
            "(AutoModelForCausalLM with trust_remote_code=True) cannot load this save until they are copied there "
            "from the original checkpoint; timemoe_forecaster does not need them",
            ", ".join(missing),
            directory,
        )


# Loading -------------------------------------------------------------------------------------
def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    _check_readable(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({err}); it may be truncated or in another format"
        ) from None


def _read_bin(path: Path) -> dict[str, torch.Tensor]:
    _check_readable(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        raise CheckpointError(
            f"{path} could not be loaded with weights_only=True ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else 'no message'}): it is cut short, damaged, or holds "
            "objects other than tensors; convert it to safetensors"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors under string names")
    return state


def _check_readable(path: Path) -> None:
    """A weights file that is a regular file this process may read: a FIFO blocked the load forever, and a file
    without read permission was reported as "No such file or directory ... it may be truncated"."""
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file")
    try:
        with path.open("rb"):
            pass
    except PermissionError:
        raise CheckpointError(f"{path} cannot be read: permission denied") from None


def _check_tensors(state: dict, directory: Path) -> None:
    """Every stored tensor a dense floating-point one with finite values: integer and bool tensors were promoted
    to float when q/k/v or the experts were joined, and a sparse one failed later inside torch."""
    for key, tensor in state.items():
        if tensor.layout != torch.strided:
            raise CheckpointError(f"key {key} in {directory} is a {tensor.layout} tensor; weights are dense")
        if not tensor.dtype.is_floating_point:
            raise CheckpointError(f"key {key} in {directory} has non-float dtype {tensor.dtype}")
        # A NaN or infinity loaded silently and made every forecast fail.
        bad = count_non_finite(tensor)
        if bad:
            raise CheckpointError(
                f"key {key} in {directory} holds {bad:,} NaN or infinite value(s) of {tensor.numel():,}: "
                "the weights are damaged (a diverged training run saves such weights)"
            )


def count_non_finite(tensor: torch.Tensor) -> int:
    """How many NaN/inf values a tensor holds. One sum finds whether there are any (13 ms for base's 113M weights
    on two cores, against 1-3 s for isfinite); the exact count runs only when the sum is not finite, which a sum
    of huge finite values can also be."""
    if tensor.element_size() == 1:  # float8: the CPU has no sum kernel for it
        tensor = tensor.float()
    if bool(torch.isfinite(tensor.sum())):
        return 0
    return int((~tensor.isfinite()).sum())


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory under their official names."""
    for index_name, single, read in ((SAFE_INDEX, SAFE_SINGLE, _read_safetensors), (BIN_INDEX, BIN_SINGLE, _read_bin)):
        if _reads_index(directory, index_name, single):
            return _read_shards(directory, index_name, read)
        if (directory / single).exists():
            if (directory / index_name).exists():
                log.warning(
                    "%s names shards that are gone; reading %s beside it (an unsharded save over a sharded one "
                    "leaves the old index behind)",
                    directory / index_name,
                    single,
                )
            return read(directory / single)
    raise CheckpointError(
        f"no weights in {directory}: expected {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX}"
    )


def _reads_index(directory: Path, index_name: str, single: str) -> bool:
    """Whether a load reads ``index_name``'s shards: when it exists, unless the shards it names are gone and a
    single weights file stands beside it. transformers' ``save_pretrained`` leaves the old index when an unsharded
    save replaces a sharded one, and loads the single file; such folders were refused here."""
    if not (directory / index_name).is_file():
        return False
    if not (directory / single).exists():
        return True  # the load names what is wrong with the index or its shards
    try:
        names = set(read_json(directory / index_name)["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError):
        return True
    return all(not _inside(name) or (directory / name).exists() for name in names)


def checkpoint_files(directory: Path) -> list[Path]:
    """The files a load of ``directory`` reads: config.json, then the weights (an index and the shards it names,
    or the single file), as :func:`read_weights` chooses them. Names that do not exist are left in: a cache key
    built from them changes when they appear."""
    files = [directory / "config.json"]
    for index_name, single in ((SAFE_INDEX, SAFE_SINGLE), (BIN_INDEX, BIN_SINGLE)):
        if _reads_index(directory, index_name, single):
            files.append(directory / index_name)
            try:
                names = read_json(directory / index_name)["weight_map"].values()
                files += [directory / name for name in sorted(set(names)) if _inside(name)]
            except (ValueError, KeyError, TypeError, AttributeError):
                pass  # the load itself names what is wrong with the index
            return files
        if (directory / single).exists():
            return [*files, directory / single]
    return files


def _read_shards(directory: Path, index_name: str, read) -> dict[str, torch.Tensor]:
    try:
        index = read_json(directory / index_name)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    try:
        weight_map = index["weight_map"]
        files = sorted(set(weight_map.values()))
    except (KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{directory / index_name} is not a valid shard index: {err}") from None
    for name in files:
        # A shard is a file of this checkpoint: an index naming ../other/model.safetensors (or an absolute
        # path) would read weights from anywhere on the machine. The name is checked, not where it resolves:
        # the hub cache's snapshot files are symlinks into its blobs folder.
        if not _inside(name):
            raise CheckpointError(f"{directory / index_name} names a shard outside the checkpoint: {name!r}")
        if not (directory / name).exists():
            raise CheckpointError(f"shard {directory / name} listed in {index_name} is missing")
    state = {}
    for name in files:
        shard = read(directory / name)
        # Each shard holds exactly what the index assigns to it: a stray copy of a tensor in another shard won
        # or lost by the order the shards were read in, and a tensor the index lists but no shard held was not
        # missed.
        stray = next((key for key in shard if weight_map.get(key) != name), None)
        if stray is not None:
            raise CheckpointError(f"shard {name} holds {stray}, which {index_name} assigns to {weight_map.get(stray)}")
        state.update(shard)
    absent = next((key for key in weight_map if key not in state), None)
    if absent is not None:
        raise CheckpointError(f"{index_name} lists {absent} in {weight_map[absent]}, which does not hold it")
    return state


def _inside(name) -> bool:
    """A relative name with no '..', read the POSIX and the Windows way (a drive or a root escapes there)."""
    if not isinstance(name, str) or not name:
        return False
    windows = PureWindowsPath(name)
    return not (windows.drive or windows.root or ".." in windows.parts or ".." in PurePosixPath(name).parts)


DEFAULT_CHECKPOINT = Path(__file__).parent / "assets" / "default"


def default_checkpoint() -> Path:
    """The checkpoint shipped inside the package (see docs/model_card.md)."""
    if not (DEFAULT_CHECKPOINT / "config.json").exists():
        raise CheckpointError(f"the embedded default checkpoint is missing from {DEFAULT_CHECKPOINT}")
    return DEFAULT_CHECKPOINT


# Hub-download settings that ``from_pretrained`` passes on, as transformers spells them.
HUB_OPTIONS = ("subfolder", "cache_dir", "token", "local_files_only", "force_download")
# What a hub download fetches: safetensors, else (a repo saved with safe_serialization=False) .bin files.
_HUB_SAFE_FILES = ["config.json", "*.safetensors", SAFE_INDEX]
_HUB_BIN_FILES = ["config.json", "pytorch_model*.bin", BIN_INDEX]


def resolve_directory(path_or_hub_id, revision: str | None = None, **hub_options) -> Path:
    """A local directory as is; None for the embedded default; otherwise a hub id fetched through
    huggingface_hub (config + weights). ``hub_options``: any of ``HUB_OPTIONS``; ``subfolder`` also
    applies to a local directory."""
    unknown = sorted(set(hub_options) - set(HUB_OPTIONS))
    if unknown:
        raise TypeError(f"unknown hub option(s) {unknown}; accepted: {list(HUB_OPTIONS)}")
    subfolder = hub_options.pop("subfolder", None) or ""
    if path_or_hub_id is None:
        if subfolder or revision:
            raise ValueError("the embedded default checkpoint has no revisions or subfolders; pass a path or hub id")
        return default_checkpoint()
    if not isinstance(path_or_hub_id, (str, os.PathLike)):
        raise TypeError(
            "the checkpoint must be a directory path (str or pathlib.Path), a hub id ('owner/name') or None for "
            f"the embedded default, got {type(path_or_hub_id).__name__}"
        )
    name = os.fspath(path_or_hub_id)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if not name.strip():  # Path("") is the working directory: config.json was looked for there
        raise CheckpointError(
            'the checkpoint path is empty; pass a directory ("." for the working directory), a hub id, or None '
            "for the embedded default"
        )
    path = Path(os.path.expanduser(name))
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except OSError as err:  # a name too long for the file system, say
        raise CheckpointError(f"{name[:80]!r}... is not a usable path ({err.strerror})") from None
    if is_dir:
        if revision is not None:
            log.warning("revision=%r is ignored: %s is a local directory", revision, path)
        return _inside_subfolder(path, subfolder, name)
    if exists:
        raise CheckpointError(
            f"{name!r} is a file; expected a checkpoint directory holding config.json and "
            f"model.safetensors (perhaps its folder, {str(path.parent)!r})"
        )
    looks_like_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None
    if not looks_like_hub_id or _looks_local(name):
        raise CheckpointError(f"checkpoint directory {name!r} does not exist locally")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise CheckpointError(
            f"{name!r} is not a local directory, and {missing('huggingface_hub', 'fetching it from the hub', err)}; "
            "or pass the path of a directory with config.json and model.safetensors"
        ) from None
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    at = f" at revision {revision!r}" if revision is not None else ""
    try:
        local = Path(
            snapshot_download(
                name, revision=revision, allow_patterns=[prefix + p for p in _HUB_SAFE_FILES], **hub_options
            )
        )
        if not any((local / prefix).glob("*.safetensors")):
            # A repo saved with safe_serialization=False holds only .bin files (read with weights_only=True).
            local = Path(
                snapshot_download(
                    name, revision=revision, allow_patterns=[prefix + p for p in _HUB_BIN_FILES], **hub_options
                )
            )
    except Exception as err:  # noqa: BLE001 - network and hub errors vary by version
        first_line = (str(err).strip().splitlines() or [""])[0]  # hub errors run over several lines
        raise CheckpointError(
            f"{name!r} is not a local directory (nothing at {str(path.absolute())!r}), and fetching "
            f"it as a hub id{at} failed ({type(err).__name__}: {first_line}). If it is a local path, check its "
            "spelling; if it is on the hub and you are offline, download it elsewhere and pass the local directory"
        ) from None
    return _inside_subfolder(local, subfolder, f"{name}{at}")


def _inside_subfolder(directory: Path, subfolder: str, name: str) -> Path:
    if not subfolder:
        return directory
    inner = directory / subfolder
    if not inner.is_dir():
        raise CheckpointError(f"{name!r} has no subfolder {subfolder!r}")
    return inner


# Suffixes of files, never of a hub repository's name: "data/x.csv" is a mistyped path, not a hub id.
_FILE_SUFFIXES = {".csv", ".tsv", ".json", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npy", ".npz", ".parquet"}


def _looks_local(text: str) -> bool:
    """Whether a missing ``owner/name`` path was meant as a local path rather than a hub id: it starts like a path
    (./, ../, /, ~), ends in a file suffix, or its parent folder exists here (``runs/typo`` with ``runs/`` present).
    Hub names may hold dots ("model-1.0"), so only known file suffixes count."""
    if text.startswith(("./", "../", "/", "~", ".\\", "..\\")):
        return True
    path = Path(text)
    return path.suffix.lower() in _FILE_SUFFIXES or (path.parent.is_dir() and str(path.parent) not in ("", "."))


def load_pretrained(
    path_or_hub_id,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    model_cls=TimeMoEForPrediction,
    revision: str | None = None,
    **model_kwargs,
) -> TimeMoEForPrediction:
    """Build the model on the meta device and load the weights into it (no double allocation).

    ``dtype``: None for float32 (as transformers and the estimators load), "auto" for the dtype the weights
    are stored in, or a float dtype (or its name)."""
    from .loading import resolve_device, resolve_stored_dtype  # loading imports this module

    # Checked before any download or read: 'int8' failed deep in load_state_dict, and torch's own error for
    # a missing GPU came after every weight was read.
    dtype = resolve_stored_dtype(dtype)
    device = resolve_device(device) if device is not None else None
    hub_options = {k: model_kwargs.pop(k) for k in HUB_OPTIONS if k in model_kwargs}
    _check_model_kwargs(model_cls, model_kwargs)  # before a download, not after reading every weight
    directory = resolve_directory(path_or_hub_id, revision, **hub_options)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{config_path} is missing")
    try:
        config = TimeMoEConfig.from_json_file(config_path)
        config.code_source = directory  # where auto_map's code files are, for a later save (_copy_code_files)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    official = read_weights(directory)
    _check_tensors(official, directory)
    _check_counts(config, official, directory)
    try:
        state = from_official(official)
    except (RuntimeError, IndexError) as err:  # torch's own words on tensors that cannot be joined or stacked
        raise CheckpointError(
            f"checkpoint {directory} holds expert or q/k/v tensors that do not fit together "
            f"({str(err).splitlines()[0][:200]})"
        ) from None
    try:
        with torch.device("meta"):
            model = model_cls(config, **model_kwargs)
    except (RuntimeError, TypeError, OverflowError, ValueError) as err:  # sizes past what torch can describe, or
        # settings the model refuses (more experts per token than experts: a misspelt num_experts, say)
        raise CheckpointError(
            f"{config_path} describes a model that cannot be built ({str(err).splitlines()[0][:200]})"
            f"{misspelt_key_hint(config)}"
        ) from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(
            f"checkpoint {directory} lacks {len(missing)} key(s), first: {to_official_name(missing[0])}"
            f"{misspelt_key_hint(config)}"
        )
    if unexpected:
        raise CheckpointError(
            f"checkpoint {directory} has unexpected key(s), first: {unexpected[0]}{misspelt_key_hint(config)}"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"key {to_official_name(key)} in {directory} has shape {tuple(tensor.shape)}, "
                f"config.json implies {tuple(expected[key].shape)}{misspelt_key_hint(config)}"
            )
    target_dtype = dtype or _stored_dtype(state, directory)
    state = {k: v.to(device=device or "cpu", dtype=target_dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    log.info("loaded %s (%s parameters, %s)", directory, f"{model.num_parameters():,}", target_dtype)
    return model.eval()


def _stored_dtype(state: dict[str, torch.Tensor], directory: Path) -> torch.dtype:
    """The dtype ``dtype="auto"`` loads in: the one the weights share. float8 weights gave a model that failed
    at its first forecast; mixed ones took whichever tensor came first."""
    from .loading import MODEL_DTYPES

    stored = {tensor.dtype for tensor in state.values()}
    if len(stored) == 1 and next(iter(stored)) in MODEL_DTYPES:
        return next(iter(stored))
    names = ", ".join(sorted(str(d).replace("torch.", "") for d in stored))
    raise CheckpointError(
        f"{directory} stores its weights as {names}, which dtype='auto' cannot keep: pass dtype='float32' "
        "(or 'bfloat16')"
    )


_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.")
_HEAD_KEY = re.compile(r"lm_heads\.(\d+)\.")


def _check_counts(config: TimeMoEConfig, state: dict[str, torch.Tensor], directory: Path) -> None:
    """The config's layer and head counts against the weights' before the model is built: building it ran every
    initialiser, so a config.json claiming 100,000 layers over a 2-layer checkpoint took ten minutes to refuse."""
    for what, pattern, claimed in (
        ("decoder layers", _LAYER_KEY, config.num_hidden_layers),
        ("output heads", _HEAD_KEY, len(config.horizon_lengths)),
    ):
        indices = {int(m.group(1)) for key in state if (m := pattern.match(key)) and len(m.group(1)) < 10}
        if indices and claimed != max(indices) + 1:
            raise CheckpointError(
                f"{directory / 'config.json'} says {claimed} {what}; the weights hold {max(indices) + 1}"
                f"{misspelt_key_hint(config)}"
            )


# transformers' names for what this library's from_pretrained spells otherwise.
_RENAMED = {"torch_dtype": "dtype=", "device_map": "device=", "trust_remote_code": "nothing: no code is ever run"}


def _check_model_kwargs(model_cls, model_kwargs: dict) -> None:
    _check_model_kwarg_names(model_cls, model_kwargs)
    # Their values too, before any weight is read: a bad one failed after the load, blamed on config.json
    # ("config.json describes a model that cannot be built (unknown attention backend ...)").
    if isinstance(model_cls, type) and issubclass(model_cls, TimeMoEForPrediction):
        if "attn_backend" in model_kwargs:
            from .model.attention import check_backend

            check_backend(model_kwargs["attn_backend"])
        if "moe_dispatch" in model_kwargs:
            from .model.moe import DISPATCH_MODES

            dispatch = model_kwargs["moe_dispatch"]
            if dispatch not in DISPATCH_MODES:
                raise ValueError(f"unknown MoE dispatch {dispatch!r}; choose one of {DISPATCH_MODES}")


def _check_model_kwarg_names(model_cls, model_kwargs: dict) -> None:
    try:
        inspect.signature(model_cls).bind(None, **model_kwargs)
    except TypeError:
        accepted = [n for n in inspect.signature(model_cls).parameters if n != "config"]
        unknown = sorted(set(model_kwargs) - set(accepted))
        hints = "".join(f"; for {k} use {_RENAMED[k]}" for k in unknown if k in _RENAMED)
        raise TypeError(
            f"from_pretrained got unexpected argument(s) {unknown}{hints}; it takes dtype, device, revision, "
            f"{', '.join(HUB_OPTIONS)} and the model's own {accepted}"
        ) from None


def to_official_name(key: str) -> str:
    prefix, _, leaf = key.rpartition(".")
    module_prefix, _, module = prefix.rpartition(".")
    if leaf in _STACKED:
        return " + ".join(f"{prefix}.experts.*.{proj}.weight" for proj in _STACKED[leaf])
    if module in _JOINED:
        return " + ".join(f"{module_prefix}.{proj}.{leaf}" for proj in _JOINED[module])
    return key
