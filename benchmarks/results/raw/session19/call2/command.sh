#!/bin/bash
# Session 19, device call 2: base training A/B, fused (auto) against grouped, eager and compiled with the step graph,
# with kernel profiles of both compiled steps.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
{ echo "commit $COMMIT"; nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader; } > $OUT/gpu.txt
t0=$(date +%s)
mkdir -p $OUT/prof
timeout 560 python3 benchmarks/speed.py --groups base-train --budget-s 550 --profile-dir $OUT/prof --profile-rows 60 \
  --train-variants eager,eager+grouped-moe,compiled-model+step-graph,compiled-model+step-graph+grouped-moe \
  --jsonl $OUT/train_base.jsonl --out /tmp/speed_out > /tmp/speed.log 2>&1
echo "speed rc=$? in $(( $(date +%s) - t0 )) s"
grep -h '"train"' $OUT/train_base.jsonl | python3 -c "
import sys,json
for l in sys.stdin:
    r=json.loads(l); print(r.get('impl'), r.get('variant'), r.get('status'), round(r.get('tokens_per_s') or 0), round(r.get('peak_gib') or 0, 2), r.get('mfu'))"
grep -E "took|Error|error|skipped" /tmp/speed.log | tail -8 | cut -c1-300
