"""Autoregressive forecasting with a KV cache and the multi-resolution head schedule.

One prefill over the context, then decode steps that each feed back the points the previous head
produced. At every step the head is the largest one not longer than what is left to forecast
(the official greedy schedule), so horizon 100 with heads [1, 8, 32, 64] runs 64 + 32 + 1 + 1 + 1 + 1.

Shape legend: B batch, S context, C channels, G key/value heads, K cached keys, D head dim, L head length.
"""

from __future__ import annotations

import contextlib
import threading
import weakref

import numpy as np
import torch

from .model.modeling import (
    CPU_MAX_BATCH_TOKENS,
    DEFAULT_MAX_BATCH_TOKENS,
    TimeMoEForPrediction,
    build_attention_mask,
    check_series_shape,
)


class _Fill:
    """How many positions of the cache are filled: shared by the cache and its layers. The layers
    hold this rather than the cache itself, so no reference cycle keeps gigabytes of keys alive
    until Python's garbage collector happens to run (repeated forecasts ran GPUs out of memory)."""

    length = 0


class LayerKVCache:
    """One layer's slice of the cache (a plain object: ``torch.compile`` treats ``length`` as a size
    that may vary instead of recompiling the block for every layer)."""

    def __init__(self, fill: _Fill, k: torch.Tensor, v: torch.Tensor) -> None:
        self.fill, self.k, self.v = fill, k, v  # [B, G, max_len, D]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.fill.length
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]  # [B, G, K, D]


class KVCache:
    """Preallocated keys and values of every layer; ``length`` counts the positions filled so far.

    Left uninitialised: attention reads only the filled positions (``LayerKVCache.update``), and
    zero-filling took 1.6% of a base h 96 forecast on the GPU (48 fill kernels of 67 us replayed in
    every CUDA graph, session 11's profile)."""

    def __init__(self, num_layers: int, batch: int, num_kv_heads: int, max_len: int, head_dim: int, dtype, device):
        shape = (batch, num_kv_heads, max_len, head_dim)
        self.fill = _Fill()
        self.layers = [
            LayerKVCache(
                self.fill,
                torch.empty(shape, dtype=dtype, device=device),
                torch.empty(shape, dtype=dtype, device=device),
            )
            for _ in range(num_layers)
        ]

    @property
    def length(self) -> int:
        return self.fill.length

    def layer(self, idx: int) -> LayerKVCache:
        return self.layers[idx]

    def advance(self, n: int) -> None:
        self.fill.length += n

    def rows(self, start: int, stop: int) -> KVCache:
        """A cache over rows [start, stop) that writes into this one's tensors, with its own fill count
        (so a prefill can run in chunks of rows; ``advance`` this cache once they are all done)."""
        part = KVCache.__new__(KVCache)
        part.fill = _Fill()
        part.fill.length = self.fill.length
        part.layers = [LayerKVCache(part.fill, lc.k[start:stop], lc.v[start:stop]) for lc in self.layers]
        return part


def head_schedule(horizon_lengths: list[int], horizon: int) -> list[tuple[int, int]]:
    """(head index, points kept) per decode step: largest head <= remaining, else the smallest, cut."""
    steps, remaining = [], horizon
    while remaining > 0:
        idx = max((i for i, h in enumerate(horizon_lengths) if h <= remaining), default=0)
        kept = min(horizon_lengths[idx], remaining)
        steps.append((idx, kept))
        remaining -= kept
    return steps


def _check_inputs(model: TimeMoEForPrediction, context: torch.Tensor, horizon: int, attention_mask):
    if not isinstance(context, torch.Tensor):
        raise TypeError(f"context must be a torch.Tensor, got {type(context).__name__}")
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    check_series_shape(context, model.config.input_size, "context")
    if context.shape[0] == 0 or context.shape[1] == 0:
        raise ValueError(f"context is empty: shape {tuple(context.shape)}")
    if not context.dtype.is_floating_point:
        raise TypeError(f"context must be a floating-point tensor, got {context.dtype}")
    if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(context.shape[:2]):
        raise ValueError(
            f"attention_mask must have shape {tuple(context.shape[:2])}, got {tuple(attention_mask.shape)}"
        )


