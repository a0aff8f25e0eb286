"""``torch.compile`` applied from outside the model, at the granularity the benchmarks measured.

Each decoder block is compiled in place (parameter names and ``state_dict`` keys stay the same, so
checkpoints save and load as before). Blocks receive their own KV cache and never read their layer
index, so a forecast compiles a handful of graphs (prefill, decode steps, the last layer's
last-position variant) rather than one per layer and length. On an H100 this took the base model
from 2,361 to 4,394 series/s (context 512, horizon 96, 1,024 series; docs/performance.md); replaying
the compiled forecast as a CUDA graph (``cuda_graphs.CUDAGraphForecaster``) removes the host's share.

    from timemoe_forecaster.compile import compile_blocks
    model = compile_blocks(TimeMoEForPrediction.from_pretrained(path, dtype=torch.bfloat16, device="cuda"))
    model.forecast(context, 96)   # the first calls compile (tens of seconds), later ones are fast
"""

from __future__ import annotations

import torch
from torch import nn

from .model.attention import prepare_flex_tiles

# A forecast meets several shapes (prefill, decode steps, a last partial batch) before dynamo marks
# sizes dynamic; the default limit of 8 recompilations per block would fall back to eager.
RECOMPILE_LIMIT = 64


def compile_blocks(model: nn.Module, backend: str = "inductor", **compile_kwargs) -> nn.Module:
    """Compile every decoder block of a TimeMoEForPrediction in place; returns the model.

    ``backend``/``compile_kwargs`` go to ``torch.compile`` ("inductor" on GPUs; "aot_eager" traces the
    same graphs without generating kernels, which is what the CPU tests use).
    """
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise TypeError(f"expected a TimeMoEForPrediction, got {type(model).__name__}")
    limit = getattr(torch._dynamo.config, "recompile_limit", None)
    if limit is not None and limit < RECOMPILE_LIMIT:
        torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
    prepare_flex_tiles(next(model.parameters()).device)  # compiled code reads the tile table, cannot fill it
    for block in layers:
        block.compile(backend=backend, **compile_kwargs)
    return model


def uncompile_blocks(model: nn.Module) -> nn.Module:
    """Undo :func:`compile_blocks` (dynamo's caches stay, so compiling again is cheap)."""
    for module in model.modules():
        module._compiled_call_impl = None
    return model


__all__ = ["compile_blocks", "uncompile_blocks"]
