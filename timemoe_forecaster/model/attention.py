"""Self-attention with rotary positions and interchangeable kernels.

Backends are plain functions with one signature, picked by name when the model is built:
``eager`` is the reference math, ``sdpa`` uses PyTorch's fused kernels (flash/cuDNN/efficient),
``flash_attn`` the flash-attn package when it imports, ``varlen`` PyTorch's variable-length flash
kernel for packed rows, ``flex`` FlexAttention with a block-sparse document mask (static shapes, so
a whole compiled training step can be replayed as a CUDA graph). Every backend honours padding and
packing masks.

Shape legend: B batch, S queries, K keys (cache included), N query heads, G key/value heads,
D head dim, T packed tokens.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TimeMoEConfig
from .layers import RotaryEmbedding, apply_rotary


class AttentionMask:
    """Which keys each query may see, built once per forward and shared by all layers.

    ``dense`` is a boolean [B, 1, S, K] (True = attend) or None for plain causal attention over a
    row with no padding and no cache. It is built on first use only: the varlen kernels read just
    ``cu_seqlens``/``max_seqlen`` (packed documents, flattened over the batch), the flex kernel its
    ``block_mask``, and a dense mask of a packed 32 x 4096 batch would be 0.5 GB filled every step for
    nothing. ``valid`` marks real
    (non-padding) tokens [B, S]. ``causal=False`` (with no dense mask) lets every query see every key:
    the mask of a last query alone, which comes after all keys.
    """

    def __init__(
        self,
        dense: torch.Tensor | Callable[[], torch.Tensor] | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int = 0,
        valid: torch.Tensor | None = None,
        causal: bool = True,
        block_mask=None,
    ) -> None:
        self._dense = dense
        self.cu_seqlens, self.max_seqlen, self.valid = cu_seqlens, max_seqlen, valid
        self.causal = causal
        self.block_mask = block_mask  # FlexAttention's BlockMask (flex backend on CUDA only)

    @property
    def dense(self) -> torch.Tensor | None:
        if callable(self._dense):
            self._dense = self._dense()
        return self._dense

    @property
    def is_plain_causal(self) -> bool:
        return self._dense is None

    def last_query(self) -> AttentionMask:
        """The mask of the last query only: what it may see of all keys ([B, 1, 1, K] or nothing)."""
        if self.is_plain_causal:
            return AttentionMask(causal=False)
        return AttentionMask(dense=self.dense[:, :, -1:, :])


class KVCacheLike(Protocol):
    """One layer's cache: store this forward's keys/values, return all of them so far ([B, G, K, D])."""

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class ModelKVCacheLike(Protocol):
    """The caches of all layers. Each layer receives its own, so the layer index never reaches the
    traced code (``torch.compile`` would otherwise specialise every block on it)."""

    def layer(self, idx: int) -> KVCacheLike: ...


def _expand_kv(k: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Repeat key/value heads for grouped-query attention: [B, G, K, D] -> [B, N, K, D]."""
    repeats = num_heads // k.shape[1]
    return k if repeats == 1 else k.repeat_interleave(repeats, dim=1)


def eager_attention(q, k, v, mask: AttentionMask, dropout: float, training: bool) -> torch.Tensor:
    """Reference math: softmax(q k^T / sqrt(D)) v, softmax in fp32. q [B,N,S,D] -> [B,N,S,D]."""
    k, v = _expand_kv(k, q.shape[1]), _expand_kv(v, q.shape[1])
    scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(q.shape[-1])  # [B, N, S, K]
    allowed = mask.dense
    if mask.is_plain_causal:
        allowed = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device)
        allowed = allowed.tril() if mask.causal else allowed
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    probs = F.dropout(probs, p=dropout, training=training)
    return torch.matmul(probs, v)  # [B, N, S, D]


def sdpa_attention(q, k, v, mask: AttentionMask, dropout: float, training: bool) -> torch.Tensor:
    """PyTorch's fused kernels; plain causal rows take the flash/cuDNN path."""
    k, v = _expand_kv(k, q.shape[1]), _expand_kv(v, q.shape[1])
    p = dropout if training else 0.0
    if mask.is_plain_causal:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=mask.causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense, dropout_p=p)


