#!/bin/bash
# Session 18, device call 3: base training A/B (auto = fused by the width rule, grouped), large training, base micro.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
{ echo "commit $COMMIT"; nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader; } > $OUT/gpu.txt
t0=$(date +%s)
timeout 230 python3 benchmarks/speed.py --groups base-train --budget-s 225 \
  --train-variants compiled-model+step-graph+grouped-moe,compiled-model+step-graph --jsonl $OUT/train.jsonl --out /tmp/speed_out > /tmp/speed.log 2>&1
timeout 140 python3 benchmarks/speed.py --groups large-train --budget-s 135 \
  --train-variants compiled-model+step-graph --jsonl $OUT/train.jsonl --out /tmp/speed_out >> /tmp/speed.log 2>&1
grep -h '"train"' $OUT/train.jsonl | python3 -c "
import sys,json
for l in sys.stdin:
    r=json.loads(l); print(r.get('size'), r.get('impl'), r.get('variant'), r.get('status'), round(r.get('tokens_per_s') or 0), round(r.get('peak_gib') or 0, 2), r.get('mfu'))"
grep -E "took|Error|error" /tmp/speed.log | tail -5
left=$(( 520 - ($(date +%s) - t0) ))
echo "micro budget $left s"
timeout $left python3 benchmarks/moe_train_micro.py --out $OUT --sizes base 2>&1 | grep -E "^\|" 
