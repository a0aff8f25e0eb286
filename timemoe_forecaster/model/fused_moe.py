"""Fused Triton kernels for the routed experts, forward and backward.

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

For training, ``routed_experts`` runs the same two kernels unweighted (the caller weights and sums
the k rows of a token, so autograd gives the routing weights' gradient), keeps gate and up for the
backward, and has a backward of four kernels: the down projection's input gradient with the SwiGLU
backward in its epilogue (the activation gradient is never written), the input gradient of gate and
up written to the assignments' places, and each expert's two weight gradients as sums over its rows.

All are ``torch.library`` custom ops so that ``torch.compile`` calls them as opaque kernels.
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

    return triton, fused_moe_kernels


def _rows_bucket(rows: int) -> int:
    """Autotuning key for the number of rows: the power of two at or above it, within [2^12, 2^20]."""
    return min(max(1 << (rows - 1).bit_length(), 1 << 12), 1 << 20)


# Column tiles of one row tile run side by side, so the gathered rows are read from HBM once
# (``fused_moe_kernels.tile_coords``; benchmarks/fused_moe_micro.py times both orders).
COLS_FASTEST = True


def launch_grid(triton, rows: int, cols: int, num_experts: int, cols_fastest: bool):
    """The row kernels' launch grid for ``rows`` sorted assignments and ``cols`` output columns."""

    def grid(meta):
        # Cutting each group into tiles wastes at most one partial tile per expert.
        row_tiles = triton.cdiv(rows, meta["BLOCK_M"]) + num_experts
        col_tiles = triton.cdiv(cols, meta["BLOCK_N"])
        return (row_tiles * col_tiles,) if cols_fastest else (row_tiles, col_tiles)

    return grid