def chunk_rows(batch: int, tokens_per_row: int, max_batch_tokens: int | None) -> list[tuple[int, int]]:
    """Even (start, stop) row ranges whose rows times ``tokens_per_row`` fit ``max_batch_tokens``."""
    if max_batch_tokens is None:
        return [(0, batch)]
    chunks = -(-batch * tokens_per_row // max_batch_tokens)  # ceil
    chunks = max(1, min(batch, chunks))
    size = -(-batch // chunks)
    return [(start, min(batch, start + size)) for start in range(0, batch, size)]


# A forecast pass holds the KV cache of all its rows: up to this many times ``max_batch_tokens``
# cached positions (beyond it the rows are split into passes; decode steps stay large enough to keep
# a GPU busy, which the host-bound decode of long horizons needs) ...
CACHE_CHUNKS = 8
# ... and at most this many bytes of keys and values per ``max_batch_tokens`` token: 16 GiB at the default.
# Base in bf16 stays under it (18 KiB per position: 2^19 positions take 9 GiB); large in bf16 (36 KiB) passes
# 466k positions instead of 2^19, which splits none of the benchmark's batches differently; a model with a wide
# cache splits into more passes instead of filling the GPU (ultra caches 144 KiB per position in bf16, so 2^19
# positions took 72 GiB).
CACHE_BYTES_PER_TOKEN = 2**18


def cache_positions_per_pass(model: TimeMoEForPrediction, dtype: torch.dtype, max_batch_tokens: int | None):
    """How many positions (rows x cached length) one forecast pass may cache; None: no limit."""
    if max_batch_tokens is None:
        return None
    c = model.config
    per_position = c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * dtype.itemsize
    return max(1, min(CACHE_CHUNKS * max_batch_tokens, CACHE_BYTES_PER_TOKEN * max_batch_tokens // per_position))


@torch.no_grad()
def forecast(
    model: TimeMoEForPrediction,
    context: torch.Tensor,
    horizon: int,
    attention_mask: torch.Tensor | None = None,
    max_batch_tokens: int | None | str = "auto",
) -> torch.Tensor:
    """Forecast ``horizon`` points after each row of ``context`` (values used as given).

    context [B, S] or [B, S, C]; attention_mask [B, S] with 0 on left padding. Returns [B, horizon]
    (or [B, horizon, C]) in float32 on the context's device. The caller's tensors are not modified.

    ``max_batch_tokens`` bounds memory, not results (rows are independent): the prefill runs on at
    most that many context points (rows x S) at a time, and one pass of prefill plus decode steps
    caches at most ``CACHE_CHUNKS`` times as many positions (rows x (S + fed-back points)) and at most
    ``CACHE_BYTES_PER_TOKEN`` times as many bytes of keys and values (16 GiB at the default). None runs
    the whole batch at once. "auto": ``DEFAULT_MAX_BATCH_TOKENS`` (2^16) on a GPU, ``CPU_MAX_BATCH_TOKENS``
    (2^12) for a model on the CPU, where larger chunks only cost memory (and time).
    """
    max_batch_tokens = resolve_batch_tokens(model, max_batch_tokens)
    x, valid, horizon = prepare_inputs(model, context, horizon, attention_mask, max_batch_tokens)
    with eval_mode(model):
        out = run_forecast(model, x, valid, horizon, max_batch_tokens)
    return finish_output(out, context)


# Forecasts in progress per model, and the modules the first of them flipped to eval mode: the last one to finish
# restores them. Each forecast flipping and restoring on its own let one thread's forecast finish and put a
# training model back in training mode while another thread's was still running, which then ran with attention
# dropout (random forecasts).
_EVAL_LOCK = threading.Lock()
_EVAL_USERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> [count, flipped modules]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Eval mode inside, each module's own mode restored after (when no other thread is still inside for
    ``model``). Flips only the modules that are training: ``model.eval()`` then ``model.train()`` walk every
    module twice through ``Module.train``, which cost about 1.5 ms of a 40 ms CPU forecast of the default model."""
    with _EVAL_LOCK:
        entry = _EVAL_USERS.get(model)
        if entry is None:
            training = [m for m in model.modules() if m.training]
            for m in training:
                m.training = False
            entry = _EVAL_USERS[model] = [0, training]
        entry[0] += 1
    try:
        yield model
    finally:
        with _EVAL_LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                _EVAL_USERS.pop(model, None)
                for m in entry[1]:
                    m.training = True


def resolve_batch_tokens(model, max_batch_tokens):
    """``max_batch_tokens`` with "auto" replaced by the size for the model's device."""
    if isinstance(max_batch_tokens, str) and max_batch_tokens == "auto":
        cpu = next(model.parameters()).device.type == "cpu"
        return CPU_MAX_BATCH_TOKENS if cpu else DEFAULT_MAX_BATCH_TOKENS
    return max_batch_tokens


def prepare_inputs(model, context, horizon, attention_mask, max_batch_tokens):
    """Check the inputs and move them to the model: x [B, S, C] in the model's dtype (padding zeroed),
    valid [B, S] bool or None, and the horizon as a Python int (a numpy integer is fine too, and a CUDA
    graph is keyed on it). Raises ValueError/TypeError naming the problem."""
    _check_inputs(model, context, horizon, attention_mask)
    integer = isinstance(max_batch_tokens, (int, np.integer)) and not isinstance(max_batch_tokens, bool)
    if max_batch_tokens is not None and (not integer or max_batch_tokens < 1):
        raise ValueError(f"max_batch_tokens must be a positive integer, None or 'auto', got {max_batch_tokens!r}")
    param = next(model.parameters())
    x = context.to(device=param.device, dtype=param.dtype, copy=True)
    x = x.unsqueeze(-1) if context.dim() == 2 else x  # [B, S, C]
    valid = None
    if attention_mask is not None:
        valid = attention_mask.to(device=param.device).bool()
        # Padding goes on the left: the forecast continues the last position, which right padding (or a
        # hole inside a row) would make a padded one, giving another forecast without an error. Both checks
        # come back from the GPU in one transfer.
        left_only = (valid.int().cummax(dim=1).values.bool() == valid).all()
        has_real, left_only = torch.stack([valid.any(dim=1).all(), left_only]).tolist()
        if not has_real:
            raise ValueError("every row of attention_mask needs at least one real (1) position")
        if not left_only:
            raise ValueError(
                "attention_mask must pad on the left only: in each row, zeros before the first 1 and only 1s "
                "after it (for gaps inside a series, fill them first)"
            )
        x = x.masked_fill(~valid[..., None], 0.0)
    check = x if valid is None else x[valid]
    if not bool(torch.isfinite(check).all()):
        given = context.to(param.device)
        given = given.unsqueeze(-1) if context.dim() == 2 else given  # [B, S, C]
        unmasked = torch.ones(given.shape[:2], dtype=torch.bool, device=given.device) if valid is None else valid
        if bool(torch.isfinite(given[unmasked]).all()):  # finite as given: the cast to the model's dtype overflowed
            peak = given[unmasked].abs().max().item()
            raise ValueError(
                f"context values up to {peak:.3g} overflow the model's dtype {param.dtype} "
                f"(largest finite value {torch.finfo(param.dtype).max:.3g}); scale them first (the model reads "
                "standardised values) or use a float32 model"
            )
        # Which rows: the message named none, so a batch of many series left the caller to search for it.
        bad = ((~torch.isfinite(given)).any(dim=-1) & unmasked).any(dim=1).nonzero().flatten().tolist()
        rows = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(
            f"context holds NaN or inf at unmasked positions (row{'s' if len(bad) > 1 else ''} {rows}); "
            "mask them or fill them first"
        )
    x, valid = _within_position_limit(model, x, valid)  # after the check above, which reads the whole context
    return x, valid, int(horizon)


def _within_position_limit(model, x: torch.Tensor, valid: torch.Tensor | None):
    """``x`` and ``valid`` without the columns that pad every row, refused if the longest row still exceeds the
    model's position limit. A batch padded wider than the limit was refused although every row fitted;
    dropping shared padding changes no forecast (rotary attention sees only distances between points)."""
    limit = model.config.max_position_embeddings
    width = x.shape[1]
    if width <= limit:
        return x, valid
    if valid is not None:
        first = int(valid.any(dim=0).int().argmax())  # the first column any row uses
        x, valid, width = x[:, first:], valid[:, first:], width - first
    if width > limit:
        raise ValueError(f"context length {width} exceeds the model's limit of {limit} points; keep the last {limit}")
    return x, valid


def finish_output(out: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """[B, horizon, C] in the model's dtype -> float32 on the context's device, [B, horizon] if 2-D."""
    result = out.float().to(context.device)
    return result.squeeze(-1) if context.dim() == 2 else result


def run_forecast(model, x: torch.Tensor, valid: torch.Tensor | None, horizon: int, max_batch_tokens) -> torch.Tensor:
    """The forecast proper on prepared inputs (no host sync: ``cuda_graphs`` captures it whole)."""
    steps = head_schedule(model.config.horizon_lengths, horizon)
    cached = x.shape[1] + sum(kept for _, kept in steps[:-1])
    cache_budget = cache_positions_per_pass(model, x.dtype, max_batch_tokens)
    parts = [
        _forecast_rows(model, x[a:z], None if valid is None else valid[a:z], steps, max_batch_tokens)
        for a, z in chunk_rows(x.shape[0], cached, cache_budget)
    ]
    return torch.cat(parts)  # [B, horizon, C]


def _forecast_rows(model: TimeMoEForPrediction, x: torch.Tensor, valid: torch.Tensor | None, steps, max_batch_tokens):
    """Prefill (in chunks of rows) and decode steps for one pass: x [B, S, C] -> [B, horizon, C]."""
    config = model.config
    b, s, c = x.shape
    device = x.device
    fed_back = sum(kept for _, kept in steps[:-1])
    cache = KVCache(
        config.num_hidden_layers, b, config.num_key_value_heads, s + fed_back, config.head_dim, x.dtype, device
    )
    if valid is None:
        positions = torch.arange(s, device=device).expand(b, s)
        # No padding: one mask row for the whole batch ([1, K], broadcast by the kernels).
        key_valid = torch.ones(1, s, dtype=torch.bool, device=device)
    else:
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)  # first real point is position 0
        key_valid = valid

    # Only the last position's hidden state feeds a head: the last layer skips the others' queries/FFN.
    hidden = []
    for a, z in chunk_rows(b, s, max_batch_tokens):
        rows_valid = None if valid is None else valid[a:z]
        mask = build_attention_mask(rows_valid, None, s, key_valid=rows_valid)
        h, _ = model.model(x[a:z], positions[a:z], mask, cache.rows(a, z), last_only=True)  # [b, 1, H]
        hidden.append(h)
    hidden = torch.cat(hidden)  # [B, 1, H]
    cache.advance(s)
    outputs = []
    for step, (head_idx, kept) in enumerate(steps):
        out = model.lm_heads[head_idx](hidden[:, -1])  # heads only at the last position, [B, L*C]
        new = out[:, : kept * c].reshape(b, kept, c)  # [B, kept, C]
        outputs.append(new)
        if step == len(steps) - 1:
            break
        positions = positions[:, -1:] + torch.arange(1, kept + 1, device=device)  # [B, kept]
        key_valid = torch.cat([key_valid, key_valid.new_ones(key_valid.shape[0], kept)], dim=1)
        step_mask = build_attention_mask(None, None, kept, key_valid=key_valid)
        hidden, _ = model.model(new, positions, step_mask, cache, last_only=True)  # [B, 1, H]
        cache.advance(kept)
    return torch.cat(outputs, dim=1)
