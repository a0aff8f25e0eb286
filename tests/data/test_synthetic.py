"""Synthetic series: a deterministic function of (seed, i), finite, and diverse."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from timemoe_forecaster.data import SyntheticSource, WindowSampler, open_source
from timemoe_forecaster.data.synthetic import KINDS, _stationary_draws


def test_series_depend_only_on_seed_and_index():
    a, b = SyntheticSource(seed=7), SyntheticSource(seed=7)
    for i in (0, 1, 2, 10**6, 2**31 - 2):
        np.testing.assert_array_equal(a[i], b[i])
    # Order of access does not matter (resuming an infinite stream at any index).
    np.testing.assert_array_equal(SyntheticSource(seed=7)[5], a[5])
    assert not np.array_equal(SyntheticSource(seed=8)[0][:10], a[0][:10])
    assert len(SyntheticSource(seed=0)) == 2**31 - 1 and len(SyntheticSource(seed=0, num_series=10)) == 10
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(a))[3], a[3])


def test_values_are_finite_float32_with_requested_lengths():
    src = SyntheticSource(seed=1, min_length=50, max_length=600)
    for i in range(300):
        x = src[i]
        assert x.dtype == np.float32 and x.ndim == 1
        assert 50 <= x.shape[0] <= 600 and x.shape[0] == src.length(i)
        assert np.isfinite(x).all(), (i, src.kind(i))
        assert x.std() > 0, (i, src.kind(i))


def test_every_kind_appears_and_differs():
    src = SyntheticSource(seed=2, max_length=512)
    kinds = {src.kind(i) for i in range(400)}
    assert kinds == set(KINDS)
    # Intermittent demand is mostly zeros and non-negative integers; the others are not.
    inter = SyntheticSource(seed=3, kinds=["intermittent"], max_length=300)
    x = inter[0]
    assert (x >= 0).all() and (x == 0).mean() > 0.2
    seasonal = SyntheticSource(seed=3, kinds=["seasonal"], max_length=300)[0]
    assert (seasonal == 0).mean() < 0.05
    with pytest.raises(ValueError, match="unknown synthetic kinds"):
        SyntheticSource(kinds=["sine"])


def test_stationary_gp_draws_have_the_kernel_covariance():
    rng = np.random.default_rng(0)
    lag = np.linspace(0.0, 1.0, 40)
    r = np.exp(-0.5 * (lag / 0.1) ** 2)
    draws = _stationary_draws(rng, r, 8000)  # [8000, 40]
    np.testing.assert_allclose((draws[:, :1] * draws).mean(axis=0), r, atol=0.05)


def test_open_source_synthetic_spec_feeds_the_sampler():
    src = open_source("synthetic#seed=4&max_length=300")
    assert isinstance(src, SyntheticSource) and src.seed == 4 and src.max_length == 300
    sampler = WindowSampler(src, max_length=128, seed=0)
    windows = [sampler.sample() for _ in range(20)]
    assert all(w.shape[0] == 129 for w in windows)
