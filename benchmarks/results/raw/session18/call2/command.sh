#!/bin/bash
# Session 18, device call 2: the rest of the GPU tests, base A/B (grouped), large micro with more tile shapes.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
{ echo "commit $COMMIT"; nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader; } > $OUT/gpu.txt
t0=$(date +%s)
timeout 290 python3 -m pytest -v -m gpu tests/train -p no:cacheprovider -rs \
  -k "not test_graphed_steps_train_like_eager_steps and not test_inputs_of_another_shape" 2>&1 \
  | grep -E "PASS|FAIL|ERROR|passed|failed|Error|assert" > $OUT/gpu_tests.log
echo "pytest rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" | tee -a $OUT/gpu_tests.log
cat $OUT/gpu_tests.log | cut -c1-200
timeout 130 python3 benchmarks/speed.py --groups base-train --budget-s 125 \
  --train-variants compiled-model+step-graph+grouped-moe --jsonl $OUT/train_base.jsonl --out /tmp/speed_out > /tmp/speed.log 2>&1
grep -h tokens_per_s $OUT/train_base.jsonl | python3 -c "
import sys,json
for l in sys.stdin:
    r=json.loads(l); print(r.get('impl'), r.get('variant'), r.get('status'), round(r.get('tokens_per_s') or 0), round(r.get('peak_gib') or 0, 2))"
left=$(( 585 - ($(date +%s) - t0) ))
echo "micro budget $left s"
timeout $left python3 benchmarks/moe_train_micro.py --out $OUT --sizes large 2>&1 | grep -v Warn | cut -c1-1500
