"""Time of preprocess.prepare (validate, fill, cut the context) for one 1e7-point series with every 7th point missing,
context 3072. From the repository root: OMP_NUM_THREADS=1 python benchmarks/results/raw/session32/prepare_cost.py"""

import time

import numpy as np

from timemoe_forecaster import preprocess

x = np.random.default_rng(0).normal(size=10_000_000)
x[::7] = np.nan
start = time.perf_counter()
for _ in range(10):
    preprocess.prepare([x], 3072)
print(f"prepare of a 1e7-point series with gaps, context 3072: {(time.perf_counter() - start) / 10 * 1e3:.2f} ms")
