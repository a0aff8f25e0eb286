"""Data pipeline: series sources, synthetic series, window sampling and sequence packing (numpy first)."""

from __future__ import annotations

from .binary import BinarySource, write_binary_dataset
from .packing import PackedBatchStream, collate, pack_windows
from .sources import ArraySource, ConcatSource, SeriesSource, open_source, open_sources, split_at_nonfinite
from .synthetic import SyntheticSource
from .windows import WindowSampler, is_low_quality, iter_eval_windows, standardise

__all__ = [
    "ArraySource",
    "BinarySource",
    "ConcatSource",
    "PackedBatchStream",
    "SeriesSource",
    "SyntheticSource",
    "WindowSampler",
    "collate",
    "is_low_quality",
    "iter_eval_windows",
    "open_source",
    "open_sources",
    "pack_windows",
    "split_at_nonfinite",
    "standardise",
    "write_binary_dataset",
]