def _varlen_kernel() -> Callable | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    # The causal flag changed name across torch releases (is_causal in 2.10/2.11, window_size later).
    if "is_causal" in params:
        return lambda q, k, v, cu, m: varlen_attn(q, k, v, cu, cu, m, m, is_causal=True)
    if "window_size" in params:
        return lambda q, k, v, cu, m: varlen_attn(q, k, v, cu, cu, m, m, window_size=(-1, 0))
    return None


# Resolved when the backend is first chosen (``check_backend``), not at import: importing
# torch.nn.attention.varlen pulls in dynamo. Importing this package took 0.99 s after torch with that import and
# takes 0.016 s without it (benchmarks/results/raw/session33/import_cost.py).
_VARLEN: Callable | None = None
_VARLEN_RESOLVED = False


def _varlen() -> Callable | None:
    global _VARLEN, _VARLEN_RESOLVED
    if not _VARLEN_RESOLVED:
        _VARLEN, _VARLEN_RESOLVED = _varlen_kernel(), True
    return _VARLEN


_HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None


def _packed_call(kernel, q, k, v, mask: AttentionMask) -> torch.Tensor:
    """Run a varlen kernel on [B, N, S, D] rows whose documents ``mask.cu_seqlens`` delimits."""
    b, n, s, d = q.shape
    flat = lambda t: t.transpose(1, 2).reshape(b * s, t.shape[1], d)  # noqa: E731  [T, N, D]
    out = kernel(flat(q), flat(k), flat(v), mask.cu_seqlens, mask.max_seqlen)  # [T, N, D]
    return out.reshape(b, s, n, d).transpose(1, 2)  # [B, N, S, D]


def varlen_attention(q, k, v, mask: AttentionMask, dropout: float, training: bool) -> torch.Tensor:
    """Packed rows through PyTorch's variable-length flash kernel (CUDA, no cache); else SDPA."""
    kernel = _varlen()
    usable = kernel is not None and q.is_cuda and mask.cu_seqlens is not None and q.shape[2] == k.shape[2]
    if not usable or (training and dropout > 0):
        return sdpa_attention(q, k, v, mask, dropout, training)
    k, v = _expand_kv(k, q.shape[1]), _expand_kv(v, q.shape[1])
    return _packed_call(kernel, q, k, v, mask)


def flash_attn_attention(q, k, v, mask: AttentionMask, dropout: float, training: bool) -> torch.Tensor:
    """The flash-attn package. Unlike the official flash path, padding and packing are honoured:
    rows with a mask go through ``flash_attn_varlen_func`` on their real tokens only."""
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    p = dropout if training else 0.0
    if mask.is_plain_causal:
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=p, causal=mask.causal)
        return out.transpose(1, 2)
    if mask.cu_seqlens is not None and q.shape[2] == k.shape[2]:
        kernel = lambda q_, k_, v_, cu, m: flash_attn_varlen_func(  # noqa: E731
            q_, k_, v_, cu, cu, m, m, dropout_p=p, causal=True
        )
        return _packed_call(kernel, q, k, v, mask)
    # Left padding and KV-cache steps: the boolean mask is exact and cheap at these sizes.
    return sdpa_attention(q, k, v, mask, dropout, training)


def flex_block_mask(seq_ids: torch.Tensor | None, valid: torch.Tensor | None, length: int, compile: bool = True):
    """FlexAttention's block mask of rows [B, S] (no cache): causal, within one document, real keys only.

    The same rule as the dense mask, including "a query may always see itself", so padding queries
    never meet an empty row. ``compile``: build it with a generated kernel (on GPUs; no [B, S, S] tensor
    is ever materialised); the CPU tests build it eagerly."""
    from torch.nn.attention.flex_attention import create_block_mask

    ref = seq_ids if seq_ids is not None else valid

    def allowed(b, h, q, kv):
        ok = q >= kv
        if seq_ids is not None:
            ok = ok & (seq_ids[b, q] == seq_ids[b, kv])
        if valid is not None:
            ok = ok & valid[b, kv]
        return ok | (q == kv)

    # Under an outer torch.compile the builder is traced with the model, not compiled on its own.
    compile = compile and not torch.compiler.is_compiling()
    return create_block_mask(allowed, ref.shape[0], None, length, length, device=ref.device, _compile=compile)


