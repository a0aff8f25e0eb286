"""Time of one sktime update of a fitted TimeMoEForecaster with a history of T points: one new point, or all of y so
far plus one point (what update_predict and evaluate send), for integer, period and datetime indexes.
From the repository root: OMP_NUM_THREADS=1 python benchmarks/results/raw/session32/update_cost.py [T]"""

import logging
import sys
import time

import numpy as np
import pandas as pd

from timemoe_forecaster import TimeMoEForecaster

logging.disable(logging.WARNING)
T = int(float(sys.argv[1])) if len(sys.argv) > 1 else 1_000_000
values = np.sin(np.arange(T + 1) / 7)
for kind, index in [
    ("integer", pd.RangeIndex(T + 1)),
    ("period", pd.period_range("1900-01-01", periods=T + 1, freq="h")),
    ("datetime", pd.date_range("1900-01-01", periods=T + 1, freq="h")),
]:
    y = pd.Series(values, index=index)
    for what, update in [("1 new point", y.iloc[-1:]), ("all of y + 1 point", y)]:
        f = TimeMoEForecaster(context_length=64).fit(y.iloc[:-1])
        start = time.perf_counter()
        f.update(update, update_params=False)
        took = time.perf_counter() - start
        assert len(f._context) == T + 1
        print(f"T={T:.0e} {kind:8s} update with {what:18s}: {took * 1e3:7.1f} ms")
