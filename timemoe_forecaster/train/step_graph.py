"""A whole training step (forward, backward, optimizer update) replayed as one CUDA graph.

``torch.compile(mode="reduce-overhead")`` graphs the forward and the backward separately and leaves
the optimizer to the host; between the pieces the GPU waits for Python. On the large model that was
about 3 ms of a 40 ms step on an H100 (``benchmarks/results/speed.md``). Recording the step as a
whole removes every launch but one:

    optimizer = build_optimizer(model, lr=1e-3, capturable=True)   # fused AdamW, state on the GPU
    step = GraphedTrainStep(lambda batch: model(**batch).loss, optimizer)
    for batch in batches:          # tensors of one fixed shape, dtype and device
        loss = step(batch)         # a tensor; reading it (loss.item()) waits for the step

The first ``warmup`` calls run eagerly on a side stream (torch.compile compiles there, the optimizer
creates its state); the next one records the graph and replays it, and later ones only copy the batch
into the graph's input tensors and replay. Every call is one real training step on its own batch, in
order, so a graphed run trains like an eager one.

What a graph cannot do, and so neither can this: host work inside the step (``.item()``, data-
dependent shapes, a learning rate given as a Python float that changes: give the optimizer a tensor
learning rate and update it in place instead), and gradient accumulation across calls (each replay
overwrites the gradients).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


class GraphedTrainStep:
    """``loss_fn(batch)`` + backward + ``optimizer.step()`` recorded once, then replayed per batch."""

    def __init__(self, loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], optimizer, warmup: int = 3) -> None:
        if not all(group.get("capturable", False) for group in optimizer.param_groups):
            raise ValueError(
                "GraphedTrainStep needs an optimizer built with capturable=True (its step count and "
                "bias corrections must live on the GPU to be recorded)"
            )
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if not params or not all(p.is_cuda for p in params):
            raise ValueError("GraphedTrainStep needs every parameter on a CUDA device")
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 (the optimizer's state is created there), got {warmup}")
        self.loss_fn, self.optimizer, self.warmup = loss_fn, optimizer, warmup
        self.calls = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_batch: dict[str, torch.Tensor] = {}
        self._static_loss: torch.Tensor | None = None
        self._stream = torch.cuda.Stream(device=params[0].device)

    def _eager_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = self.loss_fn(batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def _check_batch(self, batch: dict[str, torch.Tensor]) -> None:
        static = self._static_batch
        if set(batch) != set(static):
            raise ValueError(f"batch keys changed from {sorted(static)} to {sorted(batch)}")
        for key, value in batch.items():
            if value.shape != static[key].shape or value.dtype != static[key].dtype:
                raise ValueError(
                    f"batch[{key!r}] is {tuple(value.shape)} {value.dtype}, but the graph was recorded for "
                    f"{tuple(static[key].shape)} {static[key].dtype}; a graphed step needs one fixed shape"
                )

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.calls += 1
        if self._graph is not None:
            self._check_batch(batch)
            for key, value in batch.items():
                self._static_batch[key].copy_(value, non_blocking=True)
            self._graph.replay()
            return self._static_loss
        # Warm-up and capture run on a side stream, as CUDA graph capture requires; the caller's stream
        # waits for it, so what follows on the default stream sees the step's results.
        current = torch.cuda.current_stream()
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            if self.calls <= self.warmup:
                loss = self._eager_step(batch)
            else:
                loss = self._capture(batch)
        current.wait_stream(self._stream)
        if self._graph is not None:
            self._graph.replay()  # capture records without running: this is the step itself
            loss = self._static_loss
        return loss

    def _capture(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        log.info("recording the training step as a CUDA graph (after %d eager steps)", self.warmup)
        self._static_batch = {key: value.clone() for key, value in batch.items()}
        self.optimizer.zero_grad(set_to_none=True)  # the backward allocates gradients inside the graph pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._stream):
            loss = self.loss_fn(self._static_batch)
            loss.backward()
            self.optimizer.step()
        self._graph, self._static_loss = graph, loss.detach()
        return self._static_loss


__all__ = ["GraphedTrainStep"]
