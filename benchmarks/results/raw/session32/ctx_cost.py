"""CPU time of a fitted TimeMoEForecaster's predict (horizon 96, one series, 2 threads) by context length: 512, 1,024
and the embedded default's 3,072. Medians of 7 after a warm-up. From the repository root:
OMP_NUM_THREADS=2 python benchmarks/results/raw/session32/ctx_cost.py"""

import logging
import time

import numpy as np
import pandas as pd
import torch

from timemoe_forecaster import TimeMoEForecaster

logging.disable(logging.WARNING)
torch.set_num_threads(2)
y = pd.Series(np.sin(np.arange(5000) / 9) + np.random.default_rng(0).normal(size=5000) * 0.1)
for length in (512, 1024, None):
    f = TimeMoEForecaster(context_length=length).fit(y)
    f.predict(fh=range(1, 97))
    times = []
    for _ in range(7):
        start = time.perf_counter()
        f.predict(fh=range(1, 97))
        times.append(time.perf_counter() - start)
    print(f"context {length or 'default (3072)'}: {np.median(times) * 1e3:.0f} ms")
