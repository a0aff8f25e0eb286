"""scaling="standard" against scaling="robust" for the embedded default: zero-shot MSE on the validation splits of
the five benchmark sets (context 512, horizon 96, 12 cut-offs a channel), and one series with a glitch.
From the repository root: OMP_NUM_THREADS=1 python benchmarks/results/raw/session31/robust_scaling.py"""

import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[3]), str(Path(__file__).resolve().parents[4])]


def main() -> None:
    from protocol import load_dataset, subsample

    from timemoe_forecaster import TimeMoEForPrediction
    from timemoe_forecaster.preprocess import forecast_contexts

    model = TimeMoEForPrediction.from_pretrained(None).eval()
    length, horizon, per_channel = 512, 96, 12
    scores = {"standard": [], "robust": []}
    for name in ["ETTh1", "ETTh2", "ETTm1", "ETTm2", "Weather"]:
        d = load_dataset(name)
        starts = d.train_end + subsample(d.test_start - horizon - d.train_end, per_channel)
        contexts = [d.values[s - length : s, c].astype(np.float64) for c in range(d.num_channels) for s in starts]
        targets = np.stack([d.values[s : s + horizon, c] for c in range(d.num_channels) for s in starts])
        row = []
        for scaling in scores:
            mse = float(((forecast_contexts(model, contexts, horizon, scaling=scaling) - targets) ** 2).mean())
            scores[scaling].append(mse)
            row.append(f"{scaling} {mse:.4f}")
        print(name, ", ".join(row), flush=True)
    print("mean", ", ".join(f"{k} {np.mean(v):.4f}" for k, v in scores.items()))
    x = 10 + np.sin(2 * np.pi * np.arange(1000) / 24)
    x[-100] = 1e8
    for scaling in scores:
        forecast = forecast_contexts(model, [x[-256:]], 24, scaling=scaling)[0]
        print(f"glitch of 1e8 in a series in [9, 11], {scaling}: forecast {forecast.min():.3g} .. {forecast.max():.3g}")


if __name__ == "__main__":
    main()
