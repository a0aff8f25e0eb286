"""Isolate the illegal memory access seen in ``evaluate()`` under flex in bf16 (session 6, call 11).

Each case runs in its own process (a CUDA fault poisons the context), all at once; prints one line per case.
Since session 7 ``evaluate()`` runs the model's own forward under a whole-model compile, so the trainer's cases
pass; the ``*-compiled-eval`` cases still send evaluation batches through the compiled model's no-grad graph
(what crashed with torch 2.11), to check whether a newer torch has fixed it.
    python3 benchmarks/tools/diag_flex_eval.py [--cases a,b] [--timeout 240]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CASES = {
    # name: (compile, dtype, train steps before evaluating, inductor config overrides, keep sm90 tiles)
    "model-bf16-compiled-eval": ("model", "bf16", 2, {}, True),
    "model-fp32-compiled-eval": ("model", "fp32", 2, {}, True),
    "eager-bf16": (False, "bf16", 2, {}, True),
    "model-bf16": ("model", "bf16", 2, {}, True),
    "model-bf16-eval-first": ("model", "bf16", 0, {}, True),
    "model-bf16-no-prologue-fusion": ("model", "bf16", 2, {"prologue_fusion": False}, True),
    "model-bf16-no-tiles": ("model", "bf16", 2, {}, False),
    "model-fp32": ("model", "fp32", 2, {}, True),
    "blocks-bf16": ("blocks", "bf16", 2, {}, True),
    "step-graph-bf16": ("model-step-graph", "bf16", 2, {}, True),
    "step-graph-bf16-no-prologue-fusion": ("model-step-graph", "bf16", 5, {"prologue_fusion": False}, True),
}


def run_case(name: str) -> dict:
    import torch

    compile_mode, dtype, steps, inductor, tiles = CASES[name]
    for key, value in inductor.items():
        setattr(torch._inductor.config, key, value)
    from timemoe_forecaster.model import attention

    if not tiles:
        attention.FLEX_SM90_KERNEL_OPTIONS.clear()
    from timemoe_forecaster.train.parallel import DistContext
    from timemoe_forecaster.train.trainer import TrainConfig, Trainer, build_model, make_stream, open_data

    cfg = TrainConfig(
        config="small", data=["synthetic#max_length=1024"], output_dir=None, max_steps=8, batch_size=4,
        max_length=256, lr=1e-3, progress=False, device="cuda", attn_backend="flex", compile=compile_mode,
        dtype=dtype, eval_batches=2, data_prefetch="off",
    )  # fmt: skip
    ctx = DistContext(device=torch.device("cuda"))
    stream = make_stream(open_data(cfg.data, cfg.seed), cfg, 0, 1, cfg.seed)
    trainer = Trainer(
        cfg, ctx, build_model(cfg, ctx.device), [stream],
        eval_stream=lambda: make_stream(open_data(cfg.data, 99), cfg, 0, 1, 99),
    )  # fmt: skip
    if name.endswith("-compiled-eval"):  # the compiled graph itself, as evaluate() ran it before session 7
        trainer._eval_forward = lambda batch: trainer.train_model(**batch)
    losses = [trainer.train_step(prefetch=False)["loss"] for _ in range(steps)]
    evals = [trainer.evaluate()]
    losses += [trainer.train_step(prefetch=False)["loss"] for _ in range(2)]
    evals.append(trainer.evaluate())
    torch.cuda.synchronize()
    return {"losses": losses, "evals": evals}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_case(args.one)), flush=True)
        return
    procs = {}
    for name in args.cases.split(","):
        procs[name] = subprocess.Popen(
            [sys.executable, __file__, "--one", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    start = time.time()
    for name, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=max(1, args.timeout - (time.time() - start)))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            print(f"{name}: TIMEOUT")
            continue
        result = [line for line in out.splitlines() if line.startswith("RESULT ")]
        if proc.returncode == 0 and result:
            print(f"{name}: ok {result[-1][7:]}")
        else:
            errors = [line for line in out.splitlines() if "Error" in line or "error" in line]
            print(f"{name}: FAILED rc={proc.returncode} {errors[-1] if errors else out[-300:]}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
