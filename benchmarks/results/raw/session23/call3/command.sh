#!/bin/bash
# Session 23, device call 3: base training against the reference in one process (this session changed the loss:
# padded positions weighted out, a NaN-safe masked sum), with the fastest variant, as in session 20's table.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader > $OUT/gpu.txt
t0=$(date +%s)
timeout 560 python3 benchmarks/speed.py --groups base-train --budget-s 540 \
  --train-variants compiled-model+step-graph \
  --jsonl $OUT/train_base.jsonl --out /tmp/speed_out 2>&1 | grep -v Warning | tail -20
echo "speed.py done in $(( $(date +%s) - t0 )) s"
python3 -c "
import json
for l in open('$OUT/train_base.jsonl'):
    r = json.loads(l)
    if r.get('impl'):
        print(r.get('impl'), r.get('variant'), r.get('status'), round(r.get('tokens_per_s') or 0), r.get('peak_gib'), r.get('mfu'))
"
