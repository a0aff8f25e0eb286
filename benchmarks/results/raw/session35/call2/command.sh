#!/bin/bash
# Session 35, device call 2: issue 6's two missed rows re-measured at this tree (the model code changed in small ways
# since session 20's 27af2b0: rotary angles eager outside torch.compile, route() on CUDA, varlen import deferred).
# Reference and ours in one process each group: large training (the fastest set-up), then large forecasting (all
# variants), then base training and base h 96 forecasting if the budget allows. Carry .whl (the reference's wheels).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader > $OUT/gpu.txt
t0=$(date +%s)
budget=${BUDGET:-540}
timeout $budget python3 benchmarks/speed.py --groups ${GROUPS_:-large-train,large-forecast,base-train,base-forecast-h96} \
  --budget-s $(( budget - 10 )) --train-variants compiled-model+step-graph \
  --jsonl $OUT/speed.jsonl --out $OUT > $OUT/speed.log 2>&1
echo "speed rc=$? in $(( $(date +%s) - t0 )) s" | tee -a $OUT/speed.log
python3 - <<'PY'
import json, os
for line in open(os.path.join(os.environ["OUT"], "speed.jsonl")):
    r = json.loads(line)
    if "impl" in r:
        rate = r.get("tokens_per_s") or r.get("series_per_s") or 0
        print(r.get("kind"), r.get("size"), r.get("dtype"), r.get("seq_len") or r.get("ctx"), r.get("horizon"),
              r.get("impl"), r.get("variant"), r.get("status"), round(rate, 1), round(r.get("peak_gib") or 0, 2), r.get("mfu"))
PY
grep -E "Error|error|skipped|mismatch" $OUT/speed.log | tail -8 | cut -c1-300
