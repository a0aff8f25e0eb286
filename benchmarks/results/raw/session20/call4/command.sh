#!/bin/bash
# Session 20, device call 4: the ultra training row (seq 4096, batch 1, bf16) re-measured at this tree, reference in the same process
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
{ echo "commit $COMMIT"; nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader; } > $OUT/gpu.txt
t0=$(date +%s)
timeout 560 python3 benchmarks/speed.py --groups ultra --budget-s 530 \
  --jsonl $OUT/ultra.jsonl --out /tmp/speed_out > $OUT/speed.log 2>&1
echo "speed rc=$? in $(( $(date +%s) - t0 )) s"
grep -h '"train"' $OUT/ultra.jsonl | python3 -c "
import sys,json
for l in sys.stdin:
    r=json.loads(l); print(r.get('size'), r.get('seq_len'), r.get('batch'), r.get('impl'), r.get('variant'), r.get('status'), round(r.get('tokens_per_s') or 0, 1), round(r.get('peak_gib') or 0, 2), r.get('mfu'))"
grep -E "took|Error|error|skipped|rel_err" $OUT/speed.log | tail -12 | cut -c1-260
