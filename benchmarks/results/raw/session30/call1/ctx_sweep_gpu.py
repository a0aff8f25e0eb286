"""Zero-shot MSE of the embedded default by context length on the VALIDATION splits (never test) of the five sets,
on a GPU in fp32, with many more cut-offs than session 29's CPU sweep (6 per channel, horizon 96 only).

Usage: python ctx_sweep_gpu.py LENGTHS CUTOFFS_PER_CHANNEL HORIZONS OUT.json
       (e.g. 512,1024,2048,3072,4096 100 96,192,336,720 $OUT/ctx_sweep.json)
Writes the JSON after every cell, so a cut-short run keeps what it finished.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[5]))  # the repository root

from benchmarks.protocol import load_dataset, subsample  # noqa: E402
from timemoe_forecaster import TimeMoEForPrediction  # noqa: E402
from timemoe_forecaster.preprocess import forecast_contexts  # noqa: E402

lengths = [int(x) for x in sys.argv[1].split(",")]
per_channel = int(sys.argv[2])
horizons = [int(x) for x in sys.argv[3].split(",")]
out = Path(sys.argv[4])
device = "cuda" if torch.cuda.is_available() else "cpu"
model = TimeMoEForPrediction.from_pretrained(None).to(device=device, dtype=torch.float32).eval()
data = {name: load_dataset(name) for name in ["ETTh1", "ETTh2", "ETTm1", "ETTm2", "Weather"]}
res = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "per_channel": per_channel}
for H in horizons:
    for name, d in data.items():
        n = d.test_start - H - d.train_end
        starts = d.train_end + subsample(n, per_channel)  # cut-offs inside the validation split
        tgt = np.concatenate([d.values[starts[:, None] + np.arange(H)[None, :], c] for c in range(d.num_channels)])
        for L in lengths:
            t = time.time()
            ctx = [d.values[s - L : s, c].astype(np.float64) for c in range(d.num_channels) for s in starts]
            pred = forecast_contexts(model, ctx, H, batch_size=256)
            err = pred - tgt
            res[f"{name}/{H}/{L}"] = {"mse": float((err**2).mean()), "mae": float(np.abs(err).mean()), "n": len(ctx)}
            print(name, H, L, res[f"{name}/{H}/{L}"], f"{time.time() - t:.1f}s", flush=True)
            out.write_text(json.dumps(res, indent=1))
