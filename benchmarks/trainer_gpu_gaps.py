"""Where the trainer's GPU idles: profile a few steps with Python stacks, find the GPU gaps, name the host code.

Base, seq 4096, batch 4, packed synthetic data, ``--attn-backend flex --compile model-cudagraphs``; prints the
step times, the GPU's busy time over three profiled steps, and the host frames that ran during its idle gaps
(nested frames each count the full overlap).

    python benchmarks/trainer_gpu_gaps.py
"""

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.trainer_gpu import build_trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU")
    tr = build_trainer("base", "flex", "model-cudagraphs", length=4096, batch=4)
    for _ in range(5):
        tr.train_step()
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        tr.train_step()
        ts.append(time.perf_counter() - t)
    print("steps ms", [round(x * 1e3, 1) for x in ts], flush=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as prof:
        for _ in range(3):
            tr.train_step()
    prof.export_chrome_trace("/tmp/trace.json")
    ev = json.load(open("/tmp/trace.json"))["traceEvents"]
    gpu = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in ev
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e
    )
    start, end = gpu[0][0], gpu[-1][1]
    busy, gaps, cur_s, cur_e = 0.0, [], gpu[0][0], gpu[0][1]
    for s, e in gpu[1:]:
        if s > cur_e:
            busy += cur_e - cur_s
            if s - cur_e > 200:
                gaps.append((cur_e, s))
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    idle_ms = sum(b - a for a, b in gaps) / 1e3
    print(
        f"window {(end - start) / 1e3:.1f} ms, GPU busy {busy / 1e3:.1f} ms, gaps>0.2ms {idle_ms:.1f} ms in {len(gaps)}"
    )
    cpu = [
        e
        for e in ev
        if e.get("cat") in ("python_function", "cpu_op", "user_annotation") and "dur" in e and e.get("ph") == "X"
    ]
    by_name = collections.Counter()
    for a, b in gaps:
        # Host frames running during the gap: our package's and torch's entry points, and operators.
        inside = [e for e in cpu if e["ts"] < b and e["ts"] + e["dur"] > a]
        for e in inside:
            overlap = min(b, e["ts"] + e["dur"]) - max(a, e["ts"])
            name = e["name"]
            if e.get("cat") == "python_function" and (
                "timemoe_forecaster" in name
                or "torch/optim" in name
                or "torch/_inductor" in name
                or "torch/nn/utils" in name
                or "cudagraph" in name
            ):
                by_name[name[:140]] += overlap
            elif e.get("cat") == "cpu_op":
                by_name["op " + name[:60]] += overlap
    for name, t in by_name.most_common(45):
        print(f"{t / 1e3:8.2f} ms  {name}")
    print(
        "largest gaps (ms, start offset ms):",
        [
            (round((b - a) / 1e3, 2), round((a - start) / 1e3, 1))
            for a, b in sorted(gaps, key=lambda g: g[0] - g[1])[:12]
        ],
    )


if __name__ == "__main__":
    main()
