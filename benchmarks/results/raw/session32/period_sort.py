"""Time of sorting a shuffled 1000 x 1000 PeriodIndex panel by time within instances (what every sktime update of a
panel does). From the repository root: OMP_NUM_THREADS=1 python benchmarks/results/raw/session32/period_sort.py"""

import time

import numpy as np
import pandas as pd

from timemoe_forecaster.sktime import _in_time_order

idx = pd.MultiIndex.from_product([range(1000), pd.period_range("2000-01", periods=1000, freq="M")])
frame = pd.DataFrame({"y": np.random.default_rng(0).normal(size=len(idx))}, index=idx).sample(frac=1, random_state=0)
start = time.perf_counter()
out = _in_time_order(frame)
print(f"_in_time_order of 1M shuffled rows: {time.perf_counter() - start:.3f} s")
assert all(g.index.get_level_values(-1).is_monotonic_increasing for _, g in out.groupby(level=0))
