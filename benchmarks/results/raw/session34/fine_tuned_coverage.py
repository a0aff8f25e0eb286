"""Coverage of a fine-tuned TimeMoEForecaster's intervals, calibrated on the fitted model ("fitted") or on a copy
fine-tuned without the calibration targets ("held_out").

REGIME=short (default): one channel (OT) of each of the five benchmark sets, 512 points of history at 3 origins
(60 %, 75 % and 90 % of the series), fine-tuned hard (150 steps of 8 windows of 128 points at lr 1e-3: each point
is seen ~300 times), the 80 % / 95 % intervals at H 24 scored on the next 24 points.
REGIME=panel: the last 7 channels as a panel, 2,048 points at 2 origins, 60 steps (each point seen ~4 times).
MODES=zero_shot,fitted,held_out adds the zero-shot forecaster (slow on a CPU: it reads the whole history).
Usage: OMP_NUM_THREADS=2 REGIME=short python fine_tuned_coverage.py OUT.json [DATA_DIR]"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from timemoe_forecaster import TimeMoEForecaster

H = 24
REGIME = os.environ.get("REGIME", "short")
MODES = os.environ.get("MODES", "fitted,held_out").split(",")
if REGIME == "short":
    HISTORY, ORIGINS, COLUMNS = 512, (0.6, 0.75, 0.9), ["OT"]
    FINE_TUNE = {"steps": 150, "lr": 1e-3, "batch_size": 8, "max_length": 128}
else:
    HISTORY, ORIGINS, COLUMNS = 2048, (0.75, 0.9), None
    FINE_TUNE = {"steps": 60, "lr": 1e-3, "batch_size": 8, "max_length": 128}
FILES = ["ETTh1.csv", "ETTh2.csv", "ETTm1.csv.gz", "ETTm2.csv.gz", "weather.csv.gz"]


def panels(data_dir: Path):
    for name in FILES:
        frame = pd.read_csv(data_dir / name).drop(columns=["date"])
        frame = frame[COLUMNS] if COLUMNS else frame.iloc[:, -7:]
        for share in ORIGINS:
            origin = int(len(frame) * share)
            history = frame.iloc[origin - HISTORY : origin].reset_index(drop=True)
            future = frame.iloc[origin : origin + H].to_numpy()
            yield f"{name.split('.')[0]}@{share}", history, future


def scores(f, history, future):
    fh = np.arange(1, H + 1)
    point = f.predict(fh).to_numpy()
    spread = history.std().to_numpy()
    out = {"mae_std": float(np.mean(np.abs(point - future) / spread))}
    for coverage in (0.8, 0.95):
        bands = f.predict_interval(fh, coverage=coverage).to_numpy().reshape(H, -1, 2)
        lower, upper = bands[..., 0], bands[..., 1]
        out[f"cover_{coverage}"] = float(np.mean((future >= lower) & (future <= upper)))
        out[f"width_std_{coverage}"] = float(np.mean((upper - lower) / spread))
    return out


def main(out_path, data_dir="../shared/data/benchmark"):
    rows = []
    for label, history, future in panels(Path(data_dir)):
        for mode in MODES:
            start = time.perf_counter()
            if mode == "zero_shot":
                f = TimeMoEForecaster()
            else:
                f = TimeMoEForecaster(fine_tune=FINE_TUNE, calibration_model=mode)
            f.fit(history)
            row = {"panel": label, "mode": mode, **scores(f, history, future)}
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        summary[mode] = {k: float(np.mean([r[k] for r in mine])) for k in mine[0] if k not in ("panel", "mode")}
    print(json.dumps(summary, indent=1))
    record = {"regime": REGIME, "fine_tune": FINE_TUNE, "horizon": H, "history": HISTORY, "origins": ORIGINS}
    json.dump({**record, "rows": rows, "mean": summary}, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
