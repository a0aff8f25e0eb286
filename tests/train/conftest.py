"""Training tests run torch on one thread: the tiny model gains nothing from two, and OpenMP threads that
spin on a loaded 2-core CI machine made single steps up to 30x slower."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
