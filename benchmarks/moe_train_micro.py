"""Microbenchmark of the routed experts' training pass, forward and backward (GPU only).

In the H200 training profiles (sessions 12-13) the routed experts of the base model took about 7 ms of
a 32 ms step in their grouped GEMMs (``torch._grouped_mm``, about 300 TFLOP/s at base's narrow widths)
plus about 1.7 ms of SwiGLU passes and the gathers around them. This times one layer's routed experts
(the router's choices given) forward and backward at the training shapes of base (batch 4 x 4096) and
large (batch 2 x 4096), for each dispatch:

* ``grouped``: gather, grouped GEMMs, SwiGLU, grouped GEMM, permutation back, autograd's backward;
* ``fused``: ``fused_moe.routed_experts``, two Triton kernels forward and four backward.

Every dispatch is first checked against ``grouped`` (output and all gradients, bf16 tolerance). Device
time per pass comes from the profiler (the sum of the kernels, so host gaps do not count) with the
heaviest kernels listed; wall time between CUDA events is reported next to it.

    python benchmarks/moe_train_micro.py --out results_dir
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks.timing import time_cuda
from timemoe_forecaster import TimeMoEConfig
from timemoe_forecaster.model import fused_moe
from timemoe_forecaster.model.moe import SparseExpertsLayer, route

SHAPES = {"base": 4 * 4096, "large": 2 * 4096}  # tokens per training step (speed.py's train cases)
# "balanced": a random router on random inputs (near-even groups); "two experts": every token to the same two,
# which is how the randomly initialised base model routes in every layer (pointwise inputs look alike).
ROUTINGS = ("balanced", "two experts")
# "fused, prefetch": swiglu_grad_kernel loads gate and up ahead of its product (fused_moe.SWIGLU_GRAD_PREFETCH).
DISPATCHES = ("grouped", "fused", "fused, prefetch")


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
        "flops": 3 * 2.0 * tokens * config.num_experts_per_tok * config.hidden_size * 3 * config.expert_size,
    }


def forward_backward(case: dict, dispatch: str):
    """One training pass of the routed experts; returns the output and the gradients it made."""
    layer = case["layer"]
    layer.dispatch = dispatch.split(",")[0]
    fused_moe.SWIGLU_GRAD_PREFETCH = dispatch.endswith("prefetch")
    layer.zero_grad(set_to_none=True)
    x = case["x_TH"].detach().requires_grad_()
    weights = case["weights_TK"].detach().requires_grad_()
    path = layer._fused if layer.dispatch == "fused" else layer._grouped
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
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, lines = (
        [],
        [
            "| case | dispatch | device us / pass | TFLOP/s | wall us / pass | max rel. error |",
            "|---|---|---|---|---|---|",
        ],
    )
    for size, routing in [(size, routing) for size in args.sizes.split(",") for routing in ROUTINGS]:
        case = make_case(size, SHAPES[size], routing)
        want = forward_backward(case, "grouped")
        for dispatch in DISPATCHES:
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
    (args.out / "moe_train_micro.json").write_text(json.dumps(rows, indent=1))
    (args.out / "moe_train_micro.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
