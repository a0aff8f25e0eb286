#!/bin/bash
# Session 19, device call 4: the training GPU tests (step graph, trainer, resume, optimisers), which train the tiny
# preset in bf16 on CUDA through the fused kernels, with session 18's backward that skips unneeded gradients.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
{ echo "commit $COMMIT"; nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader; } > $OUT/gpu.txt
t0=$(date +%s)
timeout 270 python3 -m pytest -v -m gpu tests/train -p no:cacheprovider -rs 2>&1 \
  | grep -E "PASS|FAIL|ERROR|passed|failed|Error|assert" > $OUT/gpu_tests.log
echo "pytest rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" | tee -a $OUT/gpu_tests.log
cut -c1-250 $OUT/gpu_tests.log
