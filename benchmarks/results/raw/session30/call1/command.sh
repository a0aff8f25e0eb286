#!/bin/bash
# Session 30, device call 1 (carry .whl and .data; .data/benchmark = a copy of ../shared/data/benchmark): every GPU-marked test on the code of sessions 28-30 (they ran on CPU only), and beside
# them the embedded default's context sweep on the validation splits (ctx_sweep_gpu.py).
# The training tests, the other tests and the sweep run as three processes side by side on the one GPU, to fit one call.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader > $OUT/gpu.txt
git rev-parse HEAD > $OUT/commit.txt 2>/dev/null || true
t0=$(date +%s)
run() {  # $1: log name, rest: pytest selection
  local log=$OUT/$1; shift
  timeout 490 python3 -m pytest -v -m gpu "$@" -p no:cacheprovider -rs 2>&1 \
    | grep -E "PASS|FAIL|ERROR|SKIP|passed|failed|Error|assert" > $log
  echo "pytest rc=${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" >> $log
}
run gpu_tests_train.log tests/train &
run gpu_tests_other.log tests --ignore=tests/train &
timeout 490 python3 benchmarks/results/raw/session30/call1/ctx_sweep_gpu.py 512,1024,1536,2048,3072,4096 100 \
  96,192,336,720 $OUT/ctx_sweep.json > $OUT/ctx_sweep.log 2>&1 &
wait
for f in $OUT/gpu_tests_*.log; do echo "== $f"; cut -c1-250 $f; done
tail -3 $OUT/ctx_sweep.log
