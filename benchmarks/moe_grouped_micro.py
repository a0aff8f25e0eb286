"""Microbenchmark of the routed experts' GEMMs at the large model's training shapes (GPU only).

The large model's training profile (session 3) put the grouped expert GEMMs at 9.2 ms of a 37 ms step,
and one of their three kernels per layer at about half the rate of the other two. This times the pieces
one by one, so a change to the expert path is chosen by measurement:

* forward: gate and up as two grouped GEMMs of width F, or one of width 2F (weights concatenated);
* weight gradient (the sum over each expert's tokens): ``torch._grouped_mm`` in both orientations, a
  ``bmm`` over equal groups and one dense ``mm`` of the same FLOPs (what the shape could reach);
* the sort of assignments by expert: ``torch.sort`` against ``moe.order_by_expert``'s counting sort
  (both compiled; device time from CUDA graph replays).

    python benchmarks/moe_grouped_micro.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

# The repository root, so that ``from benchmarks...`` works when run as ``python benchmarks/moe_grouped_micro.py`` too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import time_cuda  # noqa: E402
from timemoe_forecaster.model.moe import order_by_expert  # noqa: E402


def routed_offsets(assignments: int, experts: int, device) -> torch.Tensor:
    """Group ends of a routing as uneven as a trained router's (±30% around the mean), multiples of 16."""
    g = torch.Generator().manual_seed(0)
    share = 1.0 + 0.6 * (torch.rand(experts, generator=g) - 0.5)
    sizes = (share / share.sum() * assignments / 16).floor().to(torch.int64) * 16
    sizes[-1] += assignments - sizes.sum()
    return sizes.cumsum(0).to(device=device, dtype=torch.int32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--assignments", type=int, default=16384)  # large: batch 2 x 4096 tokens x top-2
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--width", type=int, default=1536)
    parser.add_argument("--experts", type=int, default=8)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU")
    dev, bf16 = torch.device("cuda"), torch.bfloat16
    a, h, f, e = args.assignments, args.hidden, args.width, args.experts
    offs = routed_offsets(a, e, dev)
    x_AH = torch.randn(a, h, device=dev, dtype=bf16)
    w_EFH = torch.randn(e, f, h, device=dev, dtype=bf16) * 0.02
    w2_EFH = torch.randn(e, 2 * f, h, device=dev, dtype=bf16) * 0.02
    dy_AF = torch.randn(a, f, device=dev, dtype=bf16)
    x_HA = x_AH.t().contiguous()
    dy_FA = dy_AF.t().contiguous()
    per = a // e
    xb, dyb = x_AH[: per * e].view(e, per, h), dy_AF[: per * e].view(e, per, f)
    gm = torch._grouped_mm
    gemm_flops = 2 * a * h * f
    cases = {
        "fwd gate (grouped, width F)": (lambda: gm(x_AH, w_EFH.transpose(1, 2), offs=offs), gemm_flops),
        "fwd gate+up (grouped, width 2F)": (lambda: gm(x_AH, w2_EFH.transpose(1, 2), offs=offs), 2 * gemm_flops),
        "dX from dGate (grouped)": (lambda: gm(dy_AF, w_EFH, offs=offs), gemm_flops),
        "dW [E,H,F] = grouped(x^T, dy) (as autograd)": (lambda: gm(x_AH.t(), dy_AF, offs=offs), gemm_flops),
        "dW [E,F,H] = grouped(dy^T, x)": (lambda: gm(dy_AF.t(), x_AH, offs=offs), gemm_flops),
        "dW [E,H,F] from K-major copies": (lambda: gm(x_HA, dy_FA.t(), offs=offs), gemm_flops),
        "dW bmm over equal groups": (lambda: torch.bmm(xb.transpose(1, 2), dyb), gemm_flops),
        "dW dense mm, same FLOPs": (lambda: x_AH.t() @ dy_AF, gemm_flops),
    }
    results = []
    for name, (fn, flops) in cases.items():
        try:
            stats = time_cuda(fn, 5, 50)
        except Exception as err:  # noqa: BLE001 - a layout the kernel refuses is a result too
            results.append({"case": name, "error": f"{type(err).__name__}: {str(err)[:200]}"})
            print(f"{name:48s} error {type(err).__name__}: {str(err)[:200]}", flush=True)
            continue
        tflops = flops / (stats["ms_median"] * 1e-3) / 1e12
        results.append({"case": name, "ms": stats["ms_median"], "tflops": tflops})
        print(f"{name:48s} {stats['ms_median'] * 1e3:8.1f} us {tflops:6.0f} TFLOP/s", flush=True)
    for assignments in (a, 2 * a, 1 << 20):
        experts_A = torch.randint(0, e, (assignments,), device=dev)
        by_sort = torch.compile(lambda t: torch.sort(t, stable=True)[1], dynamic=False)
        by_count = torch.compile(lambda t: order_by_expert(t, e)[0], dynamic=False)
        assert torch.equal(by_sort(experts_A), by_count(experts_A)), "counting sort differs from the stable sort"
        for name, fn in (("sort", by_sort), ("counting", by_count)):
            # Device time alone: 20 calls recorded in a CUDA graph (a lone compiled call is host-bound).
            for _ in range(3):
                fn(experts_A)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(20):
                    fn(experts_A)
            stats = time_cuda(graph.replay, 3, 20)
            us = stats["ms_median"] * 1e3 / 20
            results.append({"case": f"order {name} A={assignments}", "us_per_call": us})
            print(f"order {name:10s} A={assignments:8d} {us:8.1f} us", flush=True)
    args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