def _swiglu(x_TH, order_A, group_end_E, w_gate_up_EGH, top_k, save_gate_up: bool):
    """[A, F] SwiGLU outputs of the sorted rows, and their [A, 2F] gate and up (None unless saved)."""
    triton, kernels = _kernels()
    e, g, h = w_gate_up_EGH.shape
    a = order_A.shape[0]
    act_AF = x_TH.new_empty(a, g // 2)
    gate_up_AG = x_TH.new_empty(a, g) if save_gate_up else None
    if a:
        kernels.swiglu_kernel[launch_grid(triton, a, g // 2, e, COLS_FASTEST)](
            x_TH.contiguous(), order_A, group_end_E, w_gate_up_EGH.contiguous(), act_AF,
            act_AF if gate_up_AG is None else gate_up_AG, _rows_bucket(a),
            H=h, F=g // 2, TOP_K=top_k, NUM_EXPERTS=e, COLS_FASTEST=COLS_FASTEST, SAVE_GATE_UP=save_gate_up,
        )  # fmt: skip
    return act_AF, gate_up_AG


def _rows_times_expert(in_AK, order_A, group_end_E, w_EKN, weights_A=None, transposed=False):
    """[A, N] in assignment order: each sorted row times its expert's matrix (``w_EKN`` [E, K, N], or
    [E, N, K] used transposed), times its routing weight when ``weights_A`` is given."""
    triton, kernels = _kernels()
    e = w_EKN.shape[0]
    n, k = w_EKN.shape[1:] if transposed else w_EKN.shape[2:0:-1]
    a = order_A.shape[0]
    out_AN = in_AK.new_empty(a, n)
    if a:
        kernels.rows_kernel[launch_grid(triton, a, n, e, COLS_FASTEST)](
            in_AK.contiguous(), order_A, group_end_E, w_EKN.contiguous(),
            in_AK if weights_A is None else weights_A.contiguous(), out_AN, _rows_bucket(a),
            K=k, N=n, W_STRIDE_K=1 if transposed else n, W_STRIDE_N=k if transposed else 1,
            NUM_EXPERTS=e, COLS_FASTEST=COLS_FASTEST, WEIGHTED=weights_A is not None,
        )  # fmt: skip
    return out_AN


# Whether swiglu_grad_kernel loads gate and up before its product: 162 -> 148 us per call at the base model's
# training shapes on an H200, balanced routing, 160 -> 147 with two experts (benchmarks/moe_train_micro.py,
# session 17 call 3; large's shapes not timed).
SWIGLU_GRAD_PREFETCH = True
MIN_WEIGHT_GRAD_CHUNK = 256  # rows; shorter chunks would write more fp32 shares than they save in balance


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 8 stands in for the CPU (triton's interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8


def _weight_grad(left, right, order_A, group_end_E, left_div: int, right_div: int, dtype) -> torch.Tensor:
    """[E, M, N]: for each expert, the sum over its sorted rows r of left[r]^T right[r] (rows picked as
    ``weight_grad_kernel``'s LEFT_DIV / RIGHT_DIV say)."""
    triton, kernels = _kernels()
    e, m, n, a = group_end_E.shape[0], left.shape[1], right.shape[1], order_A.shape[0]
    # Chunks short enough that two waves of 128-wide output tiles fill the GPU even when one expert holds
    # every row; an expert of one chunk is written directly, longer ones go through fp32 shares.
    tiles = triton.cdiv(m, 128) * triton.cdiv(n, 128)
    chunk = tiles * a // (2 * _multiprocessors(left.device))
    chunk = min(max(1 << max(chunk, 1).bit_length() - 1, MIN_WEIGHT_GRAD_CHUNK), 1 << 16)
    chunks = triton.cdiv(a, chunk) + e  # as the row tiles: at most one partial chunk per expert
    out = left.new_empty(e, m, n, dtype=dtype)
    partial = left.new_empty(chunks, m, n, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), chunks)  # noqa: E731
    kernels.weight_grad_kernel[grid](
        left.contiguous(), right.contiguous(), order_A, group_end_E, out, partial, _rows_bucket(max(a, 1)),
        M=m, N=n, LEFT_DIV=left_div, RIGHT_DIV=right_div, NUM_EXPERTS=e, CHUNK=chunk,
    )  # fmt: skip
    block = 1024
    kernels.weight_grad_sum_kernel[(triton.cdiv(m * n, block), e)](
        partial, group_end_E, out, MN=m * n, NUM_EXPERTS=e, CHUNK=chunk, BLOCK=block
    )
    return out


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
    return _swiglu(x_TH, order_A, group_end_E, w_gate_up_EGH, top_k, save_gate_up=False)[0]


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
    return _rows_times_expert(act_AF, order_A, group_end_E, w_down_EHF, weights_A, transposed=True)


@expert_down.register_fake
def _(act_AF, order_A, group_end_E, w_down_EHF, weights_A):
    return act_AF.new_empty(order_A.shape[0], w_down_EHF.shape[1])


@torch.library.custom_op("timemoe::experts_forward", mutates_args=())
def experts_forward(
    x_TH: torch.Tensor,
    order_A: torch.Tensor,
    group_end_E: torch.Tensor,
    w_gate_up_EGH: torch.Tensor,
    w_down_EHF: torch.Tensor,
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unweighted expert outputs in assignment order [A, H], with what the backward needs: the SwiGLU
    outputs [A, F] and the gate and up outputs [A, 2F] of the sorted rows."""
    act_AF, gate_up_AG = _swiglu(x_TH, order_A, group_end_E, w_gate_up_EGH, top_k, save_gate_up=True)
    return _rows_times_expert(act_AF, order_A, group_end_E, w_down_EHF, transposed=True), act_AF, gate_up_AG


@experts_forward.register_fake
def _(x_TH, order_A, group_end_E, w_gate_up_EGH, w_down_EHF, top_k):
    a, (_, g, h) = order_A.shape[0], w_gate_up_EGH.shape
    return x_TH.new_empty(a, h), x_TH.new_empty(a, g // 2), x_TH.new_empty(a, g)


@torch.library.custom_op("timemoe::experts_backward", mutates_args=())
def experts_backward(
    grad_AH: torch.Tensor,
    x_TH: torch.Tensor,
    order_A: torch.Tensor,
    group_end_E: torch.Tensor,
    w_gate_up_EGH: torch.Tensor,
    w_down_EHF: torch.Tensor,
    act_AF: torch.Tensor,
    gate_up_AG: torch.Tensor,
    top_k: int,
    need_x: bool,
    need_w_gate_up: bool,
    need_w_down: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of x [T, H], the gate-and-up weights [E, 2F, H] and the down weights [E, H, F], given the
    gradient of ``experts_forward``'s unweighted outputs (assignment order). A gradient not needed (frozen
    experts, or an input that wants none) is not computed: an empty tensor stands in its place."""
    triton, kernels = _kernels()
    e, h, f = w_down_EHF.shape
    a = order_A.shape[0]
    grad_AH = grad_AH.contiguous()
    grad_x_TH, grad_w_gate_up, grad_w_down = (x_TH.new_empty(0) for _ in range(3))  # distinct: outputs never alias
    if need_x or need_w_gate_up:
        grad_gate_up_AG = torch.empty_like(gate_up_AG)
        if a:
            kernels.swiglu_grad_kernel[launch_grid(triton, a, f, e, True)](
                grad_AH, order_A, group_end_E, w_down_EHF.contiguous(), gate_up_AG.contiguous(), grad_gate_up_AG,
                _rows_bucket(a), H=h, F=f, NUM_EXPERTS=e, PREFETCH=SWIGLU_GRAD_PREFETCH,
            )  # fmt: skip
        if need_x:
            grad_x_AH = _rows_times_expert(grad_gate_up_AG, order_A, group_end_E, w_gate_up_EGH)
            grad_x_TH = grad_x_AH.view(-1, top_k, h).sum(dim=1) if top_k > 1 else grad_x_AH
        if need_w_gate_up:
            grad_w_gate_up = _weight_grad(grad_gate_up_AG, x_TH, order_A, group_end_E, 0, top_k, w_gate_up_EGH.dtype)
    if need_w_down:
        grad_w_down = _weight_grad(grad_AH, act_AF, order_A, group_end_E, 1, 0, w_down_EHF.dtype)
    return grad_x_TH, grad_w_gate_up, grad_w_down


@experts_backward.register_fake
def _(grad_AH, x_TH, order_A, group_end_E, w_gate_up_EGH, w_down_EHF, act_AF, gate_up_AG, top_k, need_x,
      need_w_gate_up, need_w_down):  # fmt: skip
    def maybe(need: bool, like: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(like) if need else x_TH.new_empty(0)

    return maybe(need_x, x_TH), maybe(need_w_gate_up, w_gate_up_EGH), maybe(need_w_down, w_down_EHF)


class _RoutedExperts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TH, order_A, group_end_E, w_gate_up_EGH, w_down_EHF, top_k):
        y_AH, act_AF, gate_up_AG = experts_forward(x_TH, order_A, group_end_E, w_gate_up_EGH, w_down_EHF, top_k)
        ctx.save_for_backward(x_TH, order_A, group_end_E, w_gate_up_EGH, w_down_EHF, act_AF, gate_up_AG)
        ctx.top_k = top_k
        return y_AH

    @staticmethod
    def backward(ctx, grad_AH):
        need_x, _, _, need_w_gate_up, need_w_down, _ = ctx.needs_input_grad
        needs = (need_x, need_w_gate_up, need_w_down)
        grads = experts_backward(grad_AH, *ctx.saved_tensors, ctx.top_k, *needs)
        grad_x, grad_w_gate_up, grad_w_down = (grad if need else None for grad, need in zip(grads, needs))
        return grad_x, None, None, grad_w_gate_up, grad_w_down, None


def routed_experts(
    x_TH: torch.Tensor,
    order_A: torch.Tensor,
    group_end_E: torch.Tensor,
    w_gate_up_EGH: torch.Tensor,
    w_down_EHF: torch.Tensor,
    top_k: int,
) -> torch.Tensor:
    """Unweighted expert outputs [A, H] in assignment order (token * K + slot), differentiable in x and
    both weights: the training form of ``expert_swiglu`` + ``expert_down``."""
    return _RoutedExperts.apply(x_TH, order_A, group_end_E, w_gate_up_EGH, w_down_EHF, top_k)


# The widest experts (F) that ``dispatch="auto"`` trains through ``routed_experts``; an explicit "fused" always
# does. Whole training steps on an H200 (docs/performance.md, sessions 17-19): for base (F = 768) 7.8-8.2% faster
# than the grouped GEMMs with the randomly initialised router, as fast with balanced routing, and 17% faster in eager
# steps (no torch.compile); for large (F = 1536) 8% slower, where torch._grouped_mm's CUTLASS kernels beat these
# Triton ones. Wider experts take the grouped GEMMs.
TRAIN_MAX_EXPERT_SIZE = 1024


def usable(x: torch.Tensor) -> bool:
    """Whether the kernels can run here: CUDA and triton present (the caller checks that the matmuls run
    in one of ``FUSED_DTYPES``)."""
    return x.is_cuda and TRITON_AVAILABLE
