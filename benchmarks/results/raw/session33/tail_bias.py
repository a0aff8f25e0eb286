"""95 % intervals on airline before/after the location-scale tail (session 33): sktime evaluate with an expanding
window (initial 96, step 6, fh 1..12), context 64, the embedded default, by conformal_windows; and the quantiles at
step 24 of a forecaster fitted on all of airline.

    OMP_NUM_THREADS=2 python benchmarks/results/raw/session33/tail_bias.py
"""

import json
import logging
import warnings

logging.disable(logging.WARNING)
warnings.simplefilter("ignore")

from sktime.datasets import load_airline  # noqa: E402
from sktime.forecasting.model_evaluation import evaluate  # noqa: E402
from sktime.performance_metrics.forecasting.probabilistic import EmpiricalCoverage, IntervalWidth  # noqa: E402
from sktime.split import ExpandingWindowSplitter  # noqa: E402

from timemoe_forecaster import TimeMoEForecaster  # noqa: E402

y = load_airline()
f = TimeMoEForecaster(context_length=64).fit(y)
out = {
    "point_step24": round(float(f.predict(fh=[24]).iloc[0]), 1),
    "quantiles_step24": [
        round(float(v), 1) for v in f.predict_quantiles(fh=[24], alpha=[0.025, 0.1, 0.9, 0.975]).iloc[0]
    ],
}
cv = ExpandingWindowSplitter(initial_window=96, step_length=6, fh=list(range(1, 13)))
for w in (10, 20, 39):
    for cov in (0.8, 0.95):
        r = evaluate(
            TimeMoEForecaster(context_length=64, conformal_windows=w),
            cv,
            y,
            scoring=[EmpiricalCoverage(coverage=cov), IntervalWidth(coverage=cov)],
        )
        means = r.filter(like="test_").mean()
        out[f"windows_{w}_coverage_{cov}"] = [round(float(v), 3) for v in means]
print(json.dumps(out))
