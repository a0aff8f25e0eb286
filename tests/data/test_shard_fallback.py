"""The window sampler's shards fall back to the whole source together, or none does."""

from __future__ import annotations

import numpy as np

from timemoe_forecaster.data import ArraySource, WindowSampler


def _pick_rates(src: ArraySource, world_size: int, max_length: int) -> np.ndarray:
    """Per series, the chance that a window of the whole run (all shards alike) comes from it."""
    p = np.zeros(len(src))
    for rank in range(world_size):
        sampler = WindowSampler(src, max_length=max_length, min_length=8, rank=rank, world_size=world_size)
        indices, cum = sampler._shards[0]
        weights = np.diff(np.r_[0.0, cum])
        p[np.asarray(list(indices))] += weights / weights.sum() / world_size
    return p


def test_a_lopsided_deal_makes_every_shard_read_the_whole_source():
    # Dealt by windows over 4 shards, shard 0 would hold far more than 1/4 of the windows and the others about
    # their share. Shard 0 alone fell back to the whole source while shards 1-3 kept their own series, so the
    # series dealt to shard 0 were drawn at a quarter of their rate (the others at 1.22x), and the run's mix
    # depended on world_size x grad_accum. The docs: where the deal is off, every rank reads the whole source.
    lengths = [306, 381, 33, 74, 332, 380, 114, 138]
    src = ArraySource([np.random.default_rng(k).normal(size=n) for k, n in enumerate(lengths)], name="deal")
    shards = [WindowSampler(src, max_length=32, min_length=8, rank=r, world_size=4)._shards[0][0] for r in range(4)]
    whole = [len(s) == len(lengths) for s in shards]
    assert all(whole) or not any(whole), whole
    windows = np.ceil(np.asarray(lengths) / 33.0)
    np.testing.assert_allclose(_pick_rates(src, 4, 32), windows / windows.sum(), rtol=0.15)
