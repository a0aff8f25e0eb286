"""Triton kernels behind ``fused_moe`` (imported only where triton is installed).

Forward: ``swiglu_kernel`` (gathered rows through an expert's gate and up projections and SwiGLU) and
``rows_kernel`` (sorted rows through one expert matrix, written to their assignments' places), which
also serves the backward's input gradient. Backward: ``swiglu_grad_kernel`` (the down projection's
input gradient with the SwiGLU backward as its epilogue) and ``weight_grad_kernel`` (each expert's
weight gradient, a sum over that expert's rows).

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
# The weight gradients (training only) also try five stages: at the large model's training shapes on an H200
# that form took 275 against 324 us per pass with balanced routing, 327 against 437 with two experts
# (benchmarks/moe_train_micro.py, session 18 call 2).
WEIGHT_GRAD_CONFIGS = CONFIGS + [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=5)
]
if os.environ.get("TRITON_INTERPRET") == "1":
    # The CPU interpreter (used by the tests) cannot benchmark configurations.
    CONFIGS, WEIGHT_GRAD_CONFIGS = CONFIGS[:1], CONFIGS[:1]


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


@triton.jit
def load_rows(ptr, row_index, row_ok, WIDTH: tl.constexpr, cols, col_ok):
    """Tile [len(row_index), len(cols)] of a row-major [*, WIDTH] matrix, zero where masked."""
    offsets = row_index.to(tl.int64)[:, None] * WIDTH + cols[None, :]
    return tl.load(ptr + offsets, mask=row_ok[:, None] & col_ok[None, :], other=0.0)


@triton.autotune(configs=CONFIGS, key=["H", "F", "ROWS_BUCKET", "COLS_FASTEST", "SAVE_GATE_UP"])
@triton.jit
def swiglu_kernel(
    x_ptr,  # [T, H] tokens
    order_ptr,  # [A] assignment index (token * K + slot) of each sorted row
    group_end_ptr,  # [E] end row of each expert's group
    w_gate_up_ptr,  # [E, 2F, H]: each expert's gate rows, then its up rows
    out_ptr,  # [A, F] silu(gate) * up, sorted rows
    gate_up_ptr,  # [A, 2F] gate, then up, before the SwiGLU (written only with SAVE_GATE_UP, for the backward)
    ROWS_BUCKET,  # power of two near A, for the autotuner alone: a prefill and a decode step differ
    H: tl.constexpr,
    F: tl.constexpr,
    TOP_K: tl.constexpr,
    NUM_EXPERTS: tl.constexpr,
    COLS_FASTEST: tl.constexpr,
    SAVE_GATE_UP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row_tile, col_tile = tile_coords(F, BLOCK_N, COLS_FASTEST)
    expert, start, stop = tile_of(row_tile, group_end_ptr, NUM_EXPERTS, BLOCK_M)
    rows = start + tl.arange(0, BLOCK_M)
    row_ok = rows < stop
    token = tl.load(order_ptr + rows, mask=row_ok, other=0) // TOP_K
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
        a = load_rows(x_ptr, token, row_ok, H, ks, k_ok)
        w_offsets = w_base + w_rows[None, :] * H + ks[:, None]  # [BLOCK_K, 2 * BLOCK_N]: W^T
        w = tl.load(w_gate_up_ptr + w_offsets, mask=k_ok[:, None] & pair_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
    gate, up = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N, 2)))
    act = gate * tl.sigmoid(gate) * up
    mask = row_ok[:, None] & col_ok[None, :]
    out_offsets = rows.to(tl.int64)[:, None] * F + cols[None, :]
    tl.store(out_ptr + out_offsets, act.to(out_ptr.dtype.element_ty), mask=mask)
    if SAVE_GATE_UP:
        saved_offsets = rows.to(tl.int64)[:, None] * 2 * F + cols[None, :]
        tl.store(gate_up_ptr + saved_offsets, gate.to(gate_up_ptr.dtype.element_ty), mask=mask)
        tl.store(gate_up_ptr + saved_offsets + F, up.to(gate_up_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=CONFIGS, key=["K", "N", "W_STRIDE_K", "ROWS_BUCKET", "COLS_FASTEST", "WEIGHTED"])
@triton.jit
def rows_kernel(
    in_ptr,  # [A, K] sorted rows
    order_ptr,  # [A]
    group_end_ptr,  # [E]
    w_ptr,  # [E, K, N] or [E, N, K] (the strides say which)
    weight_ptr,  # [A] routing weight of each assignment, in assignment (token-major) order (read if WEIGHTED)
    out_ptr,  # [A, N] in assignment order
    ROWS_BUCKET,
    K: tl.constexpr,
    N: tl.constexpr,
    W_STRIDE_K: tl.constexpr,  # N for an [E, K, N] weight (the input gradient), 1 for [E, N, K] (the forward)
    W_STRIDE_N: tl.constexpr,
    NUM_EXPERTS: tl.constexpr,
    COLS_FASTEST: tl.constexpr,
    WEIGHTED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """out[assignment of row] = (weight *) in[row] @ W[expert of row]: the down projection forward, and the
    gate and up projections' input gradient in the backward."""
    row_tile, col_tile = tile_coords(N, BLOCK_N, COLS_FASTEST)
    expert, start, stop = tile_of(row_tile, group_end_ptr, NUM_EXPERTS, BLOCK_M)
    rows = start + tl.arange(0, BLOCK_M)
    row_ok = rows < stop
    cols = col_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    w_base = expert.to(tl.int64) * K * N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = load_rows(in_ptr, rows, row_ok, K, ks, k_ok)
        w_offsets = w_base + ks[:, None] * W_STRIDE_K + cols[None, :] * W_STRIDE_N  # [BLOCK_K, BLOCK_N]
        w = tl.load(w_ptr + w_offsets, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
    dest = tl.load(order_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    if WEIGHTED:
        acc = acc * tl.load(weight_ptr + dest, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    out_offsets = dest[:, None] * N + cols[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.autotune(configs=CONFIGS, key=["H", "F", "ROWS_BUCKET", "PREFETCH"])
@triton.jit
def swiglu_grad_kernel(
    grad_out_ptr,  # [A, H] gradient of the unweighted expert outputs, assignment order
    order_ptr,  # [A]
    group_end_ptr,  # [E]
    w_down_ptr,  # [E, H, F]
    gate_up_ptr,  # [A, 2F] sorted rows, saved by the forward
    grad_gate_up_ptr,  # [A, 2F] sorted rows: gradient of gate, then of up
    ROWS_BUCKET,
    H: tl.constexpr,
    F: tl.constexpr,
    NUM_EXPERTS: tl.constexpr,
    PREFETCH: tl.constexpr,  # load gate and up before the product, so their latency hides behind it
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """grad_act = grad_out[assignment of row] @ W_down[expert], then through SwiGLU to gate and up, in
    registers: the activation gradient is never written (the grouped path writes and re-reads it)."""
    row_tile, col_tile = tile_coords(F, BLOCK_N, True)
    expert, start, stop = tile_of(row_tile, group_end_ptr, NUM_EXPERTS, BLOCK_M)
    rows = start + tl.arange(0, BLOCK_M)
    row_ok = rows < stop
    src = tl.load(order_ptr + rows, mask=row_ok, other=0)
    cols = col_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < F
    w_base = expert.to(tl.int64) * H * F
    if PREFETCH:
        gate_in = load_rows(gate_up_ptr, rows, row_ok, 2 * F, cols, col_ok)
        up_in = load_rows(gate_up_ptr + F, rows, row_ok, 2 * F, cols, col_ok)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < H
        a = load_rows(grad_out_ptr, src, row_ok, H, ks, k_ok)
        w_offsets = w_base + ks[:, None] * F + cols[None, :]  # [BLOCK_K, BLOCK_N]: W as stored
        w = tl.load(w_down_ptr + w_offsets, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
    if not PREFETCH:
        gate_in = load_rows(gate_up_ptr, rows, row_ok, 2 * F, cols, col_ok)
        up_in = load_rows(gate_up_ptr + F, rows, row_ok, 2 * F, cols, col_ok)
    gate, up = gate_in.to(tl.float32), up_in.to(tl.float32)
    sig = tl.sigmoid(gate)
    grad_gate = acc * up * sig * (1.0 + gate * (1.0 - sig))  # d silu(g) / dg = s (1 + g (1 - s))
    grad_up = acc * gate * sig
    mask = row_ok[:, None] & col_ok[None, :]
    offsets = rows.to(tl.int64)[:, None] * 2 * F + cols[None, :]
    tl.store(grad_gate_up_ptr + offsets, grad_gate.to(grad_gate_up_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_gate_up_ptr + offsets + F, grad_up.to(grad_gate_up_ptr.dtype.element_ty), mask=mask)


@triton.jit
def expert_chunks(expert, group_end_ptr, NUM_EXPERTS: tl.constexpr, CHUNK: tl.constexpr):
    """Index of the first chunk of ``expert`` and how many it has, chunks cut as ``tile_of`` cuts tiles."""
    first = expert * 0
    count = expert * 0
    chunks_before = expert * 0
    group_start = expert * 0
    for e in tl.static_range(NUM_EXPERTS):
        group_end = tl.load(group_end_ptr + e).to(tl.int32)
        n_chunks = (group_end - group_start + CHUNK - 1) // CHUNK
        first = tl.where(expert == e, chunks_before, first)
        count = tl.where(expert == e, n_chunks, count)
        chunks_before += n_chunks
        group_start = group_end
    return first, count


@triton.autotune(configs=WEIGHT_GRAD_CONFIGS, key=["M", "N", "ROWS_BUCKET", "CHUNK"])
@triton.jit
def weight_grad_kernel(
    left_ptr,  # [*, M]
    right_ptr,  # [*, N]
    order_ptr,  # [A]
    group_end_ptr,  # [E]
    out_ptr,  # [E, M, N]: written here for an expert whose rows fit in one chunk
    partial_ptr,  # [chunks, M, N] fp32: one sum per chunk, for experts of several chunks
    ROWS_BUCKET,
    M: tl.constexpr,
    N: tl.constexpr,
    LEFT_DIV: tl.constexpr,  # 0: row r of left is sorted row r; d > 0: it is row order[r] // d
    RIGHT_DIV: tl.constexpr,
    NUM_EXPERTS: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Sum over one chunk of an expert's sorted rows r of left[r]^T right[r]: a share of that expert's weight
    gradient. Chunks are cut in each group like the row tiles, CHUNK rows long, so the work spreads over the
    GPU however the router splits the tokens (at random initialisation it sends nearly all to two experts)."""
    n_tiles: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
    tile, chunk = tl.program_id(0), tl.program_id(1)
    expert, start, stop = tile_of(chunk, group_end_ptr, NUM_EXPERTS, CHUNK)
    _, chunks_of_expert = expert_chunks(expert, group_end_ptr, NUM_EXPERTS, CHUNK)
    hi = tl.minimum(start + CHUNK, stop)
    ms = (tile // n_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    ns = (tile % n_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = ms < M, ns < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(start, hi, BLOCK_K):
        rows = r0 + tl.arange(0, BLOCK_K)
        row_ok = rows < hi
        left_rows = rows
        if LEFT_DIV:
            left_rows = tl.load(order_ptr + rows, mask=row_ok, other=0) // LEFT_DIV
        right_rows = rows
        if RIGHT_DIV:
            right_rows = tl.load(order_ptr + rows, mask=row_ok, other=0) // RIGHT_DIV
        left = load_rows(left_ptr, left_rows, row_ok, M, ms, m_ok)  # [BLOCK_K, BLOCK_M]
        right = load_rows(right_ptr, right_rows, row_ok, N, ns, n_ok)  # [BLOCK_K, BLOCK_N]
        acc = tl.dot(tl.trans(left), right, acc)
    used = start < stop  # the launch has a chunk or so per expert to spare
    mask = m_ok[:, None] & n_ok[None, :] & used
    offsets = ms.to(tl.int64)[:, None] * N + ns[None, :]
    if chunks_of_expert == 1:
        tl.store(out_ptr + expert.to(tl.int64) * M * N + offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(partial_ptr + chunk.to(tl.int64) * M * N + offsets, acc, mask=mask)


@triton.jit
def weight_grad_sum_kernel(
    partial_ptr,  # [chunks, M * N] fp32
    group_end_ptr,  # [E]
    out_ptr,  # [E, M * N]
    MN: tl.constexpr,
    NUM_EXPERTS: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out[e] = the sum of expert e's chunk shares, in chunk order (deterministic), for experts of several
    chunks; zero for an expert with no row; experts of one chunk were written by ``weight_grad_kernel``."""
    block, expert = tl.program_id(0), tl.program_id(1)
    first, count = expert_chunks(expert, group_end_ptr, NUM_EXPERTS, CHUNK)
    offsets = block * BLOCK + tl.arange(0, BLOCK)
    ok = offsets < MN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    share_ptr = partial_ptr + first.to(tl.int64) * MN
    for _ in range(0, count):
        acc += tl.load(share_ptr + offsets, mask=ok, other=0.0)
        share_ptr += MN
    out_offsets = expert.to(tl.int64) * MN + offsets
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=ok & (count != 1))
