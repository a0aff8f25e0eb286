#!/bin/bash
# Session 23, device call 4: the GPU-marked training tests at the final library code (the loss now zeroes targets
# under weight 0 instead of masking the losses; bf16 AdamW seeds its noise by rank only for sharded parameters;
# one checkpoint writer for models and training checkpoints).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader > $OUT/gpu.txt
t0=$(date +%s)
timeout 520 python3 -m pytest -v -m gpu tests/train -p no:cacheprovider -rs 2>&1 \
  | grep -E "PASS|FAIL|ERROR|SKIP|passed|failed|Error|assert" > $OUT/gpu_tests.log
echo "pytest rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" | tee -a $OUT/gpu_tests.log
cut -c1-250 $OUT/gpu_tests.log
