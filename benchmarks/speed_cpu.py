"""CPU section of the speed benchmark: one series, context 512, horizon 96, the embedded default checkpoint.

Re-run it whenever the embedded checkpoint changes (``python benchmarks/speed.py --cpu``): it loads
``from_pretrained(None)``, so the numbers always describe the checkpoint that ships.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import time_cpu
from timemoe_forecaster import TimeMoEForPrediction
from timemoe_forecaster.loading import load_model

CONTEXT, HORIZON = 512, 96
TARGET = "≤ 50 ms"


def _series(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 10 + 3 * np.sin(2 * np.pi * t / 24) + 0.1 * t**0.5 + rng.normal(0, 0.5, n)


def _machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return name


def run_cpu(out: Path, threads: int = 2, command: str = "python benchmarks/speed.py --cpu") -> dict:
    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    # As the estimators load it: float32 on the CPU (the checkpoint itself is stored in bfloat16).
    model = load_model(None, device="cpu")
    load_ms = (time.perf_counter() - t0) * 1e3
    dtype = next(model.parameters()).dtype
    model_bf16 = TimeMoEForPrediction.from_pretrained(None, dtype="auto").eval()  # as stored: bf16
    y = _series(CONTEXT)
    rows = [{"what": "load the embedded checkpoint (once)", "ms_median": load_ms, "ms_min": load_ms}]

    forecaster, fh = None, list(range(1, HORIZON + 1))
    try:
        import pandas as pd

        from timemoe_forecaster import TimeMoEForecaster

        series = pd.Series(y, index=pd.RangeIndex(CONTEXT))
        forecaster = TimeMoEForecaster(context_length=CONTEXT, device="cpu").fit(series)
    except Exception as err:  # noqa: BLE001 - the adapter is optional for this section
        rows.append({"what": f"sktime TimeMoEForecaster unavailable: {type(err).__name__}: {str(err)[:120]}"})

    def core(m=model):  # standardise, forecast, unscale: numpy in, numpy out
        mean, std = y.mean(), y.std() + 1e-8
        context = torch.from_numpy((y - mean) / std).float()[None]  # [1, S]
        return m.forecast(context, HORIZON)[0].numpy() * std + mean

    # Two threads as asked, then one: on a shared 2-core machine a busy second core stalls every
    # two-thread kernel at its barrier, which one thread never waits for.
    for n in dict.fromkeys((threads, 1)):
        torch.set_num_threads(n)
        tag = f"{n} thread{'s' if n > 1 else ''}"
        rows.append(
            {"what": f"model.forecast with scaling (ctx {CONTEXT}, h {HORIZON}), {tag}", **time_cpu(core, 3, 30)}
        )
        try:
            from timemoe_forecaster import preprocess

            fn = lambda: preprocess.forecast_series(model, [y], HORIZON, context_length=CONTEXT)  # noqa: E731
            rows.append({"what": f"preprocess.forecast_series (NaN handling, scaling), {tag}", **time_cpu(fn, 3, 30)})
        except (ImportError, AttributeError, TypeError) as err:
            rows.append({"what": f"preprocess.forecast_series unavailable: {err}"})
        if forecaster is not None:
            stats = time_cpu(lambda: forecaster.predict(fh), 3, 30)
            rows.append({"what": f"sktime TimeMoEForecaster.predict (fitted), {tag}", **stats})
            # The one-line usage: a new estimator, zero-shot fit (weights cached by the first load), predict.
            one_line = lambda: TimeMoEForecaster(context_length=CONTEXT, device="cpu").fit(series).predict(fh)  # noqa: E731
            rows.append({"what": f"sktime TimeMoEForecaster().fit(y).predict(fh), {tag}", **time_cpu(one_line, 3, 30)})
        if n == threads:  # for comparison: the checkpoint's own dtype (forecasts move by a few percent)
            stats = time_cpu(lambda: core(model_bf16), 3, 30)
            rows.append({"what": f"model.forecast in bfloat16 (not the default), {tag}", **stats})
    for row in rows[1:]:
        if "ms_median" in row and "not the default" not in row["what"]:
            row["target"] = TARGET
    result = {
        "machine": _machine(),
        "torch": torch.__version__,
        "threads": threads,
        "checkpoint": f"embedded default ({model.num_parameters():,} parameters, {str(dtype).split('.')[-1]}, "
        f"hidden {model.config.hidden_size}, {model.config.num_hidden_layers} layers)",
        "command": command,
        # Other work on the machine inflates CPU timings: the 1-minute load average before and after.
        "load_average": [load_before, os.getloadavg()[0]],
        "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed_cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
