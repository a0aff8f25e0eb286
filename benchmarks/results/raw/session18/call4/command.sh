#!/bin/bash
# Session 18, device call 4: base training A/B with balanced routing (auto = fused, grouped).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
{ echo "commit $COMMIT"; nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader; } > $OUT/gpu.txt
timeout 215 python3 benchmarks/speed.py --groups base-train --budget-s 210 \
  --train-variants compiled-model+step-graph+balanced-routing,compiled-model+step-graph+grouped-moe+balanced-routing \
  --jsonl $OUT/train.jsonl --out /tmp/speed_out > /tmp/speed.log 2>&1
grep -h '"train"' $OUT/train.jsonl | python3 -c "
import sys,json
for l in sys.stdin:
    r=json.loads(l); print(r.get('size'), r.get('impl'), r.get('variant'), r.get('status'), round(r.get('tokens_per_s') or 0), round(r.get('peak_gib') or 0, 2), r.get('mfu'))"
grep -E "took|Error|error" /tmp/speed.log | tail -5
