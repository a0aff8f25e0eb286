#!/bin/bash
# Session 35, device call 1 (short form): the GPU-marked estimator tests and the CUDA-graph forecasts. Since session
# 33's last GPU pass (b93298a, all 34 GPU tests) the estimator-level code changed (sktime, memo, conformal, CLI, data
# readers), and of the model code only forecast.eval_mode (a per-model count of forecasts in progress, which the CUDA
# graph path enters too) and load_state_dict/reset_parameters (own weights first): these are the GPU tests they touch.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader > $OUT/gpu.txt
t0=$(date +%s)
timeout ${T:-420} python3 -m pytest -v -m gpu tests/estimators tests/model/test_cuda_graphs.py -p no:cacheprovider -rs 2>&1 \
  | grep --line-buffered -E "PASS|FAIL|ERROR|SKIP|passed|failed|Error|assert" > $OUT/gpu_tests_estimators.log
echo "pytest rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" >> $OUT/gpu_tests_estimators.log
cut -c1-250 $OUT/gpu_tests_estimators.log
