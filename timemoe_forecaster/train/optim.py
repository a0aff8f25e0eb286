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
    (``step_graph.py``); with ``"bf16"`` that needs the Triton update for every parameter.
    """
    if optim_dtype not in OPTIM_DTYPES:
        raise ValueError(f"optim_dtype must be one of {OPTIM_DTYPES}, got {optim_dtype!r}")
    groups = param_groups(model, weight_decay)
    if optim_dtype == "bf16":
        return StochasticRoundingAdamW(
            groups, lr=lr, betas=betas, eps=eps, seed=seed, fused=fused, capturable=capturable
        )
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
    a resumed run draws the same numbers as an uninterrupted one without extra state (the rank only for
    sharded parameters: replicated ones round alike on every rank, see ``_noise_rank``).

    ``fused``: one Triton kernel per tensor does the whole update and the rounding (``sr_adamw_kernels``),
    its noise seeded the same way plus the tensor's place. None (the default) uses it for contiguous bf16
    or fp32 tensors on a GPU when triton is installed, and the chunked path for everything else. The two
    paths draw different noise, so switch neither in the middle of a run that must replay exactly.

    The fused path keeps each tensor's step count on its device and reads the learning rate from there too
    (a tensor rate as ``step_graph.use_tensor_lr`` makes, or a device copy of a float one), so it never
    waits for the GPU. When every parameter takes it, ``defaults["fused"]`` is True and, as for torch's fused
    AdamW, the optimizer honours ``grad_scale`` (gradients divided by it: clipping without a pass of its own)
    and ``found_inf`` (nonzero: the step is skipped on the device), both device scalars set as attributes by
    the caller. ``capturable=True`` asks for that and says so to ``step_graph.check_capturable``: the whole
    update can then be recorded in a CUDA graph.
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
        capturable: bool = False,
    ) -> None:
        if lr < 0 or eps <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid AdamW hyper-parameters lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=0.0, seed=seed))
        self.chunk_numel = int(chunk_numel)
        if fused and not TRITON_AVAILABLE:
            raise RuntimeError("StochasticRoundingAdamW(fused=True) needs triton, which is not installed")
        self.fused = fused
        self._path_logged = False
        self._lr_buffers: dict[tuple[int, torch.device], torch.Tensor] = {}  # device copies of float rates
        every = [p for group in self.param_groups for p in group["params"]]
        on_device = bool(every) and all(self._fusable(p) for p in every)
        if capturable and not on_device:
            raise ValueError(
                "capturable=True needs the fused Triton update for every parameter: triton installed, fused not "
                "False, and each parameter a contiguous bf16 or fp32 tensor on a GPU"
            )
        self._flags = {"fused": on_device, "capturable": bool(capturable)}
        for group in self.param_groups:
            group.update(self._flags)
        self.defaults.update(self._flags)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a saved state; whether the update runs fused (and may be recorded) stays this process's, not the
        saving run's (the groups' ``fused``/``capturable`` describe where the parameters live now)."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group.update(self._flags)

    def _state(self, param: torch.Tensor, step_on_device: bool) -> dict:
        """The parameter's state, created on its first update; the fused path keeps the step on the device."""
        state = self.state[param]
        device = _local(param).device if step_on_device else torch.device("cpu")
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=device)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        elif state["step"].device != device:  # a loaded state, or a switch of paths
            state["step"] = state["step"].to(device)
        return state

    def _count_step(self, param: torch.Tensor) -> int:
        """The chunked path's count: this update counted on the host, and returned."""
        state = self._state(param, step_on_device=False)
        state["step"] += 1
        return int(state["step"].item())

    def _fusable(self, param: torch.Tensor) -> bool:
        """Whether the fused update will take this parameter (its gradient is checked at each step)."""
        if self.fused is False or not TRITON_AVAILABLE:
            return False
        local = _local(param)
        on_gpu = local.is_cuda or (self.fused and os.environ.get("TRITON_INTERPRET") == "1")
        return local.dtype in (torch.bfloat16, torch.float32) and local.is_contiguous() and on_gpu

    def _runs_fused(self, param: torch.Tensor) -> bool:
        """Whether this step updates ``param`` with the fused kernel; an error where it was asked for
        (``fused=True``) or promised (``defaults["fused"]``: found_inf, CUDA graphs) and cannot run."""
        local, grad = _local(param), _local(param.grad)
        if self._fusable(param) and grad.is_contiguous():
            return True
        if not (self.fused or self.defaults.get("fused")):
            return False
        if local.dtype not in (torch.bfloat16, torch.float32) or not (local.is_contiguous() and grad.is_contiguous()):
            raise ValueError(
                "the fused bf16 AdamW update needs contiguous bf16 or fp32 tensors and gradients; got a "
                f"{local.dtype} tensor whose gradient has strides {grad.stride()}"
            )
        raise ValueError(
            f"fused=True runs the bf16 AdamW update as a Triton kernel on a GPU; this parameter is on "
            f"{local.device} (use fused=None or False there)"
        )

    def _lr_tensor(self, group: dict, index: int, device: torch.device) -> torch.Tensor:
        """The group's learning rate as an fp32 scalar on ``device``: its own tensor, or a buffer filled with the
        float (a fill, not a host copy, so a recorded update stays recordable; it then keeps the recorded value)."""
        lr = group["lr"]
        if isinstance(lr, torch.Tensor):
            return lr if lr.device == device and lr.dtype == torch.float32 else lr.to(device, torch.float32)
        key = (index, device)
        if key not in self._lr_buffers:
            self._lr_buffers[key] = torch.empty((), dtype=torch.float32, device=device)
        return self._lr_buffers[key].fill_(float(lr))

    def _fused_step(self, group: dict, index: int, params: list[torch.Tensor], rank: int) -> None:
        """AdamW and rounding for ``params``, one Triton launch per tensor (``sr_adamw_kernels``); no host sync."""
        import triton

        from .sr_adamw_kernels import sr_adamw_update

        states = [self._state(x, step_on_device=True) for x in params]
        grad_scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        steps = [s["step"] for s in states]
        # A skipped step is not counted (as torch's fused AdamW does); the increment stays on the device.
        torch._foreach_add_(steps, 1.0 if found_inf is None else [1.0 - found_inf.float()] * len(steps))
        beta1, beta2 = group["betas"]
        lrs: dict[torch.device, torch.Tensor] = {}  # one rate tensor per device and step, not per tensor
        for place, (param, state) in enumerate(zip(params, states)):
            p, grad = _local(param), _local(param.grad)
            n, block = p.numel(), 1024
            if n == 0:
                continue
            if p.device not in lrs:
                lrs[p.device] = self._lr_tensor(group, index, p.device)
            lr = lrs[p.device]
            sr_adamw_update[(triton.cdiv(n, block),)](
                p, grad, _local(state["exp_avg"]), _local(state["exp_avg_sq"]), lr, state["step"],
                lr if grad_scale is None else grad_scale, lr if found_inf is None else found_inf, n,
                beta1, beta2, group["eps"], group["weight_decay"],
                _stream_seed(group["seed"], 0, rank, index, place), _SEED_PER_STEP,
                HAS_SCALE=grad_scale is not None, HAS_FOUND_INF=found_inf is not None,
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
        rank = _noise_rank(self.param_groups)
        generators: dict[torch.device, torch.Generator] = {}
        for index, group in enumerate(self.param_groups):
            beta1, beta2 = group["betas"]
            wd, eps = group["weight_decay"], group["eps"]
            fused = [x for x in group["params"] if x.grad is not None and self._runs_fused(x)]
            fused_ids = {id(x) for x in fused}
            chunked = sum(x.grad is not None and id(x) not in fused_ids for x in group["params"])
            if chunked and (
                getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None
            ):
                raise ValueError("grad_scale and found_inf need the fused update for every parameter")
            if not self._path_logged:  # which update path the run got: the fused one is ~12x faster on a GPU
                log.info("bf16 AdamW, group %d: %d tensors fused (Triton), %d chunked", index, len(fused), chunked)
            if fused:
                self._fused_step(group, index, fused, rank)
            if not chunked:
                continue
            lr = float(group["lr"])  # the chunked path computes on the host's numbers
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


def _noise_rank(param_groups) -> int:
    """The rank that seeds the rounding noise: this process's where it updates a shard of its own (FSDP2's
    DTensors), else 0. Replicated parameters (DDP) get the same update on every rank and must round it the
    same way: with each rank's own noise the copies drifted apart at every step, unnoticed, and checkpoints
    held rank 0's."""
    sharded = any(hasattr(p, "_local_tensor") for group in param_groups for p in group["params"])
    return torch.distributed.get_rank() if sharded and torch.distributed.is_initialized() else 0


def _step_seed(seed: int, step: int, rank: int) -> int:
    """The rounding noise's seed at one step of one rank: fixed by the run's state, so resumes replay."""
    return (seed * 1_000_003 + step) * 4099 + rank


_SEED_MODULUS = 2**31 - 1  # Triton's Philox seeds are taken as 31-bit here
# :func:`_stream_seed` is linear in the step: the seed at step t is (its value at step 0 + t * this) mod 2^31 - 1.
# The kernel gets both numbers and reads t on the device, so a recorded update draws each replay's own noise.
_SEED_PER_STEP = (4099 * 131 * 1_000_033) % _SEED_MODULUS


def _stream_seed(seed: int, step: int, rank: int, group: int, place: int) -> int:
    """The fused path's Philox seed: the step's seed, told apart per group and tensor (31 bits for Triton)."""
    return ((_step_seed(seed, step, rank) * 131 + group) * 1_000_033 + place) % _SEED_MODULUS


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
    optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, min_lr_ratio: float, start_step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """The warmup-cosine schedule of ``optimizer``'s peak rates (each group's ``initial_lr`` when ``start_step`` >
    0, else its ``lr``), positioned at ``start_step``: the groups get that step's rates. A resumed run builds it
    anew at the checkpoint's step, so a changed --lr, --warmup-steps or --max-steps takes effect from there."""
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    schedule = WarmupCosine(warmup_steps, max_steps, min_lr_ratio)
    # LambdaLR steps once on construction: last_epoch=start_step - 1 leaves it at start_step (-1 = fresh).
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule, last_epoch=start_step - 1)
