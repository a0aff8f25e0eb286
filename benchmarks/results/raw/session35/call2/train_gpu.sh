#!/bin/bash
# Session 35, device call 2 (on the warm machine of call 1, with the budget left): the GPU-marked training tests,
# which train in bf16 on CUDA through the loss whose targets now stay float32.
export PYTHONPATH=/tmp/site:$PWD
t0=$(date +%s)
timeout ${T:-400} python3 -m pytest -v -m gpu tests/train -p no:cacheprovider -rs 2>&1 \
  | grep --line-buffered -E "PASS|FAIL|ERROR|SKIP|passed|failed|Error|assert" > $OUT/gpu_tests_train.log
echo "pytest rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" >> $OUT/gpu_tests_train.log
cut -c1-250 $OUT/gpu_tests_train.log
