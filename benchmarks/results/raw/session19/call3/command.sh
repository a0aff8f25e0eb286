#!/bin/bash
# Session 19, device call 3: the routed layer alone, both dispatches compiled (new "fused, compiled" row);
# large training repeat with the library's defaults (reference + compiled model with the step graph).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
{ echo "commit $COMMIT"; nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader; } > $OUT/gpu.txt
t0=$(date +%s)
timeout 300 python3 benchmarks/moe_train_micro.py --out $OUT --sizes base,large \
  --dispatches "grouped, compiled;fused, compiled" 2>&1 | grep -E "^\|" | tee $OUT/micro.log
echo "micro rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s"
left=$(( 470 - ($(date +%s) - t0) ))
echo "large-train budget $left s"
timeout $left python3 benchmarks/speed.py --groups large-train --budget-s $(( left - 5 )) \
  --train-variants compiled-model+step-graph --jsonl $OUT/train_large.jsonl --out /tmp/speed_out > /tmp/speed.log 2>&1
grep -h '"train"' $OUT/train_large.jsonl | python3 -c "
import sys,json
for l in sys.stdin:
    r=json.loads(l); print(r.get('impl'), r.get('variant'), r.get('status'), round(r.get('tokens_per_s') or 0), round(r.get('peak_gib') or 0, 2), r.get('mfu'))"
grep -E "took|Error|error|skipped" /tmp/speed.log | tail -5 | cut -c1-300
echo "total $(( $(date +%s) - t0 )) s"
