"""Session 20, call 5: the matmul peak as speed.py measured it until session 20 (five warm-up products, one
median of 30) against the new measurement (1 s of warm-up products, best of three medians), on a machine that
has just started: new, old, new, old, new."""

import json
import statistics
import sys
import time

import torch

sys.path.insert(0, ".")
from benchmarks.timing import matmul_peak_tflops, time_cuda  # noqa: E402


def old_peak(n=8192, reps=30):
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    stats = time_cuda(lambda: torch.mm(a, b), warmup=5, reps=reps)
    return 2 * n**3 / (stats["ms_median"] * 1e-3) / 1e12


rows = []
for i, (name, fn) in enumerate([("new", matmul_peak_tflops), ("old", old_peak)] * 2 + [("new", matmul_peak_tflops)]):
    t0 = time.perf_counter()
    tflops = fn()
    rows.append({"order": i, "method": name, "tflops": round(tflops, 1), "seconds": round(time.perf_counter() - t0, 2)})
    print(json.dumps(rows[-1]), flush=True)
for name in ("old", "new"):
    vals = [r["tflops"] for r in rows if r["method"] == name]
    print(name, "median", statistics.median(vals), "spread", round(max(vals) - min(vals), 1))
