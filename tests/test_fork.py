"""Forked worker processes (sktime's backend="multiprocessing", joblib's fork workers) after a forecast."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import multiprocessing, torch
    import timemoe_forecaster
    from timemoe_forecaster import TimeMoEForPrediction

    torch.set_num_threads(2)
    model = TimeMoEForPrediction.from_pretrained(None)
    model.forecast(torch.randn(64, 256), 8)  # the parent runs parallel CPU kernels first

    def job(seed):
        torch.manual_seed(seed)
        return torch.get_num_threads(), float(model.forecast(torch.randn(4, 256), 8).sum())

    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(job, range(4))
    print("threads", sorted({t for t, _ in results}), "finite", all(v == v for _, v in results))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork start method (Linux)")
def test_forked_workers_forecast_after_the_parent_did():
    # They hung forever at OpenMP's barrier (libgomp is not fork-safe); the timeout only bounds a hang.
    try:
        run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("forked workers hung after the parent ran a forecast")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "threads [1] finite True" in run.stdout
