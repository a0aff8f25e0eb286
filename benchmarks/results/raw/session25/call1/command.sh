#!/bin/bash
# Session 25, device call 1: the GPU-marked tests outside tests/train after this session's library changes
# (loss: padded labels as zeros past the row end, 2-D loss mask per channel, packed targets past the row end;
# forecast: dtype-overflow check; conformal calibration and predict_var/proba; checkpoint q/k/v check).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader > $OUT/gpu.txt
t0=$(date +%s)
timeout 560 python3 -m pytest -v -m gpu tests --ignore=tests/train -p no:cacheprovider -rs 2>&1 \
  | grep -E "PASS|FAIL|ERROR|SKIP|passed|failed|Error|assert" > $OUT/gpu_tests.log
echo "pytest rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" | tee -a $OUT/gpu_tests.log
cut -c1-250 $OUT/gpu_tests.log
