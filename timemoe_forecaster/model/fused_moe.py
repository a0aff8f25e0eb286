"""Fused Triton kernels for the routed experts at inference (no autograd).

The grouped-GEMM path (``moe.SparseExpertsLayer._grouped``) makes five passes over the expert
activations: gather the tokens, gate GEMM, up GEMM, SwiGLU, down GEMM, then a permutation back.
At forecasting shapes (a million assignments of width 768 for the base model) the SwiGLU pass alone
took 15% of a forecast on an H100 and moved only memory (docs/performance.md). Two kernels here do
the same work in two passes:

* ``expert_swiglu``: for each tile of assignments sorted by expert, gather the tokens' rows, run the
  gate and the up GEMM of that expert as one product on interleaved weight rows, and write
  ``silu(gate) * up`` once.
* ``expert_down``: the down GEMM, with each output row written straight to its assignment's place
  in token order and multiplied by its routing weight, so the caller only sums the k rows per token.

Tiles never straddle two experts: tile ``m`` belongs to the expert whose group holds it once every
group is cut into tiles of ``BLOCK_M`` rows, which each program works out from the group ends
(eight loads), so no host sync and no extra launch is needed. The column tiles of one row tile are
launched next to each other, so the gathered rows are read from HBM about once. Accumulation is fp32;
the result is rounded once (the grouped path rounds the gate and up outputs before the SwiGLU).

Both are ``torch.library`` custom ops so that ``torch.compile`` calls them as opaque kernels.
Shape legend as in ``moe.py``: T tokens, H hidden, E experts, K top-k, F expert width, A = T·K.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

FUSED_DTYPES = (torch.bfloat16, torch.float16)
# Looked up once without importing triton (slow to import; absent on CPU-only installs).
TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


@functools.cache
def _kernels():
    """Import the kernels on first use (triton is optional and absent on CPU-only installs)."""
    try:
        import triton

        from . import fused_moe_kernels
    except Exception as err:  # noqa: BLE001 - a broken triton install should say what to do
        raise RuntimeError(
            f"the fused MoE kernels need a working triton ({type(err).__name__}: {err}); call "
            "model.set_moe_dispatch('grouped') to run the experts without them"
        ) from err

    return triton, fused_moe_kernels.swiglu_kernel, fused_moe_kernels.down_kernel


def _rows_bucket(rows: int) -> int:
    """Autotuning key for the number of rows: the power of two at or above it, within [2^12, 2^20]."""
    return min(max(1 << (rows - 1).bit_length(), 1 << 12), 1 << 20)


# Column tiles of one row tile run side by side, so the gathered rows are read from HBM once
# (``fused_moe_kernels.tile_coords``; benchmarks/fused_moe_micro.py times both orders).
COLS_FASTEST = True


def launch_grid(triton, rows: int, cols: int, num_experts: int, cols_fastest: bool):
    """The kernels' launch grid for ``rows`` sorted assignments and ``cols`` output columns."""

    def grid(meta):
        # Cutting each group into tiles wastes at most one partial tile per expert.
        row_tiles = triton.cdiv(rows, meta["BLOCK_M"]) + num_experts
        col_tiles = triton.cdiv(cols, meta["BLOCK_N"])
        return (row_tiles * col_tiles,) if cols_fastest else (row_tiles, col_tiles)

    return grid


@torch.library.custom_op("timemoe::expert_swiglu", mutates_args=())
def expert_swiglu(
    x_TH: torch.Tensor,
    order_A: torch.Tensor,
    group_end_E: torch.Tensor,
    w_gate_up_EGH: torch.Tensor,
    top_k: int,
) -> torch.Tensor:
    """silu(x W_gate^T) * (x W_up^T) per expert, for the token of each sorted assignment: [A, F].

    ``w_gate_up_EGH`` [E, 2F, H] holds each expert's gate rows, then its up rows."""
    triton, swiglu_kernel, _ = _kernels()
    x_TH = x_TH.contiguous()
    e, g, h = w_gate_up_EGH.shape
    f = g // 2
    out_AF = torch.empty(order_A.shape[0], f, dtype=x_TH.dtype, device=x_TH.device)
    if order_A.shape[0]:
        swiglu_kernel[launch_grid(triton, order_A.shape[0], f, e, COLS_FASTEST)](
            x_TH, order_A, group_end_E, w_gate_up_EGH.contiguous(), out_AF,
            _rows_bucket(order_A.shape[0]),
            H=h, F=f, TOP_K=top_k, NUM_EXPERTS=e, COLS_FASTEST=COLS_FASTEST,
        )  # fmt: skip
    return out_AF


@expert_swiglu.register_fake
def _(x_TH, order_A, group_end_E, w_gate_up_EGH, top_k):
    return x_TH.new_empty(order_A.shape[0], w_gate_up_EGH.shape[1] // 2)


@torch.library.custom_op("timemoe::expert_down", mutates_args=())
def expert_down(
    act_AF: torch.Tensor,
    order_A: torch.Tensor,
    group_end_E: torch.Tensor,
    w_down_EHF: torch.Tensor,
    weights_A: torch.Tensor,
) -> torch.Tensor:
    """weight * (act W_down^T) per expert, each row written to its assignment's place: [A, H]."""
    triton, _, down_kernel = _kernels()
    e, h, f = w_down_EHF.shape
    out_AH = torch.empty(order_A.shape[0], h, dtype=act_AF.dtype, device=act_AF.device)
    if order_A.shape[0]:
        down_kernel[launch_grid(triton, order_A.shape[0], h, e, COLS_FASTEST)](
            act_AF.contiguous(), order_A, group_end_E, w_down_EHF.contiguous(), weights_A.contiguous(), out_AH,
            _rows_bucket(order_A.shape[0]),
            H=h, F=f, NUM_EXPERTS=e, COLS_FASTEST=COLS_FASTEST,
        )  # fmt: skip
    return out_AH


@expert_down.register_fake
def _(act_AF, order_A, group_end_E, w_down_EHF, weights_A):
    return act_AF.new_empty(order_A.shape[0], w_down_EHF.shape[1])


def usable(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether the kernels can run here: CUDA, no gradient wanted, triton present (the caller checks
    that the matmuls run in one of ``FUSED_DTYPES``)."""
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
    return x.is_cuda and not needs_grad and TRITON_AVAILABLE
