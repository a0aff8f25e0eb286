#!/bin/bash
# Session 23, device call 2: the GPU-marked tests that call 1's 570 s limit cut off (the rest of the step graph,
# the GPU trainer, the fused stochastic-rounding AdamW), at the same library code.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader > $OUT/gpu.txt
t0=$(date +%s)
timeout 570 python3 -m pytest -v -m gpu tests/train/test_train_gpu.py tests/train/test_train_optim.py \
  "tests/train/test_step_graph.py::test_the_step_graph_accumulates_micro_batches_like_the_compiled_model" \
  "tests/train/test_step_graph.py::test_launching_the_next_step_ahead_trains_the_same" \
  "tests/train/test_step_graph.py::test_the_training_loop_launches_ahead_between_evaluations_and_checkpoints" \
  -p no:cacheprovider -rs 2>&1 | grep -E "PASS|FAIL|ERROR|SKIP|passed|failed|Error|assert" > $OUT/gpu_tests.log
echo "pytest rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" | tee -a $OUT/gpu_tests.log
cut -c1-250 $OUT/gpu_tests.log
