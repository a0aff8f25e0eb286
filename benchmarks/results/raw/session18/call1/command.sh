#!/bin/bash
# Session 18, device call 1: the GPU test suite with auto's width rule, then the base training A/B.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
{ echo "commit $COMMIT"; nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader; } > $OUT/gpu.txt
t0=$(date +%s)
timeout 400 python3 -m pytest -q -m gpu tests -p no:cacheprovider -rs > $OUT/gpu_tests.log 2>&1
echo "pytest rc=$? in $(( $(date +%s) - t0 )) s" | tee -a $OUT/gpu_tests.log
tail -25 $OUT/gpu_tests.log
left=$(( 575 - ($(date +%s) - t0) ))
echo "speed budget $left s"
timeout $left python3 benchmarks/speed.py --groups base-train --budget-s $((left - 10)) \
  --train-variants compiled-model+step-graph,compiled-model+step-graph+grouped-moe \
  --jsonl $OUT/train_base.jsonl --out /tmp/speed_out 2>&1 | grep -v Warning | tail -15
grep -h tokens_per_s $OUT/train_base.jsonl | python3 -c "
import sys,json
for l in sys.stdin:
    r=json.loads(l); print(r.get('impl'), r.get('variant'), r.get('status'), round(r.get('tokens_per_s') or 0))"
