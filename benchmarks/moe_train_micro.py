"""Microbenchmark of the routed experts' training pass, forward and backward (GPU only).

In the H200 training profiles (sessions 12-13) the routed experts of the base model took about 7 ms of
a 32 ms step in their grouped GEMMs (``torch._grouped_mm``, about 300 TFLOP/s at base's narrow widths)
plus about 1.7 ms of SwiGLU passes and the gathers around them. This times one layer's routed experts
(the router's choices given) forward and backward at the training shapes of base (batch 4 x 4096) and
large (batch 2 x 4096), for each dispatch:

* ``grouped``: gather, grouped GEMMs, SwiGLU, grouped GEMM, permutation back, autograd's backward;
* ``grouped, compiled``: the same under ``torch.compile`` (SwiGLU and its backward fused, as in the
  compiled training step, which the eager row overstates);
* ``fused``: ``fused_moe.routed_experts``, two Triton kernels forward and four backward, eager (so the
  weighted sum over k, its backward and the counting sort run as separate ATen kernels);
* ``fused, compiled``: the same under ``torch.compile``, which fuses that glue as the compiled step does
  (session 19: without this row the layer alone seemed to disagree with the whole steps);
* ``fused, more tile shapes``: the same with ``EXTRA_CONFIGS`` added to the kernels' autotuning (session 18:
  at large's widths the Triton kernels ran slower than torch._grouped_mm's CUTLASS ones); the configurations
  picked are printed and saved.

Every dispatch is first checked against ``grouped`` (output and all gradients, bf16 tolerance). Device
time per pass comes from the profiler (the sum of the kernels, so host gaps do not count) with the
heaviest kernels listed; wall time between CUDA events is reported next to it.

    python benchmarks/moe_train_micro.py --out results_dir
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

# The repository root, so that ``from benchmarks...`` works when run as ``python benchmarks/moe_train_micro.py`` too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import time_cuda  # noqa: E402
from timemoe_forecaster import TimeMoEConfig  # noqa: E402
from timemoe_forecaster.model.moe import SparseExpertsLayer, route  # noqa: E402

SHAPES = {"base": 4 * 4096, "large": 2 * 4096}  # tokens per training step (speed.py's train cases)
# "balanced": a random router on random inputs (near-even groups); "two experts": every token to the same two,
# which is how the randomly initialised base model routes in every layer (pointwise inputs look alike).
ROUTINGS = ("balanced", "two experts")
DISPATCHES = ("grouped", "grouped, compiled", "fused", "fused, compiled", "fused, more tile shapes")
# Tile shapes (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) tried on top of fused_moe_kernels.CONFIGS.
EXTRA_CONFIGS = [
    (128, 128, 64, 4, 4),
    (128, 128, 64, 8, 4),
    (128, 128, 64, 8, 5),
    (256, 128, 64, 8, 3),
    (128, 256, 64, 8, 4),
    (64, 256, 64, 4, 4),
    (256, 64, 64, 8, 4),
    (128, 64, 128, 4, 3),
]


def tuned_kernels():
    from timemoe_forecaster.model import fused_moe_kernels as kernels

    names = ("swiglu_kernel", "rows_kernel", "swiglu_grad_kernel", "weight_grad_kernel")
    return {name: getattr(kernels, name) for name in names}, kernels


def set_tile_shapes(more: bool) -> None:
    """The library's autotuning configurations, or those plus EXTRA_CONFIGS; earlier choices are forgotten."""
    import triton

    tuned, kernels = tuned_kernels()
    extra = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st)
        for bm, bn, bk, w, st in EXTRA_CONFIGS
    ]
    for name, kernel in tuned.items():
        library = kernels.WEIGHT_GRAD_CONFIGS if name == "weight_grad_kernel" else kernels.CONFIGS
        kernel.configs = list(library) + (extra if more else [])
        kernel.cache.clear()


def picked_tile_shapes() -> dict:
    """Per kernel, the configuration the autotuner picked for each key it met."""
    return {
        name: {str(key): str(config) for key, config in kernel.cache.items()}
        for name, kernel in tuned_kernels()[0].items()
    }


