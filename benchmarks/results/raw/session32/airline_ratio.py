"""The model card's airline check: MSE of the embedded default's 12-month forecasts from every monthly origin c (the
first c points as history) against seasonal naive (y[c-12:c]), over origins from 24, 72, 96 and 108 to 132.
From the repository root: OMP_NUM_THREADS=1 python benchmarks/results/raw/session32/airline_ratio.py"""

import logging
import warnings

import numpy as np
from sktime.datasets import load_airline

from timemoe_forecaster import TimeMoEForecaster

logging.disable(logging.WARNING)
warnings.simplefilter("ignore")
y = load_airline()
v = y.to_numpy()
scores = {}
for c in range(24, 133):
    forecast = TimeMoEForecaster().fit(y.iloc[:c]).predict(fh=range(1, 13)).to_numpy().ravel()
    scores[c] = (np.mean((forecast - v[c : c + 12]) ** 2), np.mean((v[c - 12 : c] - v[c : c + 12]) ** 2))
for first in (24, 72, 96, 108):
    ours = np.mean([scores[c][0] for c in scores if c >= first])
    naive = np.mean([scores[c][1] for c in scores if c >= first])
    print(f"origins {first}..132: MSE ours {ours:.1f}, seasonal naive {naive:.1f}, ratio {ours / naive:.2f}")
