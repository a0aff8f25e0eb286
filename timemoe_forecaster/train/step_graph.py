"""A whole training step (forward, backward, optimizer update) replayed as one CUDA graph.

``torch.compile(mode="reduce-overhead")`` graphs the forward and the backward separately and leaves
the optimizer to the host; between the pieces the GPU waits for Python. Recording the step as a whole
removes every launch but one:

    optimizer = build_optimizer(model, lr=1e-3, capturable=True)   # fused AdamW, state on the GPU

    def step(batch):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    graphed = GraphedStep(step)
    for batch in batches:          # tensors of one fixed shape, dtype and device
        loss = graphed(batch)      # a tensor; reading it (loss.item()) waits for the step

The first ``warmup`` calls run ``step`` eagerly on a side stream (torch.compile compiles there, the
optimizer creates its state); the next one records the graph and replays it, and later ones only copy
the inputs into the graph's own tensors and replay. Every call is one real step on its own inputs, in
order, so a graphed run trains like an eager one. The outputs are the graph's tensors: the next call
overwrites them.

What a graph cannot hold, and so ``step`` must avoid: host work (``.item()``, data-dependent shapes,
copies from pageable host memory) and a learning rate given as a Python float that changes (the
replay would keep the recorded value: give the optimizer tensor learning rates, see
:func:`use_tensor_lr`). Gradients set to None at the end of ``step`` are recreated by the next replay's
backward in the same memory. Replacing tensors the graph reads (``optimizer.load_state_dict``,
``model.to``) needs a new ``GraphedStep``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils._pytree as pytree

log = logging.getLogger(__name__)


def check_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Raise a clear error unless ``optimizer``'s update can be recorded in a CUDA graph."""
    if not all(group.get("capturable", False) for group in optimizer.param_groups):
        raise ValueError(
            "a graphed training step needs an optimizer built with capturable=True (its step count and "
            "bias corrections must live on the GPU to be recorded)"
        )
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not params or not all(p.is_cuda for p in params):
        raise ValueError("a graphed training step needs every parameter on a CUDA device")


def use_tensor_lr(optimizer: torch.optim.Optimizer) -> None:
    """Turn each group's learning rate into a one-element tensor on the parameters' device.

    A recorded update reads the tensor at every replay, so a scheduler (which fills tensor learning rates
    in place) keeps working. A scheduler created before this call keeps float base rates, so its updates
    are host-side fills, never syncs."""
    for group in optimizer.param_groups:
        if not isinstance(group["lr"], torch.Tensor):
            device = group["params"][0].device
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


@contextlib.contextmanager
def float_learning_rates(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Within the block, learning rates made tensors by :func:`use_tensor_lr` are plain floats again (what state
    dicts save and load); after it the same tensors are back, filled with the groups' rates then (a loaded
    state may have changed them), so a recorded update keeps reading them."""
    tensors = [group["lr"] for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, tensors, strict=True):
        if isinstance(lr, torch.Tensor):
            group["lr"] = float(lr)
    try:
        yield
    finally:
        for group, tensor in zip(optimizer.param_groups, tensors, strict=True):
            if isinstance(tensor, torch.Tensor):
                tensor.fill_(float(group["lr"]))
                group["lr"] = tensor


def _signature(leaves: list, spec) -> tuple:
    """What a recorded graph is bound to: the inputs' nesting and each tensor's shape, dtype and device."""
    return spec, [(tuple(t.shape), t.dtype, t.device) if isinstance(t, torch.Tensor) else type(t) for t in leaves]


class GraphedStep:
    """``step_fn(inputs)`` run eagerly ``warmup`` times, then recorded once as a CUDA graph and replayed."""

    def __init__(self, step_fn: Callable[[Any], Any], warmup: int = 3) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 (the optimizer's state is created there), got {warmup}")
        if not torch.cuda.is_available():
            raise ValueError("a graphed training step needs a CUDA GPU")
        self.step_fn, self.warmup = step_fn, warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static_leaves: list[torch.Tensor] = []  # the graph's input tensors, in flattening order
        self._static_outputs: Any = None
        self._signature: tuple | None = None
        self._stream = torch.cuda.Stream()

    @property
    def recorded(self) -> bool:
        """Whether the graph exists, so that calls replay it."""
        return self.graph is not None

    def __call__(self, inputs: Any) -> Any:
        self.calls += 1
        if self.graph is not None:
            leaves, spec = pytree.tree_flatten(inputs)
            if _signature(leaves, spec) != self._signature:
                raise ValueError(
                    f"graphed step inputs changed: recorded for {self._signature}, got {_signature(leaves, spec)}; "
                    "a recorded step needs inputs of one fixed shape, dtype and device"
                )
            for static, value in zip(self._static_leaves, leaves, strict=True):
                static.copy_(value, non_blocking=True)
            self.graph.replay()
            return self._static_outputs
        # Warm-up and recording run on a side stream, as CUDA graph capture requires; the caller's stream
        # waits for it, so what follows on the default stream sees the step's results.
        current = torch.cuda.current_stream()
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            outputs = self.step_fn(inputs) if self.calls <= self.warmup else self._record(inputs)
        current.wait_stream(self._stream)
        if self.graph is not None:
            self.graph.replay()  # recording does not run the step: this replay is the step itself
            outputs = self._static_outputs
        return outputs

    def _record(self, inputs: Any) -> Any:
        log.info("recording the training step as a CUDA graph (after %d eager steps)", self.warmup)
        leaves, spec = pytree.tree_flatten(inputs)
        if not all(isinstance(t, torch.Tensor) for t in leaves):
            raise TypeError("graphed step inputs must be tensors, in dicts, lists or tuples")
        self._signature = _signature(leaves, spec)
        self._static_leaves = [t.clone() for t in leaves]
        static_inputs = pytree.tree_unflatten(self._static_leaves, spec)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._stream):
                outputs = self.step_fn(static_inputs)
        except Exception as err:
            raise RuntimeError(
                "the training step could not be recorded as a CUDA graph; it must not wait for the host "
                "(.item(), data-dependent shapes such as torch.where or nonzero, copies from pageable host "
                f"memory). Train without the step graph instead. Cause: {type(err).__name__}: {err}"
            ) from err
        self.graph, self._static_outputs = graph, outputs
        return outputs


__all__ = ["GraphedStep", "check_capturable", "float_learning_rates", "use_tensor_lr"]
