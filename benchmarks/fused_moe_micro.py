"""Microbenchmark of the fused routed-expert kernels at forecasting shapes (on a GPU; --smoke: the CPU).

The two Triton kernels of ``model/fused_moe.py`` took 32% of the base h 96 forecast's GPU time in
session 11's profile (swiglu 42.4 ms, down 20.2 ms of 196). This times them, side by side in one run:

* the tile order of session 15 (a 2-D launch, row tiles fastest: every column tile re-reads all the
  gathered rows) against column tiles fastest (``fused_moe_kernels.tile_coords``);
* the grouped-GEMM path (``torch._grouped_mm``, gather, SwiGLU, permutation back) as the baseline.

Every variant's output is checked against the library's before it is timed. Shapes: the base and
large models' prefill chunk (2^16 tokens, top-2: 2^17 assignments) and the base decode step of
512 series (2^15 tokens).

    python benchmarks/fused_moe_micro.py --out DIR      # DIR/fused_moe_micro.{json,md}
    TRITON_INTERPRET=1 python benchmarks/fused_moe_micro.py --smoke --out DIR   # the code paths on the CPU

Session 16 on an H200 (raw: results/raw/session16/call1-2): column tiles fastest took the base prefill
chunk's two kernels from 631-636 to 550-573 us (down kernel 208-212 -> 159-167 us), large's from 2,007-2,041
to 1,827-1,834; five more autotuning configurations won nowhere and were dropped (call 1); gate and up as
one interleaved product (now the only form) took the swiglu kernel from 391 to 374 us on base, 1,223 to
1,210 on large (call 2). The grouped-GEMM path took 1,668-1,705 us (base) and 3,600-3,620 (large) for the
whole routed layer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.timing import environment, time_cpu, time_cuda  # noqa: E402
from timemoe_forecaster.config import TimeMoEConfig  # noqa: E402
from timemoe_forecaster.model import fused_moe  # noqa: E402
from timemoe_forecaster.model.moe import SparseExpertsLayer, route  # noqa: E402

LAUNCHES = 10  # kernel launches between two CUDA events (each launch is 0.1-0.4 ms of GPU work)


def make_case(size: str, tokens: int, device, **overrides) -> dict:
    """A layer of ``size`` with random weights and a routing from its own router on random tokens."""
    config = TimeMoEConfig.from_preset(size, num_hidden_layers=1, **overrides)
    layer = SparseExpertsLayer(config, "fused").to(device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.05)
    x_TH = torch.randn(tokens, config.hidden_size, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        weights_TK, experts_TK = route(layer.gate(x_TH), layer.top_k)
        order_A, group_end_E = layer._sort_by_expert(experts_TK)
    return {
        "size": size,
        "tokens": tokens,
        "layer": layer,
        "x_TH": x_TH,
        "weights_A": weights_TK.to(torch.bfloat16).reshape(-1),
        "experts_TK": experts_TK,
        "order_A": order_A,
        "group_end_E": group_end_E,
    }


@contextlib.contextmanager
def tile_order(cols_fastest: bool):
    """The library's kernels launched in the given tile order (the autotuners key on it: each order tunes its own)."""
    saved = fused_moe.COLS_FASTEST
    fused_moe.COLS_FASTEST = cols_fastest
    try:
        yield
    finally:
        fused_moe.COLS_FASTEST = saved


def describe(config) -> str:
    """An autotuning configuration in one short word: BLOCK_MxBLOCK_NxBLOCK_K, warps, stages."""
    kw = config.kwargs
    return f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']} w{config.num_warps} s{config.num_stages}"


