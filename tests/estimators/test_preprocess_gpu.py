"""The estimators' forecasting path on CUDA (fp32 and bf16) agrees with the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import make_model
from timemoe_forecaster import preprocess
from timemoe_forecaster.loading import load_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_padded_batches_on_cuda_match_cpu(tmp_path):
    make_model(seed=8).save_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    series = [rng.normal(size=n).cumsum() + 50 for n in (5, 64, 17, 200, 2)]
    series[2][3] = np.nan
    cpu = preprocess.forecast_series(load_model(str(tmp_path), device="cpu"), series, 70, batch_size=3)
    gpu_model = load_model(str(tmp_path), device="cuda")
    assert next(gpu_model.parameters()).is_cuda
    gpu = preprocess.forecast_series(gpu_model, series, 70, batch_size=3, device=torch.device("cuda"))
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3)
    bf16 = preprocess.forecast_series(
        load_model(str(tmp_path), device="cuda", dtype="bfloat16"), series, 70, device=torch.device("cuda")
    )
    scale = np.array([np.nanstd(s) for s in series])[:, None]
    assert np.abs(bf16 - cpu).max(axis=1).max() / scale.min() < 0.5  # bf16: close, not equal


def test_default_checkpoint_loads_on_cuda():
    model = load_model(None, device="auto")
    assert next(model.parameters()).is_cuda
    out = preprocess.forecast_series(model, [np.sin(np.arange(100) / 5)], 12, device=torch.device("cuda"))
    assert out.shape == (1, 12) and np.isfinite(out).all()
