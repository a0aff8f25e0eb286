"""The Time-MoE network in plain PyTorch. Imports only torch and the config (model code stays pure)."""

from .modeling import TimeMoEForPrediction, TimeMoEModel, TimeMoEOutput

__all__ = ["TimeMoEForPrediction", "TimeMoEModel", "TimeMoEOutput"]
