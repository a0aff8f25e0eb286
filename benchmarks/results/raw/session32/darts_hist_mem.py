"""Peak RSS of darts historical_forecasts(retrain=False) over N series of 4,000 points (the last 200 points as cut-offs,
horizon 12, the default context), with the model's forward replaced by zeros so that only the library's own memory
shows. From the repository root: OMP_NUM_THREADS=1 python benchmarks/results/raw/session32/darts_hist_mem.py [N]"""

import logging
import resource
import sys

import numpy as np
import pandas as pd
import torch
from darts import TimeSeries

from timemoe_forecaster.darts import TimeMoEModel

logging.disable(logging.WARNING)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 50
rng = np.random.default_rng(0)
index = pd.date_range("2000-01-01", periods=4000, freq="h")
series = [TimeSeries.from_times_and_values(index, rng.normal(size=4000).cumsum()) for _ in range(N)]
m = TimeMoEModel().fit(series[0])
m._model.forecast = lambda c, h, a=None: torch.zeros(c.shape[0], h)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = m.historical_forecasts(series, start=3800, forecast_horizon=12, retrain=False, last_points_only=True)
rows = sum(len(o) for o in out)
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20
print(f"{N} series, {rows} forecast rows: peak RSS +{grown:.2f} GiB")