_COMPILED_FLEX: Callable | None = None
_TORCH_VERSION = tuple(int(part) for part in torch.__version__.split(".")[:2])
FLEX_MIN_HEAD_DIM = 16  # the generated kernel refuses narrower heads (torch 2.11)


def _flex_kernel() -> Callable:
    """flex_attention is only fast compiled; inside an already compiled model the plain function is
    traced into the model's graph instead."""
    global _COMPILED_FLEX
    from torch.nn.attention.flex_attention import flex_attention

    if torch.compiler.is_compiling():
        return flex_attention
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX


# Tile choices for FlexAttention's generated kernels on sm90 (H100/H200), bf16/fp16, by head width, measured
# with torch 2.11 on packed training rows (benchmarks/results/raw/session5/call3_flex_configs.json). Inductor's
# default forward tile for 64-wide heads (128x128, 4 warps, 3 stages) took 1.88 ms per layer of the large preset;
# 8 warps and 2 stages take 0.25 ms. For 32-wide heads a 32x128 backward tile beat the default (1.10 against
# 1.36 ms forward and backward). Other GPUs and widths keep inductor's defaults.
FLEX_SM90_KERNEL_OPTIONS: dict[int, dict[str, int]] = {
    64: dict(fwd_BLOCK_M=128, fwd_BLOCK_N=128, fwd_num_warps=8, fwd_num_stages=2),
    32: dict(bwd_BLOCK_M1=32, bwd_BLOCK_N1=128, bwd_BLOCK_M2=128, bwd_BLOCK_N2=32, bwd_num_warps=4, bwd_num_stages=3),
}


# (device index, head width) -> tiles for that GPU, filled by prepare_flex_tiles outside compiled code: torch.compile
# cannot trace the capability query, but reads this table as a constant.
_FLEX_TILES: dict[tuple[int | None, int], dict[str, int]] = {}
_FLEX_CHECKED: set[int] = set()  # device indices already looked up


def prepare_flex_tiles(device: torch.device | str) -> None:
    """Look up the measured tiles for ``device``'s GPU. The flex backend does this itself when it runs eagerly;
    code that compiles a model calls it first (``compile_blocks``, the trainer), since a compiled model only
    reads the table. Per-pass option names (``fwd_``/``bwd_``) need torch >= 2.11."""
    device = torch.device(device)
    if device.type != "cuda" or _TORCH_VERSION < (2, 11) or not torch.cuda.is_available():
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index in _FLEX_CHECKED:
        return
    _FLEX_CHECKED.add(index)
    if torch.cuda.get_device_capability(index) == (9, 0):
        _FLEX_TILES.update({(index, width): options for width, options in FLEX_SM90_KERNEL_OPTIONS.items()})


def flex_kernel_options(q: torch.Tensor) -> dict[str, int] | None:
    """The measured tiles for ``q``'s GPU and head width, or None for inductor's defaults (fp32, other GPUs,
    widths not measured)."""
    if q.dtype not in (torch.bfloat16, torch.float16):
        return None
    if not torch.compiler.is_compiling() and q.device.index not in _FLEX_CHECKED:  # once per GPU, not per layer
        prepare_flex_tiles(q.device)
    return _FLEX_TILES.get((q.device.index, q.shape[-1]))


def flex_attention_backend(q, k, v, mask: AttentionMask, dropout: float, training: bool) -> torch.Tensor:
    """FlexAttention where the mask carries a block mask (``build_attention_mask(for_flex=True)`` makes one
    for masked rows without a cache, on CUDA); plain causal rows, KV-cache steps, CPUs, attention dropout
    and heads narrower than FLEX_MIN_HEAD_DIM take the SDPA path."""
    if mask.block_mask is None or (training and dropout > 0):
        return sdpa_attention(q, k, v, mask, dropout, training)
    return _flex_kernel()(
        q, k, v, block_mask=mask.block_mask, enable_gqa=k.shape[1] != q.shape[1], kernel_options=flex_kernel_options(q)
    )


