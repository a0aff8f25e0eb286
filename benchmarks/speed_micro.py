"""Micro-benchmarks behind the model-core choices (docs/performance.md): each lever timed alone.

- routing: ``torch.topk`` against k row-wise maxima over [T, E] router probabilities;
- MoE combine: ``index_add_`` (atomics) against a permutation + sum over the k slots;
- attention at head dim 32 (base): SDPA's cuDNN, flash and memory-efficient kernels, and the same
  with heads zero-padded to 64 (the scale kept at 1/sqrt(32)), forward + backward and forward only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.timing import time_cuda

BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def _ms(fn, warmup: int = 3, reps: int = 10) -> float:
    return time_cuda(fn, warmup, reps)["ms_median"]


def routing(emit, tokens: int, experts: int = 8, k: int = 2) -> None:
    from timemoe_forecaster.model.moe import route

    logits = torch.randn(tokens, experts, device="cuda", dtype=torch.bfloat16)

    def topk():
        torch.topk(torch.softmax(logits, dim=-1, dtype=torch.float32), k, dim=-1)

    emit(
        {
            "kind": "micro",
            "what": f"route top-{k} of {experts}, {tokens} tokens",
            "variant": "torch.topk",
            "ms": _ms(topk),
        }
    )
    emit(
        {"kind": "micro", "what": f"route top-{k} of {experts}, {tokens} tokens", "variant": "k maxima (ours)",
         "ms": _ms(lambda: route(logits, k))}
    )  # fmt: skip


def combine(emit, tokens: int, hidden: int, k: int = 2) -> None:
    y_AH = torch.randn(tokens * k, hidden, device="cuda", dtype=torch.bfloat16)
    order_A = torch.randperm(tokens * k, device="cuda")
    weights_TK = torch.rand(tokens, k, device="cuda", dtype=torch.bfloat16)
    x_TH = torch.empty(tokens, hidden, device="cuda", dtype=torch.bfloat16)

    def index_add():
        y = y_AH * weights_TK.reshape(-1)[order_A, None]
        return torch.zeros_like(x_TH).index_add_(0, order_A // k, y)

    def permute_sum():
        y = torch.empty_like(y_AH).index_copy(0, order_A, y_AH).view(tokens, k, hidden)
        return (y * weights_TK[..., None]).sum(dim=1)

    torch.testing.assert_close(index_add(), permute_sum(), rtol=0, atol=0)
    what = f"MoE combine, {tokens} tokens x {k}, hidden {hidden}"
    emit({"kind": "micro", "what": what, "variant": "index_add_ (atomics)", "ms": _ms(index_add)})
    emit({"kind": "micro", "what": what, "variant": "permute + sum (ours)", "ms": _ms(permute_sum)})


def attention(emit, batch: int, heads: int, seq: int, dim: int, backward: bool) -> None:
    shape = (batch, heads, seq, dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=backward) for _ in range(3))
    grad = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    what = f"causal attention B{batch} N{heads} S{seq} D{dim} " + ("fwd+bwd" if backward else "fwd")

    def run(backend, pad):
        def fn():
            with sdpa_kernel([backend]):
                if pad:
                    qp, kp, vp = (F.pad(t, (0, pad - dim)) for t in (q, k, v))
                    out = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=dim**-0.5)[..., :dim]
                else:
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                if backward:
                    out.backward(grad)
            return out

        return fn

    ref = None
    for name, backend in BACKENDS.items():
        for pad in (None, 64):
            variant = name + (f", padded to {pad}" if pad else "")
            try:
                fn = run(backend, pad)
                out = fn().detach()
                ref = out if ref is None else ref
                err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                emit({"kind": "micro", "what": what, "variant": variant, "ms": _ms(fn), "rel_err": err})
            except RuntimeError as error:  # a backend that does not take this shape
                emit({"kind": "micro", "what": what, "variant": variant, "status": str(error)[:120]})
            if q.grad is not None:
                q.grad = k.grad = v.grad = None


def run_all(emit, config) -> None:
    """The levers at the base model's shapes (training: 4 x 4096 tokens; forecasting: 1024 x 512)."""
    h, n = config.hidden_size, config.num_attention_heads
    for tokens in (4 * 4096, 1024 * 512):
        routing(emit, tokens, config.num_experts, config.num_experts_per_tok)
        combine(emit, tokens, h, config.num_experts_per_tok)
    attention(emit, 4, n, 4096, h // n, backward=True)
    attention(emit, 1024, n, 512, h // n, backward=False)
