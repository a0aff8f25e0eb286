"""How much the naive models move when scored on the stats models' 30/50-window subsets instead of all windows
(the caveat in docs/benchmarks.md). From the repository root: python benchmarks/results/raw/session31/subsample_shift.py

Session 31 output (CPU, about 20 s):
  per cell: min -19.4% ('ETTh2', 'SeasonalNaive', 192, 30), max +29.2% ('ETTm1', 'Naive', 720, 30)
  per model and set, averaged over horizons: -13.2% .. +25.2%
"""

import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[3])]  # benchmarks/


def pooled_mse(data, model, starts, horizon: int) -> float:
    errors = [
        model.predict(data.contexts(c, starts, 512), horizon) - data.targets(c, starts, horizon)
        for c in range(data.num_channels)
    ]
    return float(np.mean(np.concatenate(errors) ** 2))


def main() -> None:
    from baselines import NaiveLast, SeasonalNaive
    from protocol import load_dataset

    cells, averages = [], []
    for name in ["ETTh1", "ETTh2", "ETTm1", "ETTm2", "Weather"]:
        data = load_dataset(name)
        for model in (NaiveLast(), SeasonalNaive(data.season, max(512, data.season))):
            for k in (30, 50):
                shifts = []
                for h in (96, 192, 336, 720):
                    sampled = pooled_mse(data, model, data.window_starts(h, k, span_horizon=720), h)
                    shifts.append(sampled / pooled_mse(data, model, data.window_starts(h), h) - 1)
                    cells.append((shifts[-1], name, model.name, h, k))
                averages.append(np.mean(shifts))
    low, high = min(cells), max(cells)
    print(f"per cell: min {low[0]:+.1%} {low[1:]}, max {high[0]:+.1%} {high[1:]}")
    print(f"per model and set, averaged over horizons: {min(averages):+.1%} .. {max(averages):+.1%}")


if __name__ == "__main__":
    main()
