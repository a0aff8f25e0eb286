"""The multi-resolution loss scores bf16 predictions against float32 targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from timemoe_forecaster.model.modeling import multi_horizon_loss


def test_bf16_predictions_are_scored_against_float32_labels():
    # Under bf16 autocast the heads give bf16 predictions; the labels (float32 from the batch) were cast to the
    # predictions' dtype before the loss, so every target was rounded to bf16 (8 significant bits: 0.4% steps,
    # 0.016 at a standardised value of 4) and a prediction equal to the rounded label scored a loss of 0.
    torch.manual_seed(0)
    labels = torch.randn(2, 16) * 2.0 + 1.0  # [B, S]
    pred = labels[..., None].to(torch.bfloat16)  # a 1-step head, [B, S, 1]
    want = F.huber_loss(pred.float(), labels[..., None], delta=2.0)
    got = multi_horizon_loss([pred], labels, None)
    assert want > 0
    torch.testing.assert_close(got, want)
