"""Process context and model parallelism, applied to the pure model from outside.

``distributed_context()`` turns the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK) into a
:class:`DistContext` and owns the process group (NCCL on CUDA, gloo on CPU). ``parallelize()`` then
applies, in torchtitan's order: activation checkpointing per decoder block, ``torch.compile`` (per
block, or the whole model with its losses, optionally replayed as CUDA graphs), and FSDP2
``fully_shard`` (blocks, then the root) or DDP. One process gets no wrapper.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..model.attention import prepare_flex_tiles
from .config import WHOLE_MODEL_COMPILES

log = logging.getLogger(__name__)

# Above this many parameters "auto" shards with FSDP2 instead of replicating with DDP: a replica with
# fp32 AdamW needs 16 bytes per parameter, about 16 GB here, a fifth of an 80 GB GPU.
FSDP_AUTO_MIN_PARAMS = 1_000_000_000


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer (set by torchrun)") from None


def pick_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``None``/"auto": this rank's GPU when CUDA is available, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(device)
    except RuntimeError:  # torch lists every backend it knows in a long message
        raise ValueError(f"unknown device {str(device)!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but CUDA is not available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


@contextlib.contextmanager
def distributed_context(device: str | torch.device | None = None) -> Iterator[DistContext]:
    """Yield this process's rank, world size and device; set up and always tear down the process group."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    dev = pick_device(device, local_rank)
    if world_size == 1:
        yield DistContext(device=dev)
        return
    if dist.is_initialized():  # the caller owns an existing group: use it, leave it alone
        yield DistContext(rank, world_size, local_rank, dev)
        return
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    try:
        yield DistContext(rank, world_size, local_rank, dev)
        dist.barrier()  # a normal exit: no rank tears its connections down while another still uses them
    finally:
        dist.destroy_process_group()


def resolve_fsdp(fsdp: bool | str, ctx: DistContext, num_params: int) -> bool:
    """``"auto"``: FSDP2 for several processes and a model of at least ``FSDP_AUTO_MIN_PARAMS``."""
    if fsdp == "auto":
        return ctx.distributed and num_params >= FSDP_AUTO_MIN_PARAMS
    return bool(fsdp) and ctx.distributed


def parallelize(
    model: nn.Module,
    ctx: DistContext,
    *,
    activation_checkpointing: bool = False,
    compile: bool | str = False,
    fsdp: bool = False,
    param_dtype: torch.dtype | None = None,
    compile_backend: str = "inductor",
) -> nn.Module:
    """Wrap ``model`` (a TimeMoEForPrediction already on ``ctx.device``) for training.

    ``compile``: False, True/"blocks" (each decoder block), "model" (the whole forward with its losses:
    one graph forward, one backward), "model-cudagraphs" (the same, replayed as CUDA graphs; inputs
    must keep their shapes) or "model-step-graph" (compiled as "model"; the trainer records each whole
    step). All compile in place, so parameter names and state_dict keys never change.
    ``compile_backend`` goes to torch.compile ("aot_eager" in the CPU tests). ``param_dtype`` (bf16) is
    FSDP2's compute dtype; gradients are reduced in fp32. Returns the module
    to call for training; :func:`unwrap` gives back the plain model (same parameters).
    """
    blocks = model.model.layers
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        # Non-reentrant checkpointing; the wrapper strips its prefix from state_dict keys.
        for i, block in enumerate(blocks):
            blocks[i] = checkpoint_wrapper(block)
    if compile in (True, "blocks"):
        from ..compile import compile_blocks

        compile_blocks(model, backend=compile_backend)  # in place: parameter names and state_dict keys stay unchanged
    elif compile in WHOLE_MODEL_COMPILES:  # the step graph is the trainer's
        if fsdp:
            raise ValueError("whole-model compile with FSDP2 is not supported here; use compile='blocks'")
        graphs = compile == "model-cudagraphs" and compile_backend == "inductor"
        prepare_flex_tiles(next(model.parameters()).device)  # the compiled model reads the tile table only
        model.compile(backend=compile_backend, **({"mode": "reduce-overhead"} if graphs else {}))
    elif compile:
        raise ValueError(f"unknown compile mode {compile!r}")
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh

        try:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        except ImportError:  # torch < 2.6 keeps FSDP2 under its former, private name
            from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        return model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    return model


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 and one process wrap nothing around it)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def gradient_sync(module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce on accumulation micro-steps (DDP ``no_sync``, FSDP2 flag)."""
    if isinstance(module, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if enabled else module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj, ctx: DistContext) -> list:
    """Every rank's ``obj`` in rank order (pickled over the wire: small states only)."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
