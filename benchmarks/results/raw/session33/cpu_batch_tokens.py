"""CPU forecast time and peak memory by max_batch_tokens (session 33): the embedded default, 64 series of
context 3,072 (its default) or 512, horizon 96, each setting in a fresh process (peak RSS), two repeats.

    OMP_NUM_THREADS=2 python benchmarks/results/raw/session33/cpu_batch_tokens.py [ragged]
"""

import json
import subprocess
import sys

CHILD = r"""
import sys, time, json, resource, torch
from timemoe_forecaster import TimeMoEForPrediction
tokens, ctx, ragged = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
torch.set_num_threads(2)
model = TimeMoEForPrediction.from_pretrained(None)
g = torch.Generator().manual_seed(0)
x = torch.randn(64, ctx, generator=g)
mask = torch.ones(64, ctx)
if ragged:  # left padding, as panels of unequal length give
    for i in range(64):
        mask[i, : (i * ctx) // 128] = 0
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
model.forecast(x, 96, attention_mask=mask, max_batch_tokens=tokens)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"max_batch_tokens": tokens, "context": ctx, "ragged": ragged, "seconds": round(seconds, 2),
                  "rss_before_mib": base // 1024, "peak_rss_mib": peak // 1024}))
"""

ragged = "1" if "ragged" in sys.argv[1:] else "0"
rows = []
for _repeat in range(2):
    for ctx in (3072, 512):
        for tokens in (2**16, 2**15, 2**14, 2**13, 2**12):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(tokens), str(ctx), ragged], capture_output=True, text=True, check=True
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
print(json.dumps(rows))
