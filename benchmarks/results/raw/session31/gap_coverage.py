"""Coverage of 80 % intervals (1 step ahead) on 60 random walks, with and without every other value missing among
the last 40 points of the history (the held-out target is always observed). Embedded default, CPU."""

import logging
import warnings

import numpy as np
import pandas as pd

from timemoe_forecaster import TimeMoEForecaster

warnings.simplefilter("ignore")
logging.disable(logging.WARNING)
rng = np.random.default_rng(1)
N, T = 60, 200
walks = np.cumsum(rng.normal(size=(N, T + 1)), axis=1)


def panel(arr):
    return pd.concat({i: pd.DataFrame({"y": arr[i]}, index=pd.RangeIndex(T)) for i in range(N)}, names=["k", "t"])


for label, gaps in [("no gaps", False), ("every other of last 40 missing", True)]:
    train = walks[:, :T].copy()
    if gaps:
        train[:, -40:-1:2] = np.nan  # the last point stays observed
    f = TimeMoEForecaster(context_length=64, conformal_windows=20, batch_size=256).fit(panel(train))
    iv = f.predict_interval(fh=[1], coverage=0.8).to_numpy()
    truth = walks[:, T]
    cov = np.mean((truth >= iv[:, 0]) & (truth <= iv[:, 1]))
    print(f"{label}: coverage {cov:.2f}, mean width {np.mean(iv[:, 1] - iv[:, 0]):.2f}")
