"""Zero-shot MSE of the embedded default by context length, on the VALIDATION splits (not test) of the five sets.

Usage: python ctx_sweep.py LENGTHS CUTOFFS_PER_CHANNEL [HORIZON]   (e.g. 512,1024,2048,3072,4000 6 96)
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[5]))  # the repository root

from benchmarks.protocol import load_dataset, subsample  # noqa: E402
from timemoe_forecaster import TimeMoEForPrediction  # noqa: E402
from timemoe_forecaster.preprocess import forecast_contexts  # noqa: E402

model = TimeMoEForPrediction.from_pretrained(None)
lengths = [int(x) for x in sys.argv[1].split(",")]
per_channel = int(sys.argv[2])
H = int(sys.argv[3]) if len(sys.argv) > 3 else 336
res = {}
for name in ["ETTh1", "ETTh2", "ETTm1", "ETTm2", "Weather"]:
    d = load_dataset(name)
    n = d.test_start - H - d.train_end
    starts = d.train_end + subsample(n, per_channel)  # cut-offs inside the validation split
    for L in lengths:
        t = time.time()
        ctx, tgt = [], []
        for c in range(d.num_channels):
            idx = starts[:, None] + np.arange(-L, 0)[None, :]
            ctx += list(d.values[idx, c].astype(np.float64))
            tgt.append(d.values[starts[:, None] + np.arange(H)[None, :], c])
        tgt = np.concatenate(tgt)
        pred = forecast_contexts(model, ctx, H, batch_size=16)
        err = (pred - tgt) ** 2
        res[f"{name}/{L}"] = {"mse96": float(err[:, :96].mean()), "mse_all": float(err.mean()), "n": len(ctx)}
        print(name, L, res[f"{name}/{L}"], f"{time.time() - t:.0f}s", flush=True)
json.dump(res, open(f"ctx_sweep_{per_channel}_{H}.json", "w"), indent=1)
