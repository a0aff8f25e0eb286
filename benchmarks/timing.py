"""Timing helpers for the benchmarks: CUDA-event medians, peak memory, the matmul ceiling, FLOP counts.

Method (the device notes' METHOD.md): warm up first (compilation and allocator growth stay out of the
numbers), reset the peak-memory counter, time each repetition between CUDA events, report medians.
"""

from __future__ import annotations

import gc
import platform
import statistics
import time
from collections.abc import Callable

import torch

from timemoe_forecaster.config import TimeMoEConfig
from timemoe_forecaster.forecast import head_schedule
from timemoe_forecaster.model.modeling import model_flops_per_token

GIB = 1024**3


def free_memory() -> None:
    """Drop unreachable tensors and hand cached blocks back, so the next peak is the next run's alone."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def time_cuda(fn: Callable[[], object], warmup: int, reps: int) -> dict:
    """Run ``fn`` ``warmup`` times, then ``reps`` times between CUDA events.

    Returns median/min/max milliseconds and the peak memory (GiB) allocated from just before the
    warm-up to the end, i.e. the steady state including optimizer state created on the first step.
    """
    free_memory()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {
        "ms_median": statistics.median(times),
        "ms_min": min(times),
        "ms_max": max(times),
        "reps": reps,
        "warmup_s": round(warm_s, 2),
        "peak_gib": torch.cuda.max_memory_allocated() / GIB,
    }


def time_cpu(fn: Callable[[], object], warmup: int, reps: int) -> dict:
    """Wall-clock medians for CPU work (perf_counter around each call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"ms_median": statistics.median(times), "ms_min": min(times), "ms_max": max(times), "reps": reps}


def matmul_peak_tflops(n: int = 8192, reps: int = 30) -> float:
    """Measured bf16 ceiling: median rate of an n x n x n product on random data (never zeros).

    It moves by a few per cent between calls on one machine (session 20: 734-790 TFLOP/s on an H200); a
    second of warm-up and the best of three medians did not narrow that, so MFU figures carry the noise.
    """
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    stats = time_cuda(lambda: torch.mm(a, b), warmup=5, reps=reps)
    return 2 * n**3 / (stats["ms_median"] * 1e-3) / 1e12


def forecast_flops(config: TimeMoEConfig, batch: int, context: int, horizon: int) -> float:
    """Model FLOPs of one forecast call: a prefill over the context, then one decode step per head
    application that feeds its points back (the greedy schedule of ``forecast.head_schedule``)."""
    total = context * model_flops_per_token(config, context, training=False)
    length = context
    steps = head_schedule(config.horizon_lengths, horizon)
    for _, kept in steps[:-1]:
        # New tokens see about all cached keys (not half): count them at twice the cache length.
        total += kept * model_flops_per_token(config, 2 * (length + kept // 2), training=False)
        length += kept
    return batch * total


def environment() -> dict:
    """Versions and device, written next to every result table."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or "?"}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        import sktime

        info["sktime"] = sktime.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    return info
