"""The sktime estimator on a GPU, eager against its model compiled in place after ``fit``.

A panel of ``--series`` random-walk series of ``--length`` points, the embedded default model in
bf16, ``predict`` of horizons 1..``--horizon``; timed with CUDA synchronisation, medians after
warm-up (the compiled run's warm-up includes compilation, timed separately). Checks that both give
the same forecasts. Writes ``estimator_gpu.json`` to ``--out``.

    python benchmarks/estimator_gpu.py --out benchmarks/results/raw
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timemoe_forecaster import TimeMoEForecaster  # noqa: E402
from timemoe_forecaster.compile import compile_blocks  # noqa: E402


def panel(series: int, length: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(series, length)).cumsum(axis=1)
    index = pd.MultiIndex.from_product([range(series), range(length)], names=["series", "time"])
    return pd.DataFrame({"y": values.reshape(-1)}, index=index)


def timed(fn, reps: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return times, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=512)
    parser.add_argument("--length", type=int, default=600)
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/raw"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU")
    warnings.filterwarnings("ignore", category=FutureWarning)
    y = panel(args.series, args.length)
    fh = list(range(1, args.horizon + 1))
    forecaster = TimeMoEForecaster(device="cuda", dtype="bfloat16", context_length=512, batch_size=args.batch_size)
    forecaster.fit(y)
    timed(lambda: forecaster.predict(fh), 2)  # warm-up
    eager_ms, eager = timed(lambda: forecaster.predict(fh), args.reps)
    compile_blocks(forecaster.model_)
    first_ms, _ = timed(lambda: forecaster.predict(fh), 1)  # compiles
    timed(lambda: forecaster.predict(fh), 2)
    compiled_ms, compiled = timed(lambda: forecaster.predict(fh), args.reps)
    a, b = eager.to_numpy(), compiled.to_numpy()
    result = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "series": args.series,
        "context": 512,
        "horizon": args.horizon,
        "batch_size": args.batch_size,
        "dtype": "bfloat16",
        "eager_ms_median": statistics.median(eager_ms),
        "compiled_ms_median": statistics.median(compiled_ms),
        "first_compiled_predict_ms": first_ms[0],
        "speed_up": statistics.median(eager_ms) / statistics.median(compiled_ms),
        "max_rel_diff": float(np.abs(a - b).max() / np.abs(a).max()),
        "command": "python benchmarks/estimator_gpu.py " + " ".join(sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "estimator_gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
