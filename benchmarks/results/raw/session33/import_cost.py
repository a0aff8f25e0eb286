"""Fresh-process cost of importing the package and of a first forecast (session 33), for a source tree.

    OMP_NUM_THREADS=2 python benchmarks/results/raw/session33/import_cost.py TREE [repeats]

Each repeat is a new interpreter: ``import timemoe_forecaster`` (after torch, timed apart), then the sktime
forecaster's first fit + predict of a 100-point series (context 64) with the embedded default, and whether
torch._dynamo was imported along the way.
"""

import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
t0 = time.perf_counter(); import torch; t1 = time.perf_counter()
import timemoe_forecaster; t2 = time.perf_counter()
dynamo_at_import = "torch._dynamo" in sys.modules
import numpy as np, pandas as pd
from timemoe_forecaster import TimeMoEForecaster
t3 = time.perf_counter()
TimeMoEForecaster(context_length=64).fit(pd.Series(np.sin(np.arange(100.0)))).predict([1, 2])
t4 = time.perf_counter()
print(json.dumps({"torch_s": t1 - t0, "package_s": t2 - t1, "first_fit_predict_s": t4 - t3,
                  "dynamo_at_import": dynamo_at_import, "dynamo_after_forecast": "torch._dynamo" in sys.modules}))
"""

tree, repeats = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3
env = {**os.environ, "PYTHONPATH": tree}
runs = [
    json.loads(
        subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True, cwd="/tmp")
        .stdout.strip()
        .splitlines()[-1]
    )
    for _ in range(repeats)
]
summary = {k: round(statistics.median(r[k] for r in runs), 3) for k in ("torch_s", "package_s", "first_fit_predict_s")}
summary.update(dynamo_at_import=runs[0]["dynamo_at_import"], dynamo_after_forecast=runs[0]["dynamo_after_forecast"])
print(json.dumps({"tree": tree, "repeats": repeats, "median": summary, "runs": runs}))
