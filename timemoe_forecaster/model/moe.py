"""Sparse mixture-of-experts feed-forward layer (paper eqs. 5-7).

Each token goes to its top-k routed experts, weighted by the (un-renormalised) softmax router
probabilities, plus one shared expert behind a sigmoid gate. Routed experts are stored stacked
(``w_gate_up_EGH``, ``w_down_EHF``) so they can run as one grouped GEMM, gate and up projections side
by side so that both are one GEMM; ``checkpoint.py`` maps them to and from the official per-expert keys.

Three dispatch paths compute the same function: ``loop`` (one matmul per expert, the readable
reference), ``grouped`` (tokens sorted by expert, ``torch._grouped_mm`` over the groups) and, for
CUDA in bf16/fp16, ``fused`` (Triton kernels, ``fused_moe.py``: two forward, four backward). ``auto``
picks fused when it can run (for training only for experts at most ``fused_moe.TRAIN_MAX_EXPERT_SIZE`` wide),
else grouped when it can, else loop.

Shape legend: T tokens (B·S), H hidden, E experts, K top-k, F expert width, G = 2F (gate and up),
A = T·K assignments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TimeMoEConfig
from . import fused_moe
from .layers import ACTIVATIONS, SILU_NAMES, GatedMLP


def _grouped_mm_works() -> bool:
    """Probe ``torch._grouped_mm`` once at import (absent before torch 2.8; CPU support came later)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        x, w = torch.ones(4, 8), torch.ones(2, 8, 8)
        out = torch._grouped_mm(x, w, offs=torch.tensor([2, 4], dtype=torch.int32))
        return bool(torch.allclose(out, torch.full((4, 8), 8.0)))
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False


GROUPED_MM_ON_CPU = _grouped_mm_works()
DISPATCH_MODES = ("auto", "loop", "grouped", "fused")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls run in: the autocast dtype when autocast is on (norm outputs stay fp32)."""
    device = x.device.type
    try:
        if torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
    except TypeError:  # torch < 2.4 has no per-device query
        pass
    return x.dtype


def route(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing: fp32 softmax over experts, top-k probabilities kept as they are (no renorm).

    router_logits [T, E] -> weights [T, K] (fp32), experts [T, K] (int64).
    """
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)  # [T, E]
    if top_k > 4 or probs.device.type != "cuda":
        # torch.topk, as the reference routes: the maxima below break ties (equal probabilities, common with
        # bf16 router logits) towards the lowest expert, and so chose other experts than the reference for
        # 35 of 12,288 routes of the embedded default in bf16. On a CPU topk is also the faster of the two.
        return torch.topk(probs, top_k, dim=-1)
    # On CUDA, for the usual k of 1 or 2: k row-wise maxima instead of topk, whose kernel took ~0.7 ms for
    # 524k rows of 8 on an H100 (docs/performance.md). Same values, same descending order; ties may pick other
    # experts than topk, whose order for ties is itself unspecified.
    weights, experts, remaining = [], [], probs
    for _ in range(top_k):
        value, index = remaining.max(dim=-1)  # [T]
        weights.append(value)
        experts.append(index)
        remaining = remaining.scatter(-1, index[:, None], float("-inf"))
    return torch.stack(weights, dim=-1), torch.stack(experts, dim=-1)  # [T, K], [T, K]


ORDER_CHUNK = 1024  # assignments per scan row in ``order_by_expert``


