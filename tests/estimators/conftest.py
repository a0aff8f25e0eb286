"""Estimator tests run tiny models, where torch's intra-op threads cost more than they save
(and stall badly when the CPU is shared), so they run single-threaded."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
