"""timemoe-forecaster: Time-MoE in plain PyTorch, with sktime and darts estimators."""

from __future__ import annotations

import importlib.util
import os

import torch

from .config import PRESETS, TimeMoEConfig
from .model import TimeMoEForPrediction


def _one_thread_after_fork() -> None:
    # A process forked after torch ran a parallel CPU kernel inherits OpenMP's thread team in a broken state
    # (libgomp is not fork-safe): its first matmul waits forever at the team's barrier. sktime's
    # backend="multiprocessing" and joblib's fork workers hung so after any forecast in the parent. One thread
    # per forked worker avoids the team, and keeps n workers from oversubscribing the cores.
    torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_one_thread_after_fork)

__version__ = "0.1.0"
__all__ = ["PRESETS", "TimeMoEConfig", "TimeMoEForPrediction", "__version__"]
# The sktime estimator only where its extra is installed: listed unconditionally, ``from timemoe_forecaster import
# *`` failed with an ImportError on a core install (star import reads every name of __all__).
try:
    _HAS_SKTIME = importlib.util.find_spec("sktime") is not None
except (ImportError, ValueError):  # a module object without a spec in sys.modules
    _HAS_SKTIME = False
if _HAS_SKTIME:
    __all__.append("TimeMoEForecaster")


def __getattr__(name: str):
    # The sktime adapter imports sktime; load it only when asked for (sktime is an extra).
    if name == "TimeMoEForecaster":
        from .sktime import TimeMoEForecaster

        return TimeMoEForecaster
    raise AttributeError(f"module 'timemoe_forecaster' has no attribute {name!r}")
