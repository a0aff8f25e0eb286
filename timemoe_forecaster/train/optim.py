"""AdamW parameter groups, a memory-lean bf16 AdamW, and the warmup + cosine learning-rate schedule.

Two optimizer settings (``TrainConfig.optim_dtype``):

- ``"fp32"``: fp32 weights, gradients and AdamW moments (16 bytes per parameter), bf16 autocast for
  compute on GPU. The reference setting.
- ``"bf16"``: weights, gradients and both moments in bf16 (8 bytes per parameter: 19 GB for the 2.4B
  ``ultra`` preset instead of 38 GB). The update is computed in fp32 and written back with stochastic
  rounding, so small updates (late low learning rates, weight decay) survive in expectation instead of
  being rounded away (Zamirai et al. 2020, "Revisiting BFloat16 Training"). No fp32 master copy exists.
"""

from __future__ import annotations

import logging
import math
import os

import torch
from torch import nn

from ..model.fused_moe import TRITON_AVAILABLE

OPTIM_DTYPES = ("fp32", "bf16")
log = logging.getLogger(__name__)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and stacked experts; never norms, biases or any other 1-D tensor."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    optim_dtype: str = "fp32",
    fused: bool | None = None,
    seed: int = 0,
    capturable: bool = False,
) -> torch.optim.Optimizer:
    """AdamW over ``param_groups``; ``optim_dtype="bf16"`` gives :class:`StochasticRoundingAdamW`.

    ``fused=None`` uses the fused CUDA kernel when every parameter is on a GPU (for ``"bf16"``: the Triton update
    of :class:`StochasticRoundingAdamW` on GPU tensors when triton is installed); False never does.
    ``capturable=True`` keeps the step count on the device so the update can be recorded in a CUDA graph
    (``step_graph.py``).
    """
    if optim_dtype not in OPTIM_DTYPES:
        raise ValueError(f"optim_dtype must be one of {OPTIM_DTYPES}, got {optim_dtype!r}")
    groups = param_groups(model, weight_decay)
    if optim_dtype == "bf16":
        if capturable:
            raise ValueError("capturable=True needs optim_dtype='fp32' (torch's AdamW)")
        return StochasticRoundingAdamW(groups, lr=lr, betas=betas, eps=eps, seed=seed, fused=fused)
    if fused is None:
        fused = all(p.is_cuda for g in groups for p in g["params"])
    extra = {"capturable": True} if capturable else {}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None, **extra)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The local shard of an FSDP2 DTensor (shares storage), or the tensor itself."""
    return tensor._local_tensor if hasattr(tensor, "_local_tensor") else tensor


def stochastic_round_(dst: torch.Tensor, src: torch.Tensor, generator: torch.Generator) -> None:
    """Write fp32 ``src`` into ``dst``; bf16 targets are rounded up or down with probability given by
    the distance to the two neighbours (add uniform noise to the 16 bits bf16 drops, then truncate)."""
    if dst.dtype != torch.bfloat16:
        dst.copy_(src)
        return
    bits = src.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device, generator=generator)
    rounded = (bits + noise).bitwise_and_(-65536)  # -65536 == 0xFFFF0000: keep sign, exponent, 7 mantissa bits
    finite = torch.isfinite(src)  # leave inf/NaN (and the carry into them) to ordinary rounding
    dst.copy_(torch.where(finite, rounded.view(torch.float32), src))


class StochasticRoundingAdamW(torch.optim.Optimizer):
    """Decoupled-weight-decay Adam for low-precision parameters; moments stored in the parameter dtype.

    Parameters are updated in chunks of up to ``chunk_numel`` elements: each chunk is concatenated into
    flat fp32 buffers, updated with a handful of large kernels and copied back (a per-tensor loop costs
    ~25 small kernels per tensor, which made the step of the 2.4B ``ultra`` model 20x slower than fused
    AdamW). The rounding noise comes from a generator reseeded from (seed, step, rank) at every step, so
    a resumed run draws the same numbers as an uninterrupted one without extra state.

    ``fused``: one Triton kernel per tensor does the whole update and the rounding (``sr_adamw_kernels``),
    its noise seeded the same way plus the tensor's place. None (the default) uses it for contiguous bf16
    or fp32 tensors on a GPU when triton is installed, and the chunked path for everything else. The two
    paths draw different noise, so switch neither in the middle of a run that must replay exactly.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.95),
        eps: float = 1e-8,
        seed: int = 0,
        chunk_numel: int = 1 << 26,
        fused: bool | None = None,
    ) -> None:
        if lr < 0 or eps <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid AdamW hyper-parameters lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=0.0, seed=seed))
        self.chunk_numel = int(chunk_numel)
        if fused and not TRITON_AVAILABLE:
            raise RuntimeError("StochasticRoundingAdamW(fused=True) needs triton, which is not installed")
        self.fused = fused
        self._path_logged = False

    def _count_step(self, param: torch.Tensor) -> int:
        """Create the parameter's state on its first update, count this update and return the count."""
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1
        return int(state["step"].item())

    def _runs_fused(self, param: torch.Tensor) -> bool:
        if self.fused is False or (self.fused is None and not TRITON_AVAILABLE):
            return False
        local, grad = _local(param), _local(param.grad)
        fits = local.dtype in (torch.bfloat16, torch.float32) and local.is_contiguous() and grad.is_contiguous()
        if self.fused:  # asked for: on a GPU, or on the CPU under triton's interpreter (as the tests run it)
            if not fits:
                raise ValueError(f"fused=True updates contiguous bf16 or fp32 tensors, got {local.dtype}")
            if not local.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
                raise ValueError(
                    f"fused=True runs the bf16 AdamW update as a Triton kernel on a GPU; this parameter is on "
                    f"{local.device} (use fused=None or False there)"
                )
            return True
        return fits and local.is_cuda

    def _fused_update(self, param, lr, beta1, beta2, eps, weight_decay, step: int, seed: int) -> None:
        """One tensor's AdamW update and rounding in one Triton launch (``sr_adamw_kernels``)."""
        import triton

        from .sr_adamw_kernels import sr_adamw_update

        state = self.state[param]
        p, grad = _local(param), _local(param.grad)
        exp_avg, exp_avg_sq = _local(state["exp_avg"]), _local(state["exp_avg_sq"])
        n, block = p.numel(), 1024
        if n == 0:
            return
        sr_adamw_update[(triton.cdiv(n, block),)](
            p, grad, exp_avg, exp_avg_sq, n,
            beta1, beta2, eps, 1 - lr * weight_decay, lr / (1 - beta1**step), 1 - beta2**step, seed,
            ROUND=p.dtype == torch.bfloat16, BLOCK=block,
        )  # fmt: skip

    def _chunks(self, group: dict, skip: set[int] = frozenset()) -> list[tuple[int, list[torch.Tensor]]]:
        """(step, params) runs of this group's parameters with gradients: same step, device and dtype."""
        chunks: list[tuple[int, list[torch.Tensor]]] = []
        size = 0
        for param in group["params"]:
            if param.grad is None or id(param) in skip:
                continue
            step, local = self._count_step(param), _local(param)
            if chunks:
                last_step, last = chunks[-1]
                head = _local(last[0])
                same = last_step == step and head.device == local.device and head.dtype == local.dtype
                if same and size + local.numel() <= self.chunk_numel:
                    last.append(param)
                    size += local.numel()
                    continue
            chunks.append((step, [param]))
            size = local.numel()
        return chunks

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        generators: dict[torch.device, torch.Generator] = {}
        for index, group in enumerate(self.param_groups):
            beta1, beta2 = group["betas"]
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            fused = [x for x in group["params"] if x.grad is not None and self._runs_fused(x)]
            for place, param in enumerate(fused):
                step = self._count_step(param)
                seed = _stream_seed(group["seed"], step, rank, index, place)
                self._fused_update(param, lr, beta1, beta2, eps, wd, step, seed)
            fused_ids = {id(x) for x in fused}
            if not self._path_logged:  # which update path the run got: the fused one is ~12x faster on a GPU
                chunked = sum(x.grad is not None and id(x) not in fused_ids for x in group["params"])
                log.info("bf16 AdamW, group %d: %d tensors fused (Triton), %d chunked", index, len(fused), chunked)
            for step, params in self._chunks(group, skip=fused_ids):
                p = [_local(x) for x in params]
                exp_avg = [_local(self.state[x]["exp_avg"]) for x in params]
                exp_avg_sq = [_local(self.state[x]["exp_avg_sq"]) for x in params]
                device = p[0].device
                if device not in generators:
                    generators[device] = torch.Generator(device=device)
                    generators[device].manual_seed(_step_seed(group["seed"], step, rank))
                gen = generators[device]
                grad = _flat([_local(x.grad) for x in params])
                m = _flat(exp_avg).lerp_(grad, 1 - beta1)
                v = _flat(exp_avg_sq).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                del grad
                denom = (v / (1 - beta2**step)).sqrt_().add_(eps)
                w = _flat(p).mul_(1 - lr * wd).addcdiv_(m, denom, value=-lr / (1 - beta1**step))
                del denom
                for targets, values in ((p, w), (exp_avg, m), (exp_avg_sq, v)):
                    rounded = torch.empty_like(values, dtype=targets[0].dtype)
                    stochastic_round_(rounded, values, gen)
                    sizes = [t.numel() for t in targets]
                    torch._foreach_copy_(targets, [r.view_as(t) for r, t in zip(rounded.split(sizes), targets)])
        self._path_logged = True
        return loss


def _step_seed(seed: int, step: int, rank: int) -> int:
    """The rounding noise's seed at one step of one rank: fixed by the run's state, so resumes replay."""
    return (seed * 1_000_003 + step) * 4099 + rank


def _stream_seed(seed: int, step: int, rank: int, group: int, place: int) -> int:
    """The fused path's Philox seed: the step's seed, told apart per group and tensor (31 bits for Triton)."""
    return ((_step_seed(seed, step, rank) * 131 + group) * 1_000_033 + place) % (2**31 - 1)


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One new fp32 vector holding all ``tensors`` in order."""
    return torch.cat([t.reshape(-1) for t in tensors]).float()


class WarmupCosine:
    """Multiplier of the peak lr: linear warmup over ``warmup_steps``, then half a cosine down to
    ``min_lr_ratio`` at the last step. A callable object (not a lambda) so LambdaLR can save it."""

    def __init__(self, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> None:
        self.warmup_steps, self.max_steps, self.min_lr_ratio = int(warmup_steps), int(max_steps), float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.max_steps - 1 - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, max_steps, min_lr_ratio))