ATTENTION_BACKENDS: dict[str, Callable] = {
    "eager": eager_attention,
    "sdpa": sdpa_attention,
    "varlen": varlen_attention,
    "flash_attn": flash_attn_attention,
    "flex": flex_attention_backend,
}


def check_backend(name: str) -> str:
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(ATTENTION_BACKENDS)}")
    if name == "varlen":
        _varlen()  # imported here, outside any compiled region that will call it
    if name == "flash_attn" and not _HAS_FLASH_ATTN:
        raise ValueError("attention backend 'flash_attn' needs the flash-attn package: pip install flash-attn")
    return name


class Attention(nn.Module):
    """Multi-head (grouped-query) self-attention: q/k/v projections with bias, o without.

    q, k and v are one ``nn.Linear`` (``qkv_proj``: q's rows, then k's, then v's); ``checkpoint.py`` maps it
    to and from the official ``q_proj``/``k_proj``/``v_proj`` keys. How it runs depends on autograd, by
    measurement (H200, same runs, ``benchmarks/results/raw/session11/``):

    - without autograd (forecasting) as one GEMM: base h 96 forecasts 1.4% faster than with three;
    - with autograd (training) as three GEMMs on row slices of the weight: base training 1.0-1.6% faster
      than with one (two pairs in one run), large 1.8%. One GEMM's backward needs the three output
      gradients side by side, and the kernel torch.compile generates for that (rotary backward,
      transposes and concatenation fused) took 131 us per layer, where the separate gradients' kernels
      took 9-15 us each.
    """

    def __init__(self, config: TimeMoEConfig, layer_idx: int, backend: str = "sdpa") -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.dropout = config.attention_dropout
        self.backend = check_backend(backend)
        h, kv = config.hidden_size, self.num_kv_heads * self.head_dim
        self.qkv_sizes = (self.num_heads * self.head_dim, kv, kv)
        self.qkv_proj = nn.Linear(h, sum(self.qkv_sizes), bias=True)
        self.o_proj = nn.Linear(h, h, bias=False)

    def _project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k and v of every position: one GEMM without autograd, three with (see the class docstring)."""
        return self._qkv_three_gemms(x) if torch.is_grad_enabled() else self._qkv_one_gemm(x)

    def _qkv_one_gemm(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.qkv_proj(x).split(self.qkv_sizes, dim=-1)

    def _qkv_three_gemms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        weights = self.qkv_proj.weight.split(self.qkv_sizes)
        biases = self.qkv_proj.bias.split(self.qkv_sizes)
        return tuple(F.linear(x, w, b) for w, b in zip(weights, biases, strict=True))

    def _last_q_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q of the last position only, k and v of all: two GEMMs on row slices of ``qkv_proj`` (views)."""
        q_rows = self.qkv_sizes[0]
        weight, bias = self.qkv_proj.weight, self.qkv_proj.bias
        q = F.linear(x[:, -1:], weight[:q_rows], bias[:q_rows])
        k, v = F.linear(x, weight[q_rows:], bias[q_rows:]).split(self.qkv_sizes[1:], dim=-1)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: AttentionMask,
        cache: KVCacheLike | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """x [B, S, H] -> [B, S, H]; with ``last_only`` keys and values still come from (and go to the
        cache for) all S positions, but only the last position queries: [B, 1, H]."""
        b, s, _ = x.shape
        cos, sin = rope
        if last_only:
            s_q, (q, k, v) = 1, self._last_q_kv(x)
        else:
            s_q, (q, k, v) = s, self._project_qkv(x)
        q = q.view(b, s_q, self.num_heads, self.head_dim).transpose(1, 2)  # [B, N, S_q, D]
        k = k.view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, G, S, D]
        v = v.view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, G, S, D]
        q = apply_rotary(q, cos[:, -s_q:], sin[:, -s_q:])
        k = apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)  # [B, G, K, D]
        if last_only:
            mask = mask.last_query()
        out = ATTENTION_BACKENDS[self.backend](q, k, v, mask, self.dropout, self.training)  # [B, N, S_q, D]
        return self.o_proj(out.transpose(1, 2).reshape(b, s_q, -1))  # [B, S_q, H]


__all__ = ["Attention", "AttentionMask", "ATTENTION_BACKENDS", "RotaryEmbedding"]
