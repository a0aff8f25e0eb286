"""Interval coverage, width and cost of the conformal_cutoffs modes (session 33).

For each of the five benchmark sets, the first 7 channels at 2 origins of the test split (70 series): the
embedded default, context 512, conformal_windows 20, horizon 96, fitted on the HISTORY points before the origin
as one panel; 80 % and 95 % intervals scored on the next 96 points (the sets' own standardised units).

    OMP_NUM_THREADS=2 python benchmarks/results/raw/session33/cutoff_modes.py out.json HISTORY MODE [MODE ...]
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from benchmarks.protocol import DATASETS, load_dataset  # noqa: E402
from timemoe_forecaster import TimeMoEForecaster  # noqa: E402

H, CHANNELS, ORIGINS = 96, 7, 2
HISTORY, MODES = int(sys.argv[2]), sys.argv[3:]
frames, truths = [], []
for name in DATASETS:
    data = load_dataset(name)
    starts = np.linspace(data.test_start, data.test_end - H, ORIGINS).astype(int)
    for c in range(min(CHANNELS, data.values.shape[1])):
        for s in starts:
            key = f"{name}/{data.columns[c]}/{s}"
            frames.append(
                pd.DataFrame(
                    {"y": data.values[s - HISTORY : s, c].astype(float)},
                    index=pd.MultiIndex.from_product([[key], range(HISTORY)]),
                )
            )
            truths.append(data.values[s : s + H, c].astype(float))
panel, truth = pd.concat(frames), np.stack(truths)  # truth [N, H]
fh = list(range(1, H + 1))
rows = []
for mode in MODES:
    f = TimeMoEForecaster(context_length=512, conformal_windows=20, conformal_cutoffs=mode).fit(panel)
    start = time.perf_counter()
    iv = f.predict_interval(fh=fh, coverage=[0.8, 0.95])
    seconds = time.perf_counter() - start
    row = {
        "mode": mode,
        "history": HISTORY,
        "series": len(truth),
        "horizon": H,
        "predict_interval_s": round(seconds, 1),
    }
    for cov in (0.8, 0.95):
        lo = iv[("y", cov, "lower")].to_numpy().reshape(len(truth), H)
        hi = iv[("y", cov, "upper")].to_numpy().reshape(len(truth), H)
        inside = (truth >= lo) & (truth <= hi)
        row[f"coverage_{cov}"] = round(float(inside.mean()), 4)
        row[f"coverage_{cov}_steps1-12"] = round(float(inside[:, :12].mean()), 4)
        row[f"coverage_{cov}_steps85-96"] = round(float(inside[:, -12:].mean()), 4)
        row[f"mean_width_{cov}"] = round(float((hi - lo).mean()), 4)
    rows.append(row)
    print(json.dumps(row), flush=True)
out = Path(sys.argv[1])
out.write_text(json.dumps((json.loads(out.read_text()) if out.exists() else []) + rows, indent=1) + "\n")
