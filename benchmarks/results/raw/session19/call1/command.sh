#!/bin/bash
# Session 19, device call 1: the MoE GPU tests (frozen experts / frozen input new), the routed-layer micro
# (compile-once form), AdamW micro on large's parameters.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
{ echo "commit $COMMIT"; nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader; } > $OUT/gpu.txt
t0=$(date +%s)
timeout 200 python3 -m pytest -v -m gpu tests/model/test_moe.py -p no:cacheprovider -rs 2>&1 \
  | grep -E "PASS|FAIL|ERROR|passed|failed|Error|assert" > $OUT/gpu_tests.log
echo "pytest rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" | tee -a $OUT/gpu_tests.log
cat $OUT/gpu_tests.log | cut -c1-300
t1=$(date +%s)
timeout 60 python3 benchmarks/adamw_micro.py --size large > $OUT/adamw_micro.log 2>&1
echo "adamw rc=$? in $(( $(date +%s) - t1 )) s"; tail -8 $OUT/adamw_micro.log | cut -c1-400
left=$(( 560 - ($(date +%s) - t0) ))
echo "micro budget $left s"
timeout $left python3 benchmarks/moe_train_micro.py --out $OUT --sizes base,large 2>&1 | grep -v Warn | cut -c1-1500
echo "total $(( $(date +%s) - t0 )) s"
