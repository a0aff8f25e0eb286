"""What two torch.compile levers cost an eager CPU forecast (embedded default, one series, ctx 512, h 96).

Under compile the rotary angles sit behind an opaque op (``layers.rotary_cos_sin``) for inductor's sake (eager code
calls the function itself since session 33), and on GPUs and under compile the experts' assignments are ordered
by a counting sort (``moe.order_by_expert``). This times a forecast as shipped (plain rotary code, ``torch.sort``
on the CPU), with the rotary angles through the op instead, and with the counting sort forced into eager code, in
interleaved rounds in one process:

    python benchmarks/eager_overheads_cpu.py [--threads 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path
from unittest import mock

import torch

# The repository root, so that ``from benchmarks...`` works when run as a file too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import time_cpu
from timemoe_forecaster.checkpoint import default_checkpoint
from timemoe_forecaster.model import layers, moe
from timemoe_forecaster.model.modeling import TimeMoEForPrediction


def rotary_through_the_op():
    def forward(self, position_ids, dtype):
        return layers.rotary_cos_sin(position_ids, self.head_dim, float(self.theta), dtype)

    return mock.patch.object(layers.RotaryEmbedding, "forward", forward)


def counting_sort_in_eager():
    def sort_by_expert(self, experts_TK):
        return moe.order_by_expert(experts_TK.reshape(-1), self.num_experts)

    return mock.patch.object(moe.SparseExpertsLayer, "_sort_by_expert", sort_by_expert)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = TimeMoEForPrediction.from_pretrained(default_checkpoint(), dtype="auto").eval()  # as stored
    context = torch.randn(1, 512, generator=torch.Generator().manual_seed(0))
    setups = {
        "as shipped": contextlib.nullcontext,
        "rotary angles through the op": rotary_through_the_op,
        "counting sort in eager code": counting_sort_in_eager,
    }
    # Interleaved rounds, so that a noisy neighbour slows every set-up alike.
    medians: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(args.rounds):
        for name, patch in setups.items():
            with patch():
                medians[name].append(time_cpu(lambda: model.forecast(context, 96), warmup=5, reps=30)["ms_median"])
    print(f"| set-up ({args.threads} threads) | forecast ms: median of 30, per round | median over rounds |")
    print("|---|---|---|")
    for name, values in medians.items():
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {rounds} | {statistics.median(values):.1f} |", flush=True)


if __name__ == "__main__":
    main()
