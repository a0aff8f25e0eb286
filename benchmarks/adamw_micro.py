"""AdamW update of a whole model on the GPU: torch's fused kernel against one Triton launch per tensor.

An experiment (session 7): the Triton kernel below saved 0.19 ms of 2.77 (bf16 weights) and 0.09 ms of 4.82
(fp32) on the large preset's 453M parameters (benchmarks/results/raw/session7/call4_adamw_micro.log), since
torch's fused kernel already moves 2.3-2.6 TB/s; so the trainer keeps torch's.

Both run replayed from a CUDA graph (how ``--compile model-step-graph`` runs them), on the parameters of a
preset, bf16 weights (``speed.py``'s training step) and fp32 weights (the trainer's master weights). Device
time per update from CUDA events, median of replays; "TB/s" counts each tensor read and written once.

    python3 benchmarks/adamw_micro.py [--size large] [--reps 30]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

# The repository root, so that ``from benchmarks...`` works when run as ``python benchmarks/adamw_micro.py`` too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import time_cuda  # noqa: E402
from timemoe_forecaster.config import TimeMoEConfig  # noqa: E402
from timemoe_forecaster.model.modeling import TimeMoEForPrediction  # noqa: E402
from timemoe_forecaster.train.optim import param_groups  # noqa: E402

LR, BETAS, EPS, WD = 1e-3, (0.9, 0.95), 1e-8, 0.1


# One launch per tensor: weight decay, both moments and the bias-corrected step in fp32; lr and step are read
# from device memory so that graph replays see current values.
@triton.jit
def adamw_update(
    param_ptr,
    grad_ptr,
    exp_avg_ptr,
    exp_avg_sq_ptr,
    lr_ptr,
    step_ptr,
    found_inf_ptr,
    n_elements,
    beta1,
    beta2,
    eps,
    weight_decay,
    HAS_FOUND_INF: tl.constexpr,
    BLOCK: tl.constexpr,
):
    if HAS_FOUND_INF:
        if tl.load(found_inf_ptr) != 0:  # a non-finite gradient: leave everything as it is
            return
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < n_elements
    lr = tl.load(lr_ptr).to(tl.float32)
    step = tl.load(step_ptr).to(tl.float32)  # already counts this update
    p = tl.load(param_ptr + offsets, mask=inside).to(tl.float32)
    g = tl.load(grad_ptr + offsets, mask=inside).to(tl.float32)
    m = tl.load(exp_avg_ptr + offsets, mask=inside).to(tl.float32)
    v = tl.load(exp_avg_sq_ptr + offsets, mask=inside).to(tl.float32)
    p = p * (1.0 - lr * weight_decay)
    m = m + (1.0 - beta1) * (g - m)
    v = beta2 * v + (1.0 - beta2) * g * g
    bias_correction1 = 1.0 - tl.exp2(step * tl.log2(beta1))
    bias_correction2_sqrt = tl.sqrt(1.0 - tl.exp2(step * tl.log2(beta2)))
    denom = tl.sqrt(v) / bias_correction2_sqrt + eps
    p = p - (lr / bias_correction1) * (m / denom)
    tl.store(param_ptr + offsets, p.to(param_ptr.dtype.element_ty), mask=inside)
    tl.store(exp_avg_ptr + offsets, m.to(exp_avg_ptr.dtype.element_ty), mask=inside)
    tl.store(exp_avg_sq_ptr + offsets, v.to(exp_avg_sq_ptr.dtype.element_ty), mask=inside)


def graph_time(fn, reps: int) -> float:
    """Median ms of ``fn`` replayed from a CUDA graph (after eager warm-up on a side stream)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_cuda(graph.replay, warmup=0, reps=reps)["ms_median"]


def triton_update(params, grads, states, lr, step, block: int, warps: int):
    def run():
        step.add_(1)
        for p, g, (m, v, wd) in zip(params, grads, states):
            n = p.numel()
            adamw_update[(triton.cdiv(n, block),)](
                p, g, m, v, lr, step, step, n, BETAS[0], BETAS[1], EPS, wd, HAS_FOUND_INF=False, BLOCK=block,
                num_warps=warps,
            )  # fmt: skip

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="large")
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU")
    config = TimeMoEConfig.from_preset(args.size)
    records = []
    for dtype in (torch.bfloat16, torch.float32):
        torch.manual_seed(0)
        model = TimeMoEForPrediction(config).to("cuda", dtype)
        groups = param_groups(model, WD)
        params = [p for g in groups for p in g["params"]]
        decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        numel = sum(p.numel() for p in params)
        moved = numel * dtype.itemsize * 7  # read p, g, m, v; write p, m, v
        start = [p.detach().clone() for p in params]

        torch_opt = torch.optim.AdamW(groups, lr=torch.tensor(LR, device="cuda"), betas=BETAS, eps=EPS, fused=True,
                                      capturable=True)  # fmt: skip
        ms = graph_time(torch_opt.step, args.reps)
        records.append({"dtype": str(dtype), "impl": "torch-fused", "ms": ms, "tb_s": moved / ms / 1e9,
                        "tensors": len(params), "numel": numel})  # fmt: skip
        print(json.dumps(records[-1]), flush=True)
        for block, warps in ((1024, 4), (2048, 8), (4096, 8), (8192, 16)):
            with torch.no_grad():
                for p, s in zip(params, start):
                    p.copy_(s)
            states = [(torch.zeros_like(p), torch.zeros_like(p), decay[id(p)]) for p in params]
            step, lr = torch.zeros((), device="cuda"), torch.tensor(LR, device="cuda")
            fn = triton_update(params, [p.grad for p in params], states, lr, step, block, warps)
            ms = graph_time(fn, args.reps)
            rec = {"dtype": str(dtype), "impl": f"triton-per-tensor block={block} warps={warps}", "ms": ms,
                   "tb_s": moved / ms / 1e9, "tensors": len(params), "numel": numel}  # fmt: skip
            records.append(rec)
            print(json.dumps(rec), flush=True)
        # Agreement: 5 updates from the same start with torch (fresh state) and with triton.
        results = []
        for impl in ("torch", "triton"):
            with torch.no_grad():
                for p, s in zip(params, start):
                    p.copy_(s)
            if impl == "torch":
                opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, fused=True)
                for _ in range(5):
                    opt.step()
            else:
                states = [(torch.zeros_like(p), torch.zeros_like(p), decay[id(p)]) for p in params]
                step, lr = torch.zeros((), device="cuda"), torch.tensor(LR, device="cuda")
                fn = triton_update(params, [p.grad for p in params], states, lr, step, 4096, 8)
                for _ in range(5):
                    fn()
            results.append([p.detach().float().clone() for p in params])
        worst = max(((a - b).abs().max() / (a - s.float()).abs().max().clamp_min(1e-12)).item()
                    for a, b, s in zip(results[0], results[1], start))  # fmt: skip
        print(json.dumps({"dtype": str(dtype), "max_diff_over_update": worst}), flush=True)
        del model, groups, params, torch_opt, start, results
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
