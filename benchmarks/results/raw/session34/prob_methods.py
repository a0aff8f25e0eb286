"""Wall time of each probabilistic method of a fitted TimeMoEForecaster, called one after another, and of an
sktime ``evaluate`` with a point and two interval metrics. Usage: python prob_methods.py OUT.json"""

import json
import sys
import time

import numpy as np
import pandas as pd
from sktime.datasets import load_airline
from sktime.forecasting.model_evaluation import evaluate
from sktime.forecasting.model_selection import ExpandingWindowSplitter
from sktime.performance_metrics.forecasting import MeanAbsoluteError
from sktime.performance_metrics.forecasting.probabilistic import EmpiricalCoverage, PinballLoss

from timemoe_forecaster import TimeMoEForecaster


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def calls(y, fh):
    f = TimeMoEForecaster().fit(y, fh=fh)
    rows = {}
    for name, fn in [
        ("predict", lambda: f.predict()),
        ("predict_interval(0.8)", lambda: f.predict_interval(coverage=0.8)),
        ("predict_interval([0.8, 0.95])", lambda: f.predict_interval(coverage=[0.8, 0.95])),
        ("predict_quantiles([0.1, 0.5, 0.9])", lambda: f.predict_quantiles(alpha=[0.1, 0.5, 0.9])),
        ("predict_var", lambda: f.predict_var()),
        ("predict_proba", lambda: f.predict_proba()),
    ]:
        out, seconds = timed(fn)
        values = out.mean() if name == "predict_proba" else out
        rows[name] = {"seconds": round(seconds, 3), "sum": float(np.nansum(np.asarray(values, dtype=float)))}
    return rows


def panel():
    rng = np.random.default_rng(0)
    t = np.arange(600)
    frames = []
    for i in range(16):
        v = 10 + 3 * np.sin(2 * np.pi * t / 24 + i) + rng.normal(0, 0.5, t.size)
        idx = pd.MultiIndex.from_product([[f"s{i}"], pd.period_range("2020-01-01", periods=t.size, freq="h")])
        frames.append(pd.DataFrame({"y": v}, index=idx))
    return pd.concat(frames)


def main(out):
    y = load_airline()
    result = {"airline h1..24": calls(y, np.arange(1, 25)), "panel 16x600 h1..48": calls(panel(), np.arange(1, 49))}
    metrics = [MeanAbsoluteError(), PinballLoss(alpha=[0.1, 0.9]), EmpiricalCoverage(coverage=0.8)]
    cv = ExpandingWindowSplitter(fh=np.arange(1, 13), initial_window=96, step_length=12)
    scores, seconds = timed(lambda: evaluate(TimeMoEForecaster(), cv, y, scoring=metrics))
    result["evaluate airline 3 metrics"] = {
        "seconds": round(seconds, 3),
        "folds": len(scores),
        "means": {c: float(scores[c].mean()) for c in scores.columns if c.startswith("test_")},
    }
    json.dump(result, open(out, "w"), indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