def flops(case) -> tuple[float, float]:
    """GEMM FLOPs of the gate-and-up kernel and of the down kernel."""
    e, g, h = case["layer"].w_gate_up_EGH.shape
    a = case["order_A"].shape[0]
    return 2.0 * a * h * g, 2.0 * a * h * (g // 2)


def timed(fn) -> float:
    """Median microseconds per call over ``LAUNCHES`` back-to-back calls."""
    stats = time_cuda(lambda: [fn() for _ in range(LAUNCHES)], warmup=3, reps=20)
    return stats["ms_median"] * 1e3 / LAUNCHES


def timed_once_on_cpu(fn) -> float:
    """--smoke: one call on the CPU (the Triton interpreter), microseconds not worth reading."""
    return time_cpu(fn, 0, 1)["ms_median"] * 1e3


@torch.no_grad()
def measure_case(case: dict, variants: dict, rows: list, lines: list, timer=timed) -> None:
    """Check every tile order against the library's default, then time it; append JSON rows and table lines."""
    from timemoe_forecaster.model import fused_moe_kernels as kernels

    layer, order_A, group_end_E, weights_A = case["layer"], case["order_A"], case["group_end_E"], case["weights_A"]
    gate_up_flops, down_flops = flops(case)
    want_act = fused_moe.expert_swiglu(case["x_TH"], order_A, group_end_E, layer.w_gate_up_EGH, layer.top_k)
    want_y = fused_moe.expert_down(want_act, order_A, group_end_E, layer.w_down_EHF, weights_A)
    weights_TK = weights_A.view(case["tokens"], -1)
    us = timer(lambda: layer._grouped(case["x_TH"], weights_TK, case["experts_TK"]))
    label = f"{case['size']}, {case['tokens']} tokens ({order_A.shape[0]} assignments)"
    rows.append({"case": label, "variant": "grouped GEMMs (torch._grouped_mm), whole layer", "us_total": us})
    lines.append(f"| {label} | grouped GEMMs, whole routed layer | – | – | {us:.1f} | – |")
    print(lines[-1], flush=True)
    for name, cols_fastest in variants.items():
        with tile_order(cols_fastest):
            act = fused_moe.expert_swiglu(case["x_TH"], order_A, group_end_E, layer.w_gate_up_EGH, layer.top_k)
            config_swiglu = describe(kernels.swiglu_kernel.best_config)
            y = fused_moe.expert_down(act, order_A, group_end_E, layer.w_down_EHF, weights_A)
            config_down = describe(kernels.rows_kernel.best_config)
            assert torch.allclose(act.float(), want_act.float(), rtol=2e-2, atol=2e-2), name
            assert torch.allclose(y.float(), want_y.float(), rtol=2e-2, atol=2e-2), name
            us_swiglu = timer(
                lambda: fused_moe.expert_swiglu(case["x_TH"], order_A, group_end_E, layer.w_gate_up_EGH, layer.top_k)
            )
            us_down = timer(
                lambda act=act: fused_moe.expert_down(act, order_A, group_end_E, layer.w_down_EHF, weights_A)
            )
        row = {
            "case": label,
            "variant": name,
            "us_swiglu": us_swiglu,
            "us_down": us_down,
            "us_total": us_swiglu + us_down,
            "tflops_swiglu": gate_up_flops / us_swiglu / 1e6,
            "tflops_down": down_flops / us_down / 1e6,
            "config_swiglu": config_swiglu,
            "config_down": config_down,
        }
        rows.append(row)
        lines.append(
            f"| {label} | {name} | {us_swiglu:.1f} ({row['tflops_swiglu']:.0f} TFLOP/s) | "
            f"{us_down:.1f} ({row['tflops_down']:.0f} TFLOP/s) | {us_swiglu + us_down:.1f} | "
            f"{row['config_swiglu']} / {row['config_down']} |"
        )
        print(lines[-1], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU; needs TRITON_INTERPRET=1")
    args = parser.parse_args()
    if args.smoke and os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("--smoke runs the kernels in Triton's interpreter: set TRITON_INTERPRET=1 before starting python")
    if not args.smoke and not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU (--smoke runs on the CPU)")
    variants = {"rows fastest (session 15's order)": False, "cols fastest (library)": True}
    rows, lines = [], []
    if args.smoke:
        # Widths over one tile (hidden 200, expert width 288: rows of 16-byte multiples for the grouped GEMMs),
        # so both launch orders cut columns.
        case = make_case("tiny", 300, torch.device("cpu"), hidden_size=200, intermediate_size=576)
        measure_case(case, variants, rows, lines, timer=timed_once_on_cpu)
    for size, tokens in [] if args.smoke else [("base", 2**16), ("base", 2**15), ("large", 2**16)]:
        measure_case(make_case(size, tokens, torch.device("cuda")), variants, rows, lines)
        torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fused_moe_micro.json").write_text(json.dumps({"environment": environment(), "rows": rows}, indent=1))
    header = [
        "| case | variant | swiglu us | down us | total us | configs (swiglu / down) |",
        "|---|---|---|---|---|---|",
    ]
    (args.out / "fused_moe_micro.md").write_text("\n".join(header + lines) + "\n")


if __name__ == "__main__":
    main()
