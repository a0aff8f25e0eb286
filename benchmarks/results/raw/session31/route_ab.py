"""CPU A/B of MoE routing: k row-wise maxima (before session 31) against torch.topk (now, on CPUs), interleaved,
the embedded default forecasting one series (context 512, horizon 96). Run: OMP_NUM_THREADS=2 python <this file>."""

import statistics
import time

import torch

import timemoe_forecaster.model.moe as moe
from timemoe_forecaster import TimeMoEForPrediction

new_route = moe.route


def old_route(router_logits, top_k):
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    weights, experts, remaining = [], [], probs
    for _ in range(top_k):
        value, index = remaining.max(dim=-1)
        weights.append(value)
        experts.append(index)
        remaining = remaining.scatter(-1, index[:, None], float("-inf"))
    return torch.stack(weights, dim=-1), torch.stack(experts, dim=-1)


model = TimeMoEForPrediction.from_pretrained(None).eval()
x = torch.randn(1, 512)
times = {"maxima": [], "topk": []}
for _ in range(40):
    for name, route in (("maxima", old_route), ("topk", new_route)):
        moe.route = route
        start = time.perf_counter()
        model.forecast(x, 96)
        times[name].append(time.perf_counter() - start)
for name, values in times.items():
    print(name, f"median {statistics.median(values[5:]) * 1e3:.1f} ms")
