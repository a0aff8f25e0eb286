#!/bin/bash
# Session 21, device call 3: the GPU forecast tests after the review mend of prepare_inputs (both mask checks in one transfer).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
{ echo "commit $COMMIT"; nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader; } > $OUT/gpu.txt
t0=$(date +%s)
timeout 560 python3 -m pytest -v -m gpu tests/model/test_cuda_graphs.py tests/estimators/test_preprocess_gpu.py -p no:cacheprovider -rs 2>&1 \
  | grep -E "PASS|FAIL|ERROR|SKIP|passed|failed|Error|assert" > $OUT/gpu_tests.log
echo "pytest rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" | tee -a $OUT/gpu_tests.log
cut -c1-250 $OUT/gpu_tests.log
