"""Time and peak RSS of residual_offsets + residual_moments for N series at horizon H (W = 20): the aligned layout (a
row per cut-off, as before session 32) against the compact one (W rows). From the repository root:
OMP_NUM_THREADS=1 python benchmarks/results/raw/session32/resid_mem.py N H aligned|compact"""

import resource
import sys
import time

import numpy as np

from timemoe_forecaster.conformal import _most_recent, _present_first, residual_moments, residual_offsets


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


N, H, layout = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
W, rng = 20, np.random.default_rng(0)
res = [_most_recent(rng.normal(size=(W + H - 1, H)), W) for _ in range(N)]
if layout == "compact":
    res = [_present_first(r, W) for r in res]
base, t = peak_gib(), time.perf_counter()
residual_offsets(res, [0.05, 0.1, 0.9, 0.95], H)
residual_moments(res, H)
print(f"N={N} H={H} {layout}: {time.perf_counter() - t:.2f} s, peak RSS +{peak_gib() - base:.2f} GiB")
