#!/bin/bash
# Session 32, second device call: the GPU-marked training tests again, after this session's later trainer changes
# (the metrics window saved with checkpoints). Carry .whl.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader > $OUT/gpu.txt
t0=$(date +%s)
timeout 400 python3 -m pytest -v -m gpu tests/train -p no:cacheprovider -rs 2>&1 \
  | grep -E "PASS|FAIL|ERROR|SKIP|passed|failed|Error|assert" > $OUT/gpu_tests_train.log
echo "pytest rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" >> $OUT/gpu_tests_train.log
cat $OUT/gpu_tests_train.log | cut -c1-200
