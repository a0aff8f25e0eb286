#!/bin/bash
# Session 20, device call 6: base h 720 again, whole group (call 1 ran out of its time budget before the last four variants)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
{ echo "commit $COMMIT"; nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader; } > $OUT/gpu.txt
t0=$(date +%s)
timeout 340 python3 benchmarks/speed.py --groups base-forecast-h720 --budget-s 330 \
  --jsonl $OUT/forecast.jsonl --out /tmp/speed_out > $OUT/speed.log 2>&1
echo "speed rc=$? in $(( $(date +%s) - t0 )) s"
grep -h '"infer"' $OUT/forecast.jsonl | python3 -c "
import sys,json
for l in sys.stdin:
    r=json.loads(l); print(r.get('size'), r.get('horizon'), r.get('batch'), r.get('impl'), r.get('variant'), r.get('status'), round(r.get('series_per_s') or 0, 1), round(r.get('peak_gib') or 0, 2), r.get('mfu'))"
grep -E "took|Error|error|skipped|rel_err" $OUT/speed.log | tail -12 | cut -c1-260
