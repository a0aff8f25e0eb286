"""benchmarks/aux_loss_micro.py's candidate load-balancing loss equals the library's, value and gradient."""

from __future__ import annotations

import pytest
import torch

from benchmarks.aux_loss_micro import COUNT_CHUNK, candidate_load_balancing_loss
from timemoe_forecaster.model.moe import load_balancing_loss


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("tokens", [6, COUNT_CHUNK + 37])  # one partial chunk; more than one chunk
def test_candidate_equals_the_library_loss_and_its_gradient(masked, tokens):
    torch.manual_seed(0)
    layers, k, e = 3, 2, 8
    logits = [torch.randn(tokens, e, requires_grad=True) for _ in range(layers)]
    logits[0].data[: tokens // 2] *= 4.0  # a skewed layer, so that the loss is not near its minimum
    mask = None
    if masked:
        mask = torch.ones(1, tokens, dtype=torch.long)
        mask[0, : tokens // 3] = 0
    want = load_balancing_loss(logits, k, e, mask)
    want_grads = torch.autograd.grad(want, logits)
    got = candidate_load_balancing_loss(logits, k, e, mask)
    got_grads = torch.autograd.grad(got, logits)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)