def order_by_expert(experts_A: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Assignments sorted by expert, stably ([A] indices), and the end of each expert's group ([E] int32).

    A counting sort, not ``torch.sort``: each assignment's place is the start of its expert's group plus
    the number of earlier assignments to the same expert, a prefix sum over chunks of ``ORDER_CHUNK``
    that runs in parallel. Same result as a stable sort; under torch.compile on an H100 the radix sort
    took 68 us per layer at the large model's training shapes (benchmarks/moe_grouped_micro.py). The
    shapes are static: no device-to-host sync and no graph break.
    """
    a, device = experts_A.shape[0], experts_A.device
    pad = (-a) % ORDER_CHUNK
    padded_A = F.pad(experts_A, (0, pad), value=num_experts)  # padding matches no expert
    expert_ids_E = torch.arange(num_experts, device=device, dtype=experts_A.dtype)
    hits_ECL = (padded_A.view(1, -1, ORDER_CHUNK) == expert_ids_E[:, None, None]).to(torch.int32)
    within_ECL = hits_ECL.cumsum(dim=-1)  # rank inside the chunk, inclusive
    chunk_total_EC = within_ECL[..., -1]
    before_chunk_EC = chunk_total_EC.cumsum(dim=-1) - chunk_total_EC
    counts_E = chunk_total_EC.sum(dim=-1)
    group_end_E = counts_E.cumsum(0)
    hits_EA = hits_ECL.view(num_experts, -1)[:, :a]
    rank_EA = (within_ECL + before_chunk_EC[..., None]).view(num_experts, -1)[:, :a]  # inclusive rank
    rank_A = (rank_EA * hits_EA).sum(dim=0) - 1  # among earlier assignments to the same expert
    place_A = (group_end_E - counts_E)[experts_A] + rank_A  # where each assignment goes
    order_A = torch.empty_like(experts_A).scatter_(0, place_A, torch.arange(a, device=device))
    return order_A, group_end_E.to(torch.int32)


class SparseExpertsLayer(nn.Module):
    def __init__(self, config: TimeMoEConfig, dispatch: str = "auto") -> None:
        super().__init__()
        if dispatch not in DISPATCH_MODES:
            raise ValueError(f"unknown MoE dispatch {dispatch!r}; choose one of {DISPATCH_MODES}")
        if config.num_experts_per_tok > config.num_experts:
            raise ValueError(
                f"TimeMoEConfig.num_experts_per_tok ({config.num_experts_per_tok}) exceeds "
                f"num_experts ({config.num_experts})"
            )
        h, e, f = config.hidden_size, config.num_experts, config.expert_size
        self.num_experts, self.top_k, self.dispatch = e, config.num_experts_per_tok, dispatch
        self.act, self.hidden_act = ACTIVATIONS[config.hidden_act], config.hidden_act
        self.gate = nn.Linear(h, e, bias=False)
        # Same layout as nn.Linear weights ([out, in]). Each expert's gate rows come first, then its up rows:
        # one GEMM computes both (on the large model's training shapes on an H100, 486 TFLOP/s against 393
        # for each half alone, benchmarks/moe_grouped_micro.py), and its backward is one GEMM for the
        # input's gradient instead of two and a sum. Kept as one parameter, not concatenated per call: the
        # copy and the split of its gradient cost 1.1 ms of a 37 ms large training step.
        self.w_gate_up_EGH = nn.Parameter(torch.empty(e, 2 * f, h))
        self.w_down_EHF = nn.Parameter(torch.empty(e, h, f))
        self.shared_expert = GatedMLP(h, config.intermediate_size, config.hidden_act)
        self.shared_expert_gate = nn.Linear(h, 1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, s, h = x.shape
        x_TH = x.reshape(-1, h)
        router_logits_TE = self.gate(x_TH)
        weights_TK, experts_TK = route(router_logits_TE, self.top_k)
        weights_TK = weights_TK.to(x.dtype)
        compute_dtype = _compute_dtype(x_TH)
        if self._use_fused(x_TH, compute_dtype):
            routed_TH = self._fused(x_TH.to(compute_dtype), weights_TK.to(compute_dtype), experts_TK)
            routed_TH = routed_TH.to(x_TH.dtype)
        elif self._use_grouped(x_TH, compute_dtype):
            routed_TH = self._grouped(x_TH.to(compute_dtype), weights_TK.to(compute_dtype), experts_TK)
            routed_TH = routed_TH.to(x_TH.dtype)
        else:
            routed_TH = self._loop(x_TH, weights_TK, experts_TK)
        shared_TH = torch.sigmoid(self.shared_expert_gate(x_TH)) * self.shared_expert(x_TH)
        return (routed_TH + shared_TH).view(b, s, h), router_logits_TE

    def _use_fused(self, x_TH: torch.Tensor, compute_dtype: torch.dtype) -> bool:
        if self.dispatch not in ("auto", "fused"):
            return False
        ok = (
            self.hidden_act in SILU_NAMES and compute_dtype in fused_moe.FUSED_DTYPES and fused_moe.usable(x_TH)
        )  # checked on the dtype the matmuls run in, as for the grouped path
        if self.dispatch == "fused" and not ok:
            raise RuntimeError("fused MoE dispatch needs CUDA, triton, bf16/fp16 and SiLU experts")
        narrow = self.w_down_EHF.shape[2] <= fused_moe.TRAIN_MAX_EXPERT_SIZE
        return ok and (self.dispatch == "fused" or narrow or not self._needs_grad(x_TH))

    def _needs_grad(self, x_TH: torch.Tensor) -> bool:
        """Whether autograd needs the routed experts' backward: the router counts too (its routing weights
        multiply the experts' outputs), even when x and the experts are frozen."""
        params = (self.gate.weight, self.w_gate_up_EGH, self.w_down_EHF)
        return torch.is_grad_enabled() and (x_TH.requires_grad or any(p.requires_grad for p in params))

    def _use_grouped(self, x_TH: torch.Tensor, compute_dtype: torch.dtype) -> bool:
        if self.dispatch == "loop":
            return False
        available = x_TH.is_cuda or GROUPED_MM_ON_CPU
        # The kernel needs 16-byte aligned rows and, on CUDA, bf16 operands (so does its meta function,
        # which torch.compile traces with on any device).
        size = compute_dtype.itemsize
        aligned = all((n * size) % 16 == 0 for n in self.w_down_EHF.shape[1:])
        bf16_only = x_TH.is_cuda or torch.compiler.is_compiling()
        # On the CPU the kernel takes fp32/bf16/fp16 but not float64 (a user's model.double()).
        dtype_ok = compute_dtype == torch.bfloat16 or (
            not bf16_only and compute_dtype in (torch.float32, torch.float16)
        )
        ok = available and aligned and dtype_ok
        if self.dispatch == "grouped" and not ok:
            raise RuntimeError("grouped MoE dispatch is not available for this device, dtype or width")
        return ok

    def _expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        w_gate_FH, w_up_FH = self.w_gate_up_EGH[e].chunk(2, dim=0)
        hidden = self.act(x @ w_gate_FH.T) * (x @ w_up_FH.T)  # [n, F]
        return hidden @ self.w_down_EHF[e].T  # [n, H]

    def _loop(self, x_TH, weights_TK, experts_TK) -> torch.Tensor:
        """Reference dispatch: gather each expert's tokens, run it, add back weighted."""
        out_TH = torch.zeros_like(x_TH)
        for e in range(self.num_experts):
            token_idx, slot = torch.where(experts_TK == e)
            if token_idx.numel() == 0:
                continue
            y = self._expert(e, x_TH[token_idx]) * weights_TK[token_idx, slot, None]
            out_TH.index_add_(0, token_idx, y.to(x_TH.dtype))
        return out_TH

    def _sort_by_expert(self, experts_TK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Assignments (token * K + slot) sorted by expert [A], and the end of each expert's group [E].

        The counting sort on GPUs and under torch.compile; eager CPU code (a forecast's few hundred
        assignments) takes ``torch.sort``, whose one call costs less than the counting sort's dozen small ops:
        about 1.2 ms of a 36 ms CPU forecast (``python -m benchmarks.eager_overheads_cpu``). Same order."""
        experts_A = experts_TK.reshape(-1)
        if experts_A.is_cuda or torch.compiler.is_compiling():
            return order_by_expert(experts_A, self.num_experts)
        sorted_A, order_A = torch.sort(experts_A, stable=True)
        expert_ids_E = torch.arange(self.num_experts, dtype=sorted_A.dtype)
        return order_A, torch.searchsorted(sorted_A, expert_ids_E, right=True).to(torch.int32)

    def _fused(self, x_TH, weights_TK, experts_TK) -> torch.Tensor:
        """The grouped path's function in Triton kernels (``fused_moe``): SwiGLU experts on gathered rows,
        then the down projection written to token order; each token sums its k weighted rows."""
        order_A, offsets_E = self._sort_by_expert(experts_TK)
        w_gate_up, w_down = (w.to(x_TH.dtype) for w in (self.w_gate_up_EGH, self.w_down_EHF))
        if self._needs_grad(x_TH):
            y_AH = fused_moe.routed_experts(x_TH, order_A, offsets_E, w_gate_up, w_down, self.top_k)
            y_TKH = y_AH.view(-1, self.top_k, y_AH.shape[-1])
            return (y_TKH * weights_TK[..., None]).sum(dim=1).to(x_TH.dtype)  # as the grouped path's end
        act_AF = fused_moe.expert_swiglu(x_TH, order_A, offsets_E, w_gate_up, self.top_k)
        y_AH = fused_moe.expert_down(act_AF, order_A, offsets_E, w_down, weights_TK.reshape(-1))
        return y_AH.view(-1, self.top_k, y_AH.shape[-1]).sum(dim=1)  # [T, H]

    def _grouped(self, x_TH, weights_TK, experts_TK) -> torch.Tensor:
        """Sort assignments by expert, run all experts as one grouped GEMM, permute back and combine."""
        order_A, offsets_E = self._sort_by_expert(experts_TK)
        token_A = order_A // self.top_k  # token of each sorted assignment
        x_AH = x_TH[token_A]
        # Under autocast the stacked weights are cast like nn.Linear weights would be.
        w_gate_up, w_down = (w.to(x_TH.dtype) for w in (self.w_gate_up_EGH, self.w_down_EHF))
        gate_AF, up_AF = torch._grouped_mm(x_AH, w_gate_up.transpose(1, 2), offs=offsets_E).chunk(2, dim=-1)
        y_AH = torch._grouped_mm(self.act(gate_AF) * up_AF, w_down.transpose(1, 2), offs=offsets_E)
        # Back to assignment order with a permutation (no atomics, and its gradient is a gather), then
        # each token sums its k weighted expert outputs: the same bf16 roundings as index_add_.
        y_TKH = torch.empty_like(y_AH).index_copy(0, order_A, y_AH).view(-1, self.top_k, y_AH.shape[-1])
        return (y_TKH * weights_TK[..., None]).sum(dim=1).to(x_TH.dtype)  # [T, H]


class DenseFFN(GatedMLP):
    """``use_dense`` variant: one SwiGLU MLP of width intermediate_size, no router."""

    def __init__(self, config: TimeMoEConfig) -> None:
        super().__init__(config.hidden_size, config.intermediate_size, config.hidden_act)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return super().forward(x), None


def build_ffn(config: TimeMoEConfig, dispatch: str = "auto") -> nn.Module:
    return DenseFFN(config) if config.use_dense else SparseExpertsLayer(config, dispatch)


def load_balancing_loss(
    router_logits: list[torch.Tensor], top_k: int, num_experts: int, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Switch/Mixtral auxiliary loss pooled over layers (paper eq. 8): E * sum_i f_i * P_i.

    router_logits: one [T, E] tensor per layer; token_mask [B, S] (or [T]) excludes padding.
    f_i is the fraction of assignments per top-k slot going to expert i, P_i the mean router probability.
    """
    logits_LTE = torch.stack([r.float() for r in router_logits])  # [layers, T, E]
    probs_LTE = torch.softmax(logits_LTE, dim=-1)
    _, experts_LTK = torch.topk(probs_LTE, top_k, dim=-1)
    chosen_LTKE = F.one_hot(experts_LTK, num_experts).float()
    if token_mask is None:
        tokens_per_expert_KE = chosen_LTKE.mean(dim=(0, 1))
        prob_per_expert_E = probs_LTE.mean(dim=(0, 1))
    else:
        w_T = token_mask.reshape(-1).to(probs_LTE.dtype)
        denom = (w_T.sum() * logits_LTE.shape[0]).clamp(min=1.0)  # a batch of padding only: 0, not NaN
        tokens_per_expert_KE = torch.einsum("ltke,t->ke", chosen_LTKE, w_T) / denom
        prob_per_expert_E = torch.einsum("lte,t->e", probs_LTE, w_T) / denom
    return num_experts * (tokens_per_expert_KE * prob_per_expert_E[None]).sum()
