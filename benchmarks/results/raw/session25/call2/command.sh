#!/bin/bash
# Session 25, device call 2: the GPU-marked training tests after this session's library changes
# (the trainer refuses to save NaN/inf weights, locks its output dir, resumes past damaged checkpoints;
# the window sampler redraws a rejected window from the same source; the loss changes of call 1).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader > $OUT/gpu.txt
t0=$(date +%s)
timeout 560 python3 -m pytest -v -m gpu tests/train -p no:cacheprovider -rs 2>&1 \
  | grep -E "PASS|FAIL|ERROR|SKIP|passed|failed|Error|assert" > $OUT/gpu_tests.log
echo "pytest rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" | tee -a $OUT/gpu_tests.log
cut -c1-250 $OUT/gpu_tests.log
