"""Fine-tunes run by an sktime evaluate(strategy="update") with an interval metric, per calibration_model: the
held-out copy is reused while the folds only append points (tiny test checkpoint, 30-step fine-tunes).
Usage: OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/results/raw/session34/held_out_evaluate_cost.py"""

import tempfile
import time

from sktime.datasets import load_airline
from sktime.forecasting.model_evaluation import evaluate
from sktime.performance_metrics.forecasting.probabilistic import PinballLoss
from sktime.split import ExpandingWindowSplitter

from tests.helpers import make_model
from timemoe_forecaster import TimeMoEForecaster, loading, memo

count = {"fine-tunes": 0}
original = loading.train_private_copy


def counting(*args, **kwargs):
    count["fine-tunes"] += 1
    return original(*args, **kwargs)


loading.train_private_copy = counting
checkpoint = tempfile.mkdtemp()
make_model(seed=5).save_pretrained(checkpoint)
settings = {"steps": 30, "batch_size": 4, "max_length": 32, "lr": 1e-3}
cv = ExpandingWindowSplitter(initial_window=100, step_length=4, fh=[1, 2, 3])
for mode in ("fitted", "held_out"):
    count["fine-tunes"] = 0
    memo.clear()
    start = time.perf_counter()
    f = TimeMoEForecaster(
        model_path=checkpoint, context_length=48, device="cpu", fine_tune=settings, calibration_model=mode
    )
    scores = evaluate(f, cv, load_airline(), strategy="update", scoring=PinballLoss())
    print(f"{mode:9s} folds={len(scores)} fine-tunes={count['fine-tunes']} wall={time.perf_counter() - start:.1f}s")
