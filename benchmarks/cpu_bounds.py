"""What bounds the CPU forecast (embedded default, one series, ctx 512, h 96): session 13's checks in one script.

1. fp32 GEMM rate on 1 and 2 threads (is MKL at the cores' peak?);
2. where one forecast's time goes, by op (torch.profiler over 20 forecasts, 2 threads);
3. interleaved A/B rounds in one process, medians of 30 forecasts per round: ``model.forecast`` under its own
   ``no_grad`` against the same under ``torch.inference_mode`` (how ``preprocess`` runs CPU forecasts since
   session 14), then, under inference mode, the grouped MoE dispatch against the loop and eager against compiled
   blocks (``compile_blocks``; its compile time is printed).

    python benchmarks/cpu_bounds.py [--rounds 5] [--skip-compile]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch

# The repository root, so that ``from benchmarks...`` works when run as a file too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import time_cpu
from timemoe_forecaster.compile import compile_blocks
from timemoe_forecaster.loading import load_model

CONTEXT, HORIZON = 512, 96


def gemm_rates() -> None:
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rates = []
        for m, k, n in [(512, 128, 512), (512, 512, 128), (1024, 1024, 1024)]:
            a, w = torch.randn(m, k), torch.randn(n, k)
            ms = time_cpu(lambda a=a, w=w: a @ w.T, warmup=20, reps=300)["ms_median"]
            rates.append(f"{m}x{k}x{n}: {2 * m * k * n / ms / 1e6:.0f} GFLOP/s")
        print(f"fp32 GEMM, {threads} thread(s): " + ", ".join(rates))
    torch.set_num_threads(2)


def profile_by_op(model, context) -> None:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        for _ in range(10):
            model.forecast(context, HORIZON)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(20):
                model.forecast(context, HORIZON)
    ms = collections.Counter()
    for event in prof.key_averages():
        kind = "matrix products" if event.key in ("aten::mm", "aten::addmm", "aten::bmm") else event.key
        kind = "attention" if "attention" in event.key else kind
        ms[kind] += event.self_cpu_time_total / 20 / 1e3
    print(f"per forecast under the profiler: {sum(ms.values()):.1f} ms; " + ", ".join(
        f"{kind} {t:.1f}" for kind, t in ms.most_common(6)))  # fmt: skip


def ab_rounds(setups: dict, context, rounds: int) -> None:
    medians = {name: [] for name in setups}
    for r in range(rounds):
        for name in setups if r % 2 == 0 else reversed(list(setups)):
            run = setups[name]
            medians[name].append(time_cpu(run, warmup=3, reps=30)["ms_median"])
    for name, values in medians.items():
        ordered = sorted(values)
        print(f"{name}: round medians {', '.join(f'{v:.1f}' for v in values)} ms; "
              f"median of rounds {ordered[len(ordered) // 2]:.1f}")  # fmt: skip


def in_inference_mode(forecast):
    def run():
        with torch.inference_mode():
            return forecast()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args()
    gemm_rates()
    model = load_model(None, device="cpu")
    context = torch.randn(1, CONTEXT, generator=torch.Generator().manual_seed(0)).cumsum(-1)
    profile_by_op(model, context)

    forecast = lambda: model.forecast(context, HORIZON)  # noqa: E731
    setups = {"no_grad (the model's own)": forecast,
              "inference_mode (preprocess on the CPU)": in_inference_mode(forecast)}  # fmt: skip
    ab_rounds(setups, context, args.rounds)

    looped = load_model(None, device="cpu")
    looped.set_moe_dispatch("loop")
    setups = {"grouped dispatch": in_inference_mode(forecast),
              "loop dispatch": in_inference_mode(lambda: looped.forecast(context, HORIZON))}  # fmt: skip
    ab_rounds(setups, context, args.rounds)
    if args.skip_compile:
        return
    compiled = compile_blocks(load_model(None, device="cpu"))
    start = time.perf_counter()
    with torch.inference_mode():
        compiled.forecast(context, HORIZON)
    print(f"compile_blocks: first forecast (compilation) {time.perf_counter() - start:.0f} s")
    setups = {"eager": in_inference_mode(forecast),
              "compiled blocks": in_inference_mode(lambda: compiled.forecast(context, HORIZON))}  # fmt: skip
    ab_rounds(setups, context, args.rounds)


if __name__ == "__main__":
    main()
