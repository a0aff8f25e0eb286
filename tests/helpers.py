"""Helpers shared by tests (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import torch

from timemoe_forecaster import TimeMoEConfig, TimeMoEForPrediction


def make_model(seed: int = 0, **overrides) -> TimeMoEForPrediction:
    """A tiny model with weights scaled up so outputs are far from zero (random init is ~0.02)."""
    torch.manual_seed(seed)
    attn_backend = overrides.pop("attn_backend", "sdpa")
    moe_dispatch = overrides.pop("moe_dispatch", "auto")
    config = TimeMoEConfig.from_preset("tiny", **overrides)
    model = TimeMoEForPrediction(config, attn_backend=attn_backend, moe_dispatch=moe_dispatch)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model.eval()
