"""timemoe-forecaster: Time-MoE in plain PyTorch, with sktime and darts estimators."""

from __future__ import annotations

from .config import PRESETS, TimeMoEConfig
from .model import TimeMoEForPrediction

__version__ = "0.1.0"
__all__ = ["PRESETS", "TimeMoEConfig", "TimeMoEForPrediction", "TimeMoEForecaster", "__version__"]


def __getattr__(name: str):
    # The sktime adapter imports sktime; load it only when asked for (sktime is an extra).
    if name == "TimeMoEForecaster":
        from .sktime import TimeMoEForecaster

        return TimeMoEForecaster
    raise AttributeError(f"module 'timemoe_forecaster' has no attribute {name!r}")
