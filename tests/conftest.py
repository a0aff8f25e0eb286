"""Shared fixtures: tiny fp32 models built from a seed, fresh random data per test."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import make_model
from timemoe_forecaster import TimeMoEConfig, TimeMoEForPrediction, memo


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests run tiny models, where torch's intra-op threads cost more than they save, and OpenMP threads
    spinning on a loaded 2-core machine made single steps 10-50x slower. So every test runs on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _nothing_remembered():
    """The memo outlives a test: a model a test keeps (a module-level fixture's) would carry its entries into the
    next one. Each test starts from an empty memo, so it sees the forecasts it makes, not an earlier test's."""
    memo.clear()
    yield


@pytest.fixture
def tiny_config() -> TimeMoEConfig:
    return TimeMoEConfig.from_preset("tiny")


@pytest.fixture
def tiny_model() -> TimeMoEForPrediction:
    return make_model()
