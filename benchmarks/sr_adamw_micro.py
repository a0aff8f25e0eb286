"""The lean bf16 AdamW's update on a GPU: the fused Triton kernel against the chunked PyTorch path.

``StochasticRoundingAdamW`` (``--optim-dtype bf16``) updates bf16 weights and moments with stochastic rounding.
Its chunked path concatenates the tensors into flat fp32 copies and makes a dozen passes over them; the fused
path (``train/sr_adamw_kernels.py``, the default on a GPU since session 14) reads and writes each tensor once.
Both update the parameters of one preset (bf16 weights, bf16 gradients, two AdamW states) in the same process;
device time per ``step()`` from CUDA events, median of the repetitions after warm-up, and the peak memory
allocated above the parameters, gradients and states.

    python3 benchmarks/sr_adamw_micro.py [--size ultra] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import GIB, time_cuda  # noqa: E402
from timemoe_forecaster.config import TimeMoEConfig  # noqa: E402
from timemoe_forecaster.model.modeling import TimeMoEForPrediction  # noqa: E402
from timemoe_forecaster.train.optim import StochasticRoundingAdamW, param_groups  # noqa: E402


def preset_parameters(size: str) -> list[dict]:
    """The preset's parameter groups as bf16 CUDA tensors with random weights and small random gradients."""
    with torch.device("meta"):
        model = TimeMoEForPrediction(TimeMoEConfig.from_preset(size))
    groups = []
    for group in param_groups(model, 0.1):
        params = []
        for meta in group["params"]:
            p = torch.nn.Parameter(torch.randn(meta.shape, device="cuda", dtype=torch.bfloat16) * 0.02)
            p.grad = torch.randn_like(p) * 1e-3
            params.append(p)
        groups.append({"params": params, "weight_decay": group["weight_decay"]})
    return groups


def time_update(groups: list[dict], fused: bool, warmup: int, reps: int) -> dict:
    opt = StochasticRoundingAdamW(groups, lr=1e-4, fused=fused)
    opt.step()  # creates the moments, so the peak below is the update's own working memory
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    timing = time_cuda(opt.step, warmup=warmup, reps=reps)
    numel = sum(p.numel() for g in groups for p in g["params"])
    return {
        "path": "fused Triton kernel" if fused else "chunked PyTorch",
        "parameters": numel,
        "ms_median": timing["ms_median"],
        "ms_min": timing["ms_min"],
        "extra_gib": timing["peak_gib"] - held / GIB,
        # 7 bf16 transfers per parameter: weight, gradient and two moments read; weight and moments written
        "tb_per_s": 14 * numel / (timing["ms_median"] * 1e-3) / 1e12,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="ultra")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU")
    groups = preset_parameters(args.size)
    rows = []
    for fused in (False, True):
        for g in groups:  # both paths start from fresh moments on the same weights' shapes
            for p in g["params"]:
                p.grad = torch.randn_like(p) * 1e-3
        rows.append({"size": args.size, **time_update(groups, fused, args.warmup, args.reps)})
        print(json.dumps(rows[-1]), flush=True)
        torch.cuda.empty_cache()
    print(f"fused / chunked speed-up: {rows[0]['ms_median'] / rows[1]['ms_median']:.1f}x")
    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
