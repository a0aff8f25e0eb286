#!/bin/bash
# Session 35, device call 1: every GPU-marked test at session 34-35 code (memo, held-out calibration on CUDA) (carry .whl: the reference's wheels).
# The training tests and the others run as two processes side by side on the one GPU, to fit one call.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader > $OUT/gpu.txt
t0=$(date +%s)
run() {  # $1: log name, rest: pytest selection
  local log=$OUT/$1; shift
  timeout 520 python3 -m pytest -v -m gpu "$@" -p no:cacheprovider -rs 2>&1 \
    | grep -E "PASS|FAIL|ERROR|SKIP|passed|failed|Error|assert" > $log
  echo "pytest rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" >> $log
}
run gpu_tests_train.log tests/train &
run gpu_tests_other.log tests --ignore=tests/train &
wait
for f in $OUT/gpu_tests_*.log; do echo "== $f"; cut -c1-250 $f; done