def make_case(size: str, tokens: int, routing: str, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    config = TimeMoEConfig.from_preset(size, num_hidden_layers=1)
    layer = SparseExpertsLayer(config, "grouped").cuda().to(torch.bfloat16)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.02)
    x_TH = torch.randn(tokens, config.hidden_size, device="cuda", dtype=torch.bfloat16)
    weights_TK, experts_TK = route(layer.gate(x_TH), config.num_experts_per_tok)
    if routing == "two experts":  # as the randomly initialised models of speed.py route (every layer)
        experts_TK = torch.arange(config.num_experts_per_tok, device="cuda").expand_as(experts_TK).contiguous()
    return {
        "size": size,
        "routing": routing,
        "layer": layer,
        "x_TH": x_TH,
        "weights_TK": weights_TK.to(torch.bfloat16),
        "experts_TK": experts_TK,
        "grad_TH": torch.randn_like(x_TH),
        # Wrapped once here (compiled on first call): wrapping on every pass would add host time to the wall timings.
        "grouped, compiled": torch.compile(layer._grouped, dynamic=False),
        "fused, compiled": torch.compile(layer._fused, dynamic=False),
        "flops": 3 * 2.0 * tokens * config.num_experts_per_tok * config.hidden_size * 3 * config.expert_size,
    }


def forward_backward(case: dict, dispatch: str):
    """One training pass of the routed experts; returns the output and the gradients it made."""
    layer = case["layer"]
    layer.dispatch = dispatch.split(",")[0]
    layer.zero_grad(set_to_none=True)
    x = case["x_TH"].detach().requires_grad_()
    weights = case["weights_TK"].detach().requires_grad_()
    paths = {"grouped": layer._grouped, "fused": layer._fused, "fused, more tile shapes": layer._fused}
    path = case[dispatch] if dispatch.endswith("compiled") else paths[dispatch]
    out = path(x, weights, case["experts_TK"])
    out.backward(case["grad_TH"])
    return [out, x.grad, weights.grad, layer.w_gate_up_EGH.grad, layer.w_down_EHF.grad]


def device_time(fn, passes: int = 10) -> tuple[float, list]:
    """Microseconds of kernel time per pass, and the heaviest kernels (name, us per pass)."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(passes):
            fn()
        torch.cuda.synchronize()
    per_kernel = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[event.name] += event.device_time / passes
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:8]
    return sum(per_kernel.values()), [(name[:90], round(us, 1)) for name, us in top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", default="base,large")
    parser.add_argument("--routings", default=",".join(ROUTINGS))
    parser.add_argument("--dispatches", default=";".join(DISPATCHES), help="';'-separated, from DISPATCHES")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    rows, lines = (
        [],
        [
            "| case | dispatch | device us / pass | TFLOP/s | wall us / pass | max rel. error |",
            "|---|---|---|---|---|---|",
        ],
    )
    routings, dispatches = args.routings.split(","), args.dispatches.split(";")
    unknown = set(dispatches) - set(DISPATCHES)
    if unknown:
        parser.error(f"unknown dispatches {sorted(unknown)}; choose from {DISPATCHES}")
    for size, routing in [(size, routing) for size in args.sizes.split(",") for routing in routings]:
        case = make_case(size, SHAPES[size], routing)
        want = forward_backward(case, "grouped")
        for dispatch in dispatches:
            if dispatch.startswith("fused"):
                set_tile_shapes(more=dispatch.endswith("more tile shapes"))
            got = forward_backward(case, dispatch)
            errors = [((g.float() - w.float()).norm() / w.float().norm()).item() for g, w in zip(got, want)]
            assert max(errors) < 2e-2, (size, dispatch, errors)
            us, kernels = device_time(lambda c=case, d=dispatch: forward_backward(c, d))
            wall_us = time_cuda(lambda c=case, d=dispatch: forward_backward(c, d), warmup=3, reps=20)["ms_median"] * 1e3
            row = {"size": size, "routing": routing, "tokens": SHAPES[size], "dispatch": dispatch, "device_us": us,
                   "wall_us": wall_us, "tflops": case["flops"] / us / 1e6, "max_rel_err": max(errors),
                   "kernels": kernels}  # fmt: skip
            rows.append(row)
            lines.append(f"| {size}, {SHAPES[size]} tokens, {routing} | {dispatch} | {us:.0f} | {row['tflops']:.0f} | "
                         f"{wall_us:.0f} | {max(errors):.1e} |")  # fmt: skip
            print(lines[-1], "\n   ", kernels, flush=True)
            if dispatch.startswith("fused"):
                row["tile_shapes"] = picked_tile_shapes()
                print("    tile shapes:", row["tile_shapes"], flush=True)
    (args.out / "moe_train_micro.json").write_text(json.dumps(rows, indent=1))
    (args.out / "moe_train_micro.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
