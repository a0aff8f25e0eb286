"""The load-balancing loss of a training step on the GPU: the library's formula against a candidate.

Why (session 11): in the kernel profiles of the base training step on an H200
(``benchmarks/results/raw/session11/call2/profile_train_base_*.txt``) two single-launch kernels of this loss
took 0.68 ms of a 32.4 ms step: ``gatherTopK`` (torch.topk over every layer's router probabilities, 0.33 ms) and
``triton_red_fused__to_copy_arange_eq_mean_unsqueeze`` (the one-hot mean over all layers and tokens into 2 x 8
numbers, 0.36 ms), both far slower than the bytes they read. The candidate picks the top k by row-wise maxima
(``moe.route``, as the forward already does) and counts the choices in two reduction stages (chunks of rows,
then the chunks), so that no kernel reduces 200k rows into 16 outputs alone. Same value (checked first, and
on the CPU by ``tests/benchmarks/test_aux_loss_micro.py``).

Measured in session 12 on an H200 (``benchmarks/results/raw/session12/README.md``): 0.96 against 1.12 ms on
base's shapes, 1.27 against 0.95 ms on large's; in the whole training step (speed.py's variant
``compiled-model+step-graph+candidate-aux``) −0.1% on base and +0.7% on large, within the spread between
runs. Not adopted: the library keeps its shorter formula.

Both run compiled (as the training step runs them), forward and backward (the gradient reaches the router
probabilities), on random router logits of a preset's training shapes. Device time per call from CUDA
events, median of repetitions.

    python3 benchmarks/aux_loss_micro.py [--sizes base,large] [--reps 50]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

# The repository root, so that ``from benchmarks...`` works when run as a file too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch.nn.functional as F

from timemoe_forecaster.config import TimeMoEConfig
from timemoe_forecaster.model.moe import load_balancing_loss, route

# Training shapes of speed.py's cases: tokens per step (batch x 4096).
TOKENS = {"base": 4 * 4096, "large": 2 * 4096}
COUNT_CHUNK = 1024  # rows per first-stage partial count


def candidate_load_balancing_loss(
    router_logits: list[torch.Tensor], top_k: int, num_experts: int, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``moe.load_balancing_loss``'s value: top k by row-wise maxima, choices counted in two stages."""
    logits_NE = torch.stack([r.float() for r in router_logits]).view(-1, num_experts)  # N = layers * T
    probs_NE = torch.softmax(logits_NE, dim=-1)
    _, experts_NK = route(logits_NE, top_k)
    chosen_NKE = (experts_NK[..., None] == torch.arange(num_experts, device=logits_NE.device)).float()
    w_N = None
    if token_mask is not None:
        w_N = token_mask.reshape(-1).to(probs_NE.dtype).repeat(len(router_logits))
        chosen_NKE, probs_NE = chosen_NKE * w_N[:, None, None], probs_NE * w_N[:, None]
    pad = (-chosen_NKE.shape[0]) % COUNT_CHUNK  # zero rows count nothing
    counts_KE = F.pad(chosen_NKE, (0, 0, 0, 0, 0, pad)).view(-1, COUNT_CHUNK, top_k, num_experts).sum(1).sum(0)
    prob_sums_E = F.pad(probs_NE, (0, 0, 0, pad)).view(-1, COUNT_CHUNK, num_experts).sum(1).sum(0)
    denom = w_N.sum() if w_N is not None else torch.tensor(float(logits_NE.shape[0]), device=logits_NE.device)
    return num_experts * ((counts_KE / denom) * (prob_sums_E / denom)[None]).sum()


def time_fwd_bwd(fn, logits: list[torch.Tensor], top_k: int, num_experts: int, reps: int) -> float:
    """Median ms of one compiled forward and backward of ``fn`` (CUDA events)."""
    from benchmarks.timing import time_cuda

    compiled = torch.compile(fn)

    def step():
        for x in logits:
            x.grad = None
        compiled(logits, top_k, num_experts).backward()

    return time_cuda(step, warmup=5, reps=reps)["ms_median"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="base,large")
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU")
    for size in args.sizes.split(","):
        config = TimeMoEConfig.from_preset(size)
        layers, k, e = config.num_hidden_layers, config.num_experts_per_tok, config.num_experts
        torch.manual_seed(0)
        logits = [torch.randn(TOKENS[size], e, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                  for _ in range(layers)]  # fmt: skip
        library = load_balancing_loss(logits, k, e)
        candidate = candidate_load_balancing_loss(logits, k, e)
        record = {
            "size": size,
            "rows": layers * TOKENS[size],
            "library": library.item(),
            "candidate": candidate.item(),
            "equal": bool(torch.allclose(library, candidate, rtol=1e-5)),
            "library_ms": time_fwd_bwd(load_balancing_loss, logits, k, e, args.reps),
            "candidate_ms": time_fwd_bwd(candidate_load_balancing_loss, logits, k, e, args.reps),
            "device": torch.cuda.get_device_name(),
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
