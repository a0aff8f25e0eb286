#!/bin/bash
# Session 22, device call 2: the same GPU-marked tests after the review mends (fine-tuning device checks and
# min_length, scaling limits, the final-model skip by checkpoint age, shard-name checks), at the final library code.
# Plus the CUDA-graph forecaster.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
{ echo "commit $(git rev-parse --short HEAD 2>/dev/null)"; nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader; } > $OUT/gpu.txt
t0=$(date +%s)
timeout 560 python3 -m pytest -v -m gpu tests/train tests/estimators tests/test_checkpoint.py tests/model/test_cuda_graphs.py \
  -p no:cacheprovider -rs 2>&1 | grep -E "PASS|FAIL|ERROR|SKIP|passed|failed|Error|assert" > $OUT/gpu_tests.log
echo "pytest rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" | tee -a $OUT/gpu_tests.log
cut -c1-250 $OUT/gpu_tests.log
