#!/bin/bash
# Session 20, device call 2: the GPU tests not re-run since session 18 (flex attention, CUDA-graph forecasts and
# training under graphs, the estimators' preprocessing on CUDA), at this tree.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
{ echo "commit $COMMIT"; nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader; } > $OUT/gpu.txt
t0=$(date +%s)
timeout 570 python3 -m pytest -v -m gpu tests/model/test_cuda_graphs.py tests/estimators/test_preprocess_gpu.py \
  tests/model/test_attention_gpu.py -p no:cacheprovider -rs 2>&1 \
  | grep -E "PASS|FAIL|ERROR|passed|failed|Error|assert" > $OUT/gpu_tests.log
echo "pytest rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" | tee -a $OUT/gpu_tests.log
cut -c1-250 $OUT/gpu_tests.log
