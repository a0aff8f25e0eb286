"""Triton kernels behind ``fused_moe`` (imported only where triton is installed).

Kernels are module-level functions because triton resolves the functions a kernel calls through
its module's globals.
"""

import os

import triton
import triton.language as tl

CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
    for bm, bn, bk, w, s in [
        (128, 128, 64, 8, 3),
        (128, 64, 64, 4, 4),
        (64, 128, 64, 4, 4),
        (128, 128, 32, 8, 4),
        (128, 256, 64, 8, 3),
    ]
]
if os.environ.get("TRITON_INTERPRET") == "1":
    CONFIGS = CONFIGS[:1]  # the CPU interpreter (used by the tests) cannot benchmark configurations


@triton.jit
def tile_coords(N: tl.constexpr, BLOCK_N: tl.constexpr, COLS_FASTEST: tl.constexpr):
    """(row tile, column tile) of this program.

    With ``COLS_FASTEST`` the launch is one-dimensional and consecutive programs take the column tiles
    of one row tile, so the programs resident at the same time read the same gathered rows: each row
    comes from HBM about once and from L2 for the other column tiles. Otherwise (a 2-D launch, rows
    fastest) every column tile re-reads all the rows, whose working set (2^17 rows of 768 bytes for the
    base model's prefill) is larger than L2."""
    if COLS_FASTEST:
        col_tiles: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
        pid = tl.program_id(0)
        return pid // col_tiles, pid % col_tiles
    return tl.program_id(0), tl.program_id(1)


@triton.jit
def tile_of(pid_m, group_end_ptr, NUM_EXPERTS: tl.constexpr, BLOCK_M: tl.constexpr):
    """Expert, first row and end row of tile ``pid_m``; an unused tile gets an empty range."""
    expert = pid_m * 0
    start = pid_m * 0
    stop = pid_m * 0
    tiles_before = pid_m * 0
    group_start = pid_m * 0
    for e in tl.static_range(NUM_EXPERTS):
        group_end = tl.load(group_end_ptr + e).to(tl.int32)
        n_tiles = (group_end - group_start + BLOCK_M - 1) // BLOCK_M
        hit = (pid_m >= tiles_before) & (pid_m < tiles_before + n_tiles)
        expert = tl.where(hit, e, expert)
        start = tl.where(hit, group_start + (pid_m - tiles_before) * BLOCK_M, start)
        stop = tl.where(hit, group_end, stop)
        tiles_before += n_tiles
        group_start = group_end
    return expert, start, stop


@triton.autotune(configs=CONFIGS, key=["H", "F", "ROWS_BUCKET", "COLS_FASTEST"])
@triton.jit
def swiglu_kernel(
    x_ptr,  # [T, H] tokens
    order_ptr,  # [A] assignment index (token * K + slot) of each sorted row
    group_end_ptr,  # [E] end row of each expert's group
    w_gate_up_ptr,  # [E, 2F, H]: each expert's gate rows, then its up rows
    out_ptr,  # [A, F]
    ROWS_BUCKET,  # power of two near A, for the autotuner alone: a prefill and a decode step differ
    H: tl.constexpr,
    F: tl.constexpr,
    TOP_K: tl.constexpr,
    NUM_EXPERTS: tl.constexpr,
    COLS_FASTEST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row_tile, col_tile = tile_coords(F, BLOCK_N, COLS_FASTEST)
    expert, start, stop = tile_of(row_tile, group_end_ptr, NUM_EXPERTS, BLOCK_M)
    rows = start + tl.arange(0, BLOCK_M)
    row_ok = rows < stop
    token = (tl.load(order_ptr + rows, mask=row_ok, other=0) // TOP_K).to(tl.int64)
    cols = col_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < F
    w_base = expert.to(tl.int64) * 2 * F * H
    # One product [BLOCK_M, 2 * BLOCK_N] per step on weight columns that interleave gate and up rows
    # (gate c, up c, gate c+1, ...), split apart after the loop: one MMA twice as wide instead of two
    # (2-4% faster at the base model's shapes, benchmarks/fused_moe_micro.py, session 16 call 2).
    pair = tl.arange(0, 2 * BLOCK_N)
    pair_col = col_tile * BLOCK_N + pair // 2
    w_rows = (pair % 2) * F + pair_col
    pair_ok = pair_col < F
    acc = tl.zeros((BLOCK_M, 2 * BLOCK_N), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        a = tl.load(x_ptr + token[:, None] * H + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_offsets = w_base + w_rows[None, :] * H + ks[:, None]  # [BLOCK_K, 2 * BLOCK_N]: W^T
        w = tl.load(w_gate_up_ptr + w_offsets, mask=k_ok[:, None] & pair_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
    gate, up = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N, 2)))
    act = gate * tl.sigmoid(gate) * up
    out_offsets = rows.to(tl.int64)[:, None] * F + cols[None, :]
    tl.store(out_ptr + out_offsets, act.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.autotune(configs=CONFIGS, key=["H", "F", "ROWS_BUCKET", "COLS_FASTEST"])
@triton.jit
def down_kernel(
    act_ptr,  # [A, F] sorted rows
    order_ptr,  # [A]
    group_end_ptr,  # [E]
    w_down_ptr,  # [E, H, F]
    weight_ptr,  # [A] routing weight of each assignment, in assignment (token-major) order
    out_ptr,  # [A, H] in assignment order
    ROWS_BUCKET,
    H: tl.constexpr,
    F: tl.constexpr,
    NUM_EXPERTS: tl.constexpr,
    COLS_FASTEST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row_tile, col_tile = tile_coords(H, BLOCK_N, COLS_FASTEST)
    expert, start, stop = tile_of(row_tile, group_end_ptr, NUM_EXPERTS, BLOCK_M)
    rows = start + tl.arange(0, BLOCK_M)
    row_ok = rows < stop
    cols = col_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < H
    w_base = expert.to(tl.int64) * H * F
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, F, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < F
        a_offsets = rows.to(tl.int64)[:, None] * F + ks[None, :]
        a = tl.load(act_ptr + a_offsets, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_offsets = w_base + cols[None, :] * F + ks[:, None]  # [BLOCK_K, BLOCK_N]: W^T
        w = tl.load(w_down_ptr + w_offsets, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
    dest = tl.load(order_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    weight = tl.load(weight_ptr + dest, mask=row_ok, other=0.0).to(tl.float32)
    out = acc * weight[:, None]
    out_offsets = dest[:, None] * H + cols[None, :]
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])
