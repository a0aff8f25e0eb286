#!/bin/bash
# Session 35, device call 1 (short form): the GPU-marked estimator tests. Since session 33's last GPU pass
# (b93298a, all 34 GPU tests) only estimator-level code changed (sktime, memo, conformal, CLI, data readers; the model,
# training and forecasting code changed in comments only), so these are the GPU tests the changes can break.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader > $OUT/gpu.txt
t0=$(date +%s)
timeout 400 python3 -m pytest -v -m gpu tests/estimators -p no:cacheprovider -rs 2>&1 \
  | grep -E "PASS|FAIL|ERROR|SKIP|passed|failed|Error|assert" > $OUT/gpu_tests_estimators.log
echo "pytest rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" >> $OUT/gpu_tests_estimators.log
cut -c1-250 $OUT/gpu_tests_estimators.log
