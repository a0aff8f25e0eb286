"""The core forecasting API's inputs: validation of forecast_series, row-named NaN errors of
model.forecast, concurrent forecasts of a model in training mode, star import without the sktime extra."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from tests.helpers import make_model
from timemoe_forecaster.preprocess import forecast_series


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_forecast_series_names_the_series_holding_inf(model, bad):
    ok = np.random.default_rng(0).standard_normal(30)
    with_inf = np.r_[ok[:10], bad, ok[10:]]
    with pytest.raises(ValueError, match="sales holds inf values; replace them by NaN"):
        forecast_series(model, [ok, with_inf], 3, names=["temp", "sales"])


def test_forecast_series_ignores_inf_older_than_its_context(model):
    ok = np.random.default_rng(0).standard_normal(30)
    got = forecast_series(model, [np.r_[np.inf, ok]], 3, context_length=10)
    assert np.array_equal(got, forecast_series(model, [ok], 3, context_length=10))


@pytest.mark.parametrize(
    "values, error",
    [
        (np.arange(30.0) + 1j, "holds complex values"),
        (np.arange(30) % 2 == 0, "must hold numeric values"),
        (np.array(["1", "2", "x"]), "must hold numeric values"),
    ],
)
def test_forecast_series_refuses_non_real_data_by_name(model, values, error):
    with pytest.raises(TypeError, match=f"sales {error}"):
        forecast_series(model, [values], 3, names=["sales"])


@pytest.mark.parametrize("make", [lambda t: t.to(torch.bfloat16), lambda t: t.clone().requires_grad_(True)])
def test_forecast_series_reads_any_torch_tensor(model, make):
    values = torch.linspace(0, 3, 30)
    expected = forecast_series(model, [make(values).detach().double().numpy()], 3)
    assert np.array_equal(forecast_series(model, [make(values)], 3), expected)


@pytest.mark.parametrize("horizon", ["5", None, [3]])
def test_forecast_series_refuses_a_horizon_that_is_no_integer(model, horizon):
    with pytest.raises(ValueError, match="horizon must be a positive integer"):
        forecast_series(model, [np.arange(10.0)], horizon)


def test_model_forecast_names_the_row_holding_nan(model):
    context = torch.randn(4, 20)
    context[2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"context holds NaN or inf at unmasked positions \(row 2\)"):
        model.forecast(context, 3)


def test_concurrent_forecasts_of_a_training_model_stay_in_eval_mode():
    model = make_model(attention_dropout=0.5).train()  # dropout changes every forecast run in training mode
    context = torch.randn(2, 30)
    expected = model.forecast(context, 20)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    diffs = []

    def work():
        for _ in range(30):
            diffs.append(float((model.forecast(context, 20) - expected).abs().max()))

    try:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert max(diffs) == 0.0
    assert all(m.training for m in model.modules())  # its own mode, restored


def test_star_import_without_the_sktime_extra():
    code = (
        "import sys; sys.modules['sktime'] = None\n"
        "from timemoe_forecaster import *\n"
        "print(TimeMoEForPrediction.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "TimeMoEForPrediction"
