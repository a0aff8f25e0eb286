#!/bin/bash
# Session 20, device call 5: the matmul peak's new warm-up checked on a freshly started machine (peak_check.py), then
# ultra's fastest set-up (compiled model + step graph) with the reference, at this tree.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
{ echo "commit $COMMIT"; nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader; } > $OUT/gpu.txt
t0=$(date +%s)
timeout 60 python3 benchmarks/results/raw/session20/call5/peak_check.py 2>&1 | tee $OUT/peak_check.log
left=$(( 420 - ($(date +%s) - t0) ))
echo "ultra budget $left s"
timeout $left python3 benchmarks/speed.py --groups ultra --train-variants compiled-model+step-graph --budget-s $(( left - 5 )) \
  --jsonl $OUT/ultra.jsonl --out /tmp/speed_out > $OUT/speed.log 2>&1
echo "speed rc=$? in $(( $(date +%s) - t0 )) s"
grep -h '"train"' $OUT/ultra.jsonl | python3 -c "
import sys,json
for l in sys.stdin:
    r=json.loads(l); print(r.get('impl'), r.get('variant'), r.get('status'), round(r.get('tokens_per_s') or 0), round(r.get('peak_gib') or 0, 2), r.get('mfu'))"
grep -ho '"bf16_matmul_tflops": [0-9.]*' $OUT/ultra.jsonl
grep -E "took|Error|error|skipped" $OUT/speed.log | tail -5 | cut -c1-260
