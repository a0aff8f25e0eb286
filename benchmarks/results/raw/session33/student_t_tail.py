"""Coverage of 95 % intervals from the borrowed tail (session 33): 5 series of 20 residuals each, Student-t(3)
errors at scales 10^U(-1, 1), 2,000 rounds (10,000 intervals), as tests/estimators/test_conformal.py draws them.

    python benchmarks/results/raw/session33/student_t_tail.py      # 0.9497 at the final code
"""

import logging

import numpy as np

from timemoe_forecaster import conformal

logging.disable(logging.WARNING)
rng = np.random.default_rng(0)
hits = total = 0
for _ in range(2000):
    scales = 10.0 ** rng.uniform(-1, 1, 5)
    offsets = conformal.residual_offsets([s * rng.standard_t(3, size=(20, 1)) for s in scales], [0.025, 0.975], 1)
    new = scales * rng.standard_t(3, size=5)
    hits += int(np.sum((new >= offsets[:, 0, 0]) & (new <= offsets[:, 0, 1])))
    total += 5
print(round(hits / total, 4))
