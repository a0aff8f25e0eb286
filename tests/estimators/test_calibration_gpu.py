"""Interval calibration on CUDA: the memo keyed on CUDA weights, and the held-out copy of a fine-tuned forecaster."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sktime")

from sktime.datasets import load_airline  # noqa: E402

import timemoe_forecaster.sktime as sk  # noqa: E402
from tests.helpers import make_model  # noqa: E402
from timemoe_forecaster import TimeMoEForecaster, loading  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("calibration_gpu_ckpt")
    make_model(seed=6).save_pretrained(path)
    return str(path)


@pytest.fixture
def counted(monkeypatch):
    calls = {"forecast": 0, "calibrate": 0, "fine-tune": 0}

    def counting(module, name, key):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counting(sk.preprocess, "forecast_series", "forecast")
    counting(sk, "rolling_residuals", "calibrate")
    counting(loading, "train_private_copy", "fine-tune")
    return calls


def test_the_memo_serves_cuda_weights_once_and_forgets_them_when_they_change(checkpoint, counted):
    y = load_airline()
    on = {
        device: TimeMoEForecaster(model_path=checkpoint, context_length=48, device=device).fit(y, fh=[1, 2, 3])
        for device in ("cpu", "cuda")
    }
    assert next(on["cuda"].model_.parameters()).is_cuda
    cpu = on["cpu"].predict_interval(coverage=0.8)
    counted.update(forecast=0, calibrate=0)
    f = on["cuda"]
    f.predict()
    cuda = f.predict_interval(coverage=0.8)
    f.predict_quantiles(alpha=[0.1, 0.9])
    assert counted == {"forecast": 1, "calibrate": 1, "fine-tune": 0}
    np.testing.assert_allclose(cuda.to_numpy(), cpu.to_numpy(), rtol=2e-3, atol=1e-2)
    # Weights changed in place on the GPU (same storage, new version): a fresh preset's, not the shared cache's.
    g = TimeMoEForecaster(config={"preset": "tiny", "max_position_embeddings": 128}, context_length=48, device="cuda")
    g.fit(y, fh=[1, 2, 3])
    before = g.predict_interval(coverage=0.8)
    with torch.no_grad():
        for p in g.model_.parameters():
            p.mul_(1.5)
    after = g.predict_interval(coverage=0.8)
    assert counted["forecast"] == 3 and counted["calibrate"] == 3
    assert not np.allclose(after.to_numpy(), before.to_numpy())


def test_a_fine_tuned_cuda_forecaster_calibrates_on_a_held_out_copy_on_cuda_once(checkpoint, counted, monkeypatch):
    copies = []
    original = sk.TimeMoEForecaster._fine_tuned_copy

    def recording(self, series, firsts):
        copies.append(original(self, series, firsts))
        return copies[-1]

    monkeypatch.setattr(sk.TimeMoEForecaster, "_fine_tuned_copy", recording)
    settings = {"steps": 3, "batch_size": 4, "max_length": 32, "lr": 1e-3}
    y = load_airline()
    f = TimeMoEForecaster(model_path=checkpoint, context_length=48, device="cuda", fine_tune=settings, seed=0)
    f.fit(y, fh=[1, 2, 3, 4])
    assert counted["fine-tune"] == 1
    intervals = f.predict_interval(coverage=0.9)
    f.predict_quantiles(alpha=[0.05, 0.95])
    f.predict_interval(fh=[1, 2, 3])  # a shorter horizon cut at the same point (80): the same copy serves
    assert counted["fine-tune"] == 2 and len(copies) == 1
    copy = copies[0]
    assert all(p.is_cuda for p in copy.parameters()) and copy is not f.model_
    differs = [not torch.equal(a, b) for a, b in zip(copy.parameters(), f.model_.parameters())]
    assert any(differs)  # trained on less than the fitted model
    values = intervals.to_numpy()
    assert np.isfinite(values).all() and (values[:, 0] < values[:, 1]).all()
