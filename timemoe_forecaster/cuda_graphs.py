"""Whole forecasts replayed as CUDA graphs: one launch instead of thousands.

A forecast of a long horizon is a prefill plus many small decode steps, and on a GPU those steps are
bound by the host: Python, dynamo's guards and kernel launches took about 2.5 times the GPU's own
time for the base model at horizon 720 (docs/performance.md). Every shape in a forecast is fixed by
(batch, context length, channels, horizon, padding or not), and the forecast path never waits for
the device, so the whole of it (KV cache included) can be captured once per shape and replayed.

    from timemoe_forecaster.compile import compile_blocks
    from timemoe_forecaster.cuda_graphs import CUDAGraphForecaster
    model = compile_blocks(TimeMoEForPrediction.from_pretrained(path, dtype=torch.bfloat16, device="cuda"))
    fast = CUDAGraphForecaster(model)
    fast(context, 96)   # first call per shape: warm-up and capture; later calls replay

Each captured shape keeps its graph's memory (about one forecast's peak) until it is evicted (at most
``max_graphs`` shapes, least recently used first) or ``clear()`` is called. Results equal
``model.forecast`` (same kernels, same order). A graph reads the parameters at the addresses they had
when it was captured: in-place updates (an optimizer step, ``load_state_dict``) are seen, but after
``model.to(...)`` or replacing a parameter call ``clear()``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .forecast import DEFAULT_MAX_BATCH_TOKENS, eval_mode, finish_output, prepare_inputs, run_forecast

log = logging.getLogger(__name__)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor  # static input [B, S, C]
    valid: torch.Tensor | None  # static padding mask [B, S]
    out: torch.Tensor  # static output [B, horizon, C]


class CUDAGraphForecaster:
    """``model.forecast`` for a CUDA model, captured per input shape and replayed."""

    def __init__(self, model, max_graphs: int = 4, max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS):
        param = next(model.parameters())
        if not param.is_cuda:
            raise ValueError("CUDAGraphForecaster needs a model on a CUDA device; use model.forecast elsewhere")
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be at least 1, got {max_graphs}")
        self.model, self.max_graphs, self.max_batch_tokens = model, max_graphs, max_batch_tokens
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()

    @torch.no_grad()
    def __call__(self, context: torch.Tensor, horizon: int, attention_mask: torch.Tensor | None = None):
        x, valid, horizon = prepare_inputs(self.model, context, horizon, attention_mask, self.max_batch_tokens)
        key = (tuple(x.shape), horizon, valid is not None)
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._capture(x, valid, horizon)
            self._graphs[key] = captured
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        captured.x.copy_(x)
        if valid is not None:
            captured.valid.copy_(valid)
        captured.graph.replay()
        return finish_output(captured.out.clone(), context)

    def clear(self) -> None:
        """Drop every captured graph and the memory it holds."""
        self._graphs.clear()

    def _capture(self, x: torch.Tensor, valid: torch.Tensor | None, horizon: int) -> _Captured:
        log.info("capturing a CUDA graph for batch %d, context %d, horizon %d", x.shape[0], x.shape[1], horizon)
        model = self.model
        with eval_mode(model):
            static_x, static_valid = x.clone(), None if valid is None else valid.clone()

            def run():
                return run_forecast(model, static_x, static_valid, horizon, self.max_batch_tokens)

            # Warm-up on a side stream, as capture requires: compiles, autotunes the Triton kernels and
            # creates the cuBLAS/cuDNN plans that capture cannot.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = run()
        return _Captured(graph, static_x, static_valid, out)


__all__ = ["CUDAGraphForecaster"]
