"""Where the CPU forecast's time goes: matmul throughput of the machine and the embedded model's parts.

Times (2 threads, fp32, the embedded default as the estimators load it) an fp32 GEMM of the shapes the
model runs, one decoder layer's FFN (whole, shared expert, routed experts through the grouped GEMM) on a
512-point prefill, SDPA at that length with and without the causal mask, and the whole decoder on rows of
512, 64 and 1 points. Medians of perf_counter
loops; writes nothing, prints a table.

    python benchmarks/speed_cpu_breakdown.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import time_cpu  # noqa: E402
from timemoe_forecaster.loading import load_model  # noqa: E402
from timemoe_forecaster.model.modeling import build_attention_mask  # noqa: E402
from timemoe_forecaster.model.moe import route  # noqa: E402


def median_us(fn, reps: int = 200, warmup: int = 10) -> float:
    return time_cpu(fn, warmup=warmup, reps=reps)["ms_median"] * 1e3


def main(argv=None) -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    for m, k, n in [(512, 128, 512), (512, 512, 128), (1024, 128, 256), (128, 128, 256)]:
        a, b = torch.randn(m, k), torch.randn(k, n)
        us = median_us(lambda a=a, b=b: a @ b)
        rows.append((f"fp32 GEMM {m}x{k} @ {k}x{n}", us, 2 * m * k * n / us / 1e3))
    model = load_model(None, device="cpu")
    config = model.config
    ffn = model.model.layers[0].ffn_layer
    x = torch.randn(1, 512, config.hidden_size)
    x_th = x.reshape(-1, config.hidden_size)
    h, f = config.hidden_size, config.expert_size
    with torch.inference_mode():
        weights, experts = route(ffn.gate(x_th), ffn.top_k)
        routed_flops = 2 * 3 * x_th.shape[0] * ffn.top_k * h * f
        shared_flops = 2 * 3 * x_th.shape[0] * h * config.intermediate_size
        us = median_us(lambda: ffn(x))
        rows.append(("FFN layer, 512-point prefill (whole)", us, (routed_flops + shared_flops) / us / 1e3))
        us = median_us(lambda: ffn.shared_expert(x_th))
        rows.append(("  shared expert", us, shared_flops / us / 1e3))
        us = median_us(lambda: ffn._grouped(x_th, weights, experts))
        rows.append(("  routed experts (grouped GEMM path)", us, routed_flops / us / 1e3))
        n, d = config.num_attention_heads, config.head_dim
        q, kk, v = (torch.randn(1, n, 512, d) for _ in range(3))
        attn_flops = 4 * n * 512 * 512 * d  # QK^T and PV over the full square
        us = median_us(lambda: F.scaled_dot_product_attention(q, kk, v, is_causal=True))
        rows.append(("SDPA 512 queries, causal", us, attn_flops / us / 1e3))
        us = median_us(lambda: F.scaled_dot_product_attention(q, kk, v))
        rows.append(("SDPA 512 queries, not causal", us, attn_flops / us / 1e3))
        # The whole decoder (last layer on the last point only, as a forecast runs it) on rows of n points: the
        # 1-point row is almost all fixed cost per pass; a forecast of h 96 runs a 512-point and a 64-point pass.
        for points in (512, 64, 1):
            row = torch.randn(1, points, config.input_size)
            positions = torch.arange(points).expand(1, points)
            mask = build_attention_mask(None, None, points)
            us = median_us(lambda r=row, p=positions, m=mask: model.model(r, p, m, last_only=True), reps=50)
            rows.append((f"decoder pass on a {points}-point row, no cache", us, None))
    print(f"torch {torch.__version__}, 2 threads")
    print("| what | median µs | GFLOP/s |")
    print("|---|---|---|")
    for what, us, gflops in rows:
        print(f"| {what} | {us:,.0f} | {'–' if gflops is None else f'{gflops:.0f}'} |")


if __name__ == "__main__":
    main()
