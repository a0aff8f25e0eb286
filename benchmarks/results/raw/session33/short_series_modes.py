"""Interval coverage of the conformal_cutoffs modes on shorter series (session 33).

M4 Weekly (the first 60 series of its training set, the last 13 points of each held out: one origin) and
the airline data at 13 origins (96..132, H 12). Both were in the embedded default's pretraining corpus, so errors
are smaller than on unseen data; the comparison between the modes is the point. conformal_windows 20, context 512.

    OMP_NUM_THREADS=2 python benchmarks/results/raw/session33/short_series_modes.py [out.json]
"""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sktime.datasets import load_airline

from timemoe_forecaster import TimeMoEForecaster

DATA = Path(__file__).resolve().parents[5] / "shared" / "data" / "pretrain" / "m4-weekly-train.csv.gz"
rows = []


def coverage(intervals: pd.DataFrame, truth: np.ndarray, column) -> dict:
    out = {}
    for cov in (0.8, 0.95):
        lo = intervals[(column, cov, "lower")].to_numpy()
        hi = intervals[(column, cov, "upper")].to_numpy()
        out[f"coverage_{cov}"] = round(float(((truth >= lo) & (truth <= hi)).mean()), 4)
        out[f"mean_width_{cov}"] = round(float((hi - lo).mean()), 4)
    return out


wide = pd.read_csv(DATA).iloc[:60, 1:].to_numpy(dtype=float)
series = [w[~np.isnan(w)] for w in wide]
H = 13
# Every series ends at time 0 (its own last training point), so that fh 1..13 are each one's next 13 points.
panel = pd.concat(
    pd.DataFrame({"y": s[:-H]}, index=pd.MultiIndex.from_product([[i], range(H - len(s) + 1, 1)]))
    for i, s in enumerate(series)
)
truth = np.concatenate([s[-H:] for s in series])
lengths = [len(s) - H for s in series]
for mode in ("per_step", "spread"):
    f = TimeMoEForecaster(context_length=512, conformal_cutoffs=mode).fit(panel)
    iv = f.predict_interval(fh=range(1, H + 1), coverage=[0.8, 0.95])
    rows.append(
        {
            "data": "m4-weekly[:60]",
            "mode": mode,
            "horizon": H,
            "series": len(series),
            "history_min": min(lengths),
            "history_median": int(np.median(lengths)),
            **coverage(iv, truth, "y"),
        }
    )
    print(rows[-1], flush=True)

y = load_airline()
for mode in ("per_step", "spread"):
    hits = []
    for origin in range(96, 133, 3):
        f = TimeMoEForecaster(context_length=512, conformal_cutoffs=mode).fit(y.iloc[:origin])
        iv = f.predict_interval(fh=range(1, 13), coverage=[0.8, 0.95])
        hits.append(coverage(iv, y.iloc[origin : origin + 12].to_numpy(), iv.columns[0][0]))
    rows.append(
        {
            "data": "airline, 13 origins 96..132",
            "mode": mode,
            "horizon": 12,
            **{k: round(float(np.mean([h[k] for h in hits])), 4) for k in hits[0]},
        }
    )
    print(rows[-1], flush=True)
if len(sys.argv) > 1:
    Path(sys.argv[1]).write_text(json.dumps(rows, indent=1) + "\n")
