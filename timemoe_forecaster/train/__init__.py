"""Training: the loop, optimizer and schedule, checkpoints, parallelism and fine-tuning."""

from __future__ import annotations

from .finetune import train_on_series
from .parallel import DistContext, distributed_context, parallelize
from .trainer import TrainConfig, Trainer, train

__all__ = ["DistContext", "TrainConfig", "Trainer", "distributed_context", "parallelize", "train", "train_on_series"]
