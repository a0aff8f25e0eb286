"""Time-MoE: decoder-only transformer over point-wise tokens with multi-resolution forecast heads.

Shape legend: B batch, S sequence, H hidden, C input channels (input_size), L horizon length,
E experts, T tokens (B·S).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TimeMoEConfig
from .attention import (
    FLEX_MIN_HEAD_DIM,
    Attention,
    AttentionMask,
    KVCacheLike,
    ModelKVCacheLike,
    RotaryEmbedding,
    flex_block_mask,
)
from .layers import InputEmbedding, OutputHead, RMSNorm
from .moe import build_ffn, load_balancing_loss

HUBER_DELTA = 2.0  # paper section 3.2


# Forecasting runs the prefill on at most this many context points (rows x context) at a time, and
# caches at most 8 times as many positions per pass (forecast.CACHE_CHUNKS) and at most 2^18 bytes of keys
# and values per point (forecast.CACHE_BYTES_PER_TOKEN): memory stays bounded whatever the batch and the model
# size, while each chunk still fills a GPU.
DEFAULT_MAX_BATCH_TOKENS = 2**16
# On a CPU, where a chunk of this size is plenty: 64 series of the embedded default's 3,072-point context
# (horizon 96) forecast in 23.9 s with a peak RSS of 0.65 GiB instead of 29.3 s and 2.75 GiB, and from 512 points
# in 2.04 s instead of 2.61 (two cores, session 33: benchmarks/results/raw/session33/cpu_batch_tokens.py).
CPU_MAX_BATCH_TOKENS = 2**12


@dataclass
class TimeMoEOutput:
    loss: torch.Tensor | None = None
    ar_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    predictions: torch.Tensor | None = None  # first head, [B, S, L0 * C]
    hidden_states: torch.Tensor | None = None  # final-norm output, [B, S, H]
    router_logits: list[torch.Tensor] | None = None


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, config: TimeMoEConfig, layer_idx: int, attn_backend: str, moe_dispatch: str) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx, attn_backend)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn_layer = build_ffn(config, moe_dispatch)

    def forward(self, x, rope, mask: AttentionMask, cache: KVCacheLike | None = None, last_only: bool = False):
        attn_out = self.self_attn(self.input_layernorm(x), rope, mask, cache, last_only)
        x = (x[:, -1:] if last_only else x) + attn_out
        ffn_out, router_logits = self.ffn_layer(self.post_attention_layernorm(x))
        return x + ffn_out, router_logits


def build_attention_mask(
    valid: torch.Tensor | None,
    seq_ids: torch.Tensor | None,
    num_queries: int,
    key_valid: torch.Tensor | None = None,
    for_varlen: bool = False,
    for_flex: bool = False,
) -> AttentionMask:
    """Combine causality, padding and packing into one mask shared by all layers.

    valid [B, S]: real tokens of this forward. seq_ids [B, S]: document id of each token in packed
    rows (attention never crosses documents). key_valid [B, K]: validity of every key when a KV cache
    holds earlier tokens (the last S keys are this forward's). Returns dense=None for plain causal rows.
    ``for_varlen``/``for_flex``: also the packed form that kernel reads (flex: on CUDA, without a cache);
    the dense mask is then built only if a fallback reads it.
    """
    if valid is None and seq_ids is None and key_valid is None:
        return AttentionMask()
    device = (valid if valid is not None else seq_ids if seq_ids is not None else key_valid).device
    s = num_queries
    if key_valid is None:
        key_valid = valid if valid is not None else torch.ones_like(seq_ids, dtype=torch.bool)
    k = key_valid.shape[1]
    if seq_ids is not None and k != s:
        raise ValueError("packed rows (seq_ids) cannot be combined with a KV cache")

    def dense() -> torch.Tensor:
        query_pos = torch.arange(k - s, k, device=device)
        causal = query_pos[:, None] >= torch.arange(k, device=device)[None, :]  # [S, K]
        allowed = causal[None] & key_valid[:, None, :].bool()  # [B, S, K]
        if seq_ids is not None:
            allowed = allowed & (seq_ids[:, :, None] == seq_ids[:, None, :])
        # A query with nothing to attend to (padding) would give NaN; let it see itself. Real tokens
        # never attend to padding, so this changes no output that is used.
        itself = query_pos[:, None] == torch.arange(k, device=device)[None, :]  # [S, K]
        return (allowed | itself[None])[:, None]  # [B, 1, S, K]

    cu_seqlens, max_seqlen = None, 0
    if for_flex and k == s and device.type == "cuda":
        return AttentionMask(dense=dense, valid=valid, block_mask=flex_block_mask(seq_ids, valid, s))
    if seq_ids is not None and for_varlen:
        cu_seqlens, max_seqlen = _cu_seqlens(seq_ids)
        # Built lazily: the varlen kernels never read it, only their fallbacks (CPU, a KV cache).
        return AttentionMask(dense=dense, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, valid=valid)
    return AttentionMask(dense=dense(), valid=valid)


def _cu_seqlens(seq_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Boundaries of documents in the flattened [B*S] token stream (a new row starts a new one)."""
    b, s = seq_ids.shape
    starts = torch.ones_like(seq_ids, dtype=torch.bool)
    starts[:, 1:] = seq_ids[:, 1:] != seq_ids[:, :-1]
    idx = torch.nonzero(starts.reshape(-1)).reshape(-1)
    cu = torch.cat([idx, torch.tensor([b * s], device=seq_ids.device)]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def positions_from_seq_ids(seq_ids: torch.Tensor) -> torch.Tensor:
    """Position of each token inside its document: 0, 1, … restarting at every boundary."""
    b, s = seq_ids.shape
    idx = torch.arange(s, device=seq_ids.device).expand(b, s)
    starts = torch.ones_like(seq_ids, dtype=torch.bool)
    starts[:, 1:] = seq_ids[:, 1:] != seq_ids[:, :-1]
    start_idx = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), dim=1).values
    return idx - start_idx


class TimeMoEModel(nn.Module):
    """Embedding, decoder layers and final norm: values [B, S, C] -> hidden states [B, S, H]."""

    def __init__(self, config: TimeMoEConfig, attn_backend: str = "sdpa", moe_dispatch: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.embed_layer = InputEmbedding(config.input_size, config.hidden_size, config.hidden_act)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, attn_backend, moe_dispatch) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)

    def forward(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor,
        mask: AttentionMask,
        cache: ModelKVCacheLike | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``last_only``: the hidden state of the last position alone ([B, 1, H]), as forecasting needs.
        Every layer but the last still runs on all positions (the next layer's keys need them); the last
        computes keys and values for all positions but its queries and FFN for the last one only."""
        hidden = self.embed_layer(x)  # [B, S, H]
        rope = self.rotary(position_ids, hidden.dtype)
        router_logits = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else cache.layer(i)
            hidden, logits = layer(hidden, rope, mask, layer_cache, last_only and i == last)
            if logits is not None:
                router_logits.append(logits)
        return self.norm(hidden), router_logits


def check_series_shape(tensor: torch.Tensor, input_size: int, name: str) -> None:
    """``tensor`` shaped [batch, length] (one channel) or [batch, length, input_size], else a ValueError."""
    if (
        tensor.dim() not in (2, 3)
        or (tensor.dim() == 3 and tensor.shape[-1] != input_size)
        or (tensor.dim() == 2 and input_size != 1)
    ):
        expected = "[batch, length]" if input_size == 1 else f"[batch, length, {input_size}]"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(tensor.shape)}")


class TimeMoEForPrediction(nn.Module):
    """Time-MoE with one linear forecast head per horizon length.

    ``attn_backend``: "sdpa" (default), "eager", "varlen", "flex" or "flash_attn".
    ``moe_dispatch``: "auto" (fused Triton kernels on CUDA in bf16/fp16 for inference, and for training when
    the experts are at most ``fused_moe.TRAIN_MAX_EXPERT_SIZE`` wide; else the grouped GEMM where it runs, else
    the loop), "fused" (the Triton kernels whatever the width: faster for base's experts, slower for large's,
    docs/performance.md), "grouped" or "loop".
    """

    def __init__(self, config: TimeMoEConfig, attn_backend: str = "sdpa", moe_dispatch: str = "auto") -> None:
        super().__init__()
        # Checked again: a config edited after construction (config.hidden_size = 100) skipped the checks.
        config.__post_init__()
        if not config.use_dense and config.num_experts_per_tok > config.num_experts:
            # Checked here, not in the config: the official defaults (1 expert, top-2) must still read.
            raise ValueError(
                f"TimeMoEConfig.num_experts_per_tok ({config.num_experts_per_tok}) must be at most num_experts "
                f"({config.num_experts}) to build a model"
            )
        self.config = config
        self.model = TimeMoEModel(config, attn_backend, moe_dispatch)
        self.lm_heads = nn.ModuleList(
            OutputHead(config.hidden_size, h, config.input_size) for h in config.horizon_lengths
        )
        # Built on the meta device (a checkpoint about to fill them), the weights hold no values to draw: meta's
        # normal_ only imported dynamo on the first forecast's load.
        if not next(self.parameters()).is_meta:
            self.reset_parameters()

    # Set-up ----------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, initializer_range) weights, zero biases, unit norms (as the official init)."""
        self._own_weights()
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
        for name, param in self.named_parameters():
            if name.endswith(("_EGH", "_EHF")):
                param.normal_(0.0, std)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``; a model over the checkpoint cache's tensors (``loading.load_model``, an
        estimator's ``model_``) first takes tensors of its own, so the copy reaches no other model."""
        if not assign:
            self._own_weights()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _own_weights(self) -> None:
        if next(self.parameters()).is_meta:
            return
        from ..loading import release_shared_weights  # loading imports this module

        release_shared_weights(self)

    @property
    def attn_backend(self) -> str:
        return self.model.layers[0].self_attn.backend

    def set_attn_backend(self, name: str) -> None:
        from .attention import check_backend

        for layer in self.model.layers:
            layer.self_attn.backend = check_backend(name)

    def set_moe_dispatch(self, name: str) -> None:
        from .moe import DISPATCH_MODES

        if name not in DISPATCH_MODES:
            raise ValueError(f"unknown MoE dispatch {name!r}; choose one of {DISPATCH_MODES}")
        for layer in self.model.layers:
            if hasattr(layer.ffn_layer, "dispatch"):
                layer.ffn_layer.dispatch = name

    def num_parameters(self, activated: bool = False) -> int:
        """All parameters, or only those one token uses (top-k of the routed experts)."""
        total = sum(p.numel() for p in self.parameters())
        if not activated or self.config.use_dense:
            return total
        c = self.config
        per_expert = 3 * c.hidden_size * c.expert_size
        return total - c.num_hidden_layers * (c.num_experts - c.num_experts_per_tok) * per_expert

    # Forward -----------------------------------------------------------------------------------
    def forward(
        self,
        inputs: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        seq_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        loss_normalizers: list[torch.Tensor] | None = None,
    ) -> TimeMoEOutput:
        """Run the network; with ``labels`` also the training loss.

        inputs [B, S] or [B, S, C]; attention_mask [B, S] (1 = real, 0 = padding); seq_ids [B, S]
        document ids of packed rows; labels [B, S(, C)] where labels[:, t] is the value after
        inputs[:, t]; loss_mask [B, S] weights labels. ``loss_normalizers`` (one per head) replaces
        the local count of valid points, so that data-parallel ranks and accumulation steps add up to
        one big batch.
        """
        self._check_forward_inputs(inputs, attention_mask, seq_ids, labels, loss_mask)
        x = inputs if inputs.dim() == 3 else inputs.unsqueeze(-1)  # [B, S, C]
        valid = attention_mask.bool() if attention_mask is not None else None
        if valid is not None:
            x = x.masked_fill(~valid[..., None], 0.0)  # padding may hold NaN
        if position_ids is None:
            position_ids = self._default_positions(x, valid, seq_ids)
        backend = self.attn_backend
        for_varlen = backend in ("varlen", "flash_attn")
        # The flex kernel takes heads of at least FLEX_MIN_HEAD_DIM; narrower ones fall back to SDPA, so
        # their block mask is not built at all.
        for_flex = backend == "flex" and self.config.head_dim >= FLEX_MIN_HEAD_DIM
        mask = build_attention_mask(valid, seq_ids, x.shape[1], for_varlen=for_varlen, for_flex=for_flex)
        hidden, router_logits = self.model(x, position_ids, mask)
        out = TimeMoEOutput(hidden_states=hidden, router_logits=router_logits)
        if labels is None:
            out.predictions = self.lm_heads[0](hidden)
            return out
        per_head = [head(hidden) for head in self.lm_heads]
        out.predictions = per_head[0]
        out.ar_loss = multi_horizon_loss(per_head, labels, loss_mask, seq_ids, loss_normalizers, attention_mask)
        out.loss = out.ar_loss
        if self.config.apply_aux_loss and router_logits:
            # Router statistics pool over real tokens only (padding excluded), as the reference does.
            out.aux_loss = load_balancing_loss(
                router_logits, self.config.num_experts_per_tok, self.config.num_experts, attention_mask
            )
            out.loss = out.ar_loss + self.config.router_aux_loss_factor * out.aux_loss
        return out

    def _check_forward_inputs(self, inputs, attention_mask, seq_ids, labels, loss_mask) -> None:
        """Shapes and dtype, named (forecast() has its own checks). These failed deep inside torch: a float64
        batch from numpy as "expected m1 and m2 to have the same dtype", labels one point short as an invalid
        reshape of the predictions. Shape checks only, no data read: no device sync, and under torch.compile
        they are guards."""
        c = self.config.input_size
        if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
            raise TypeError(f"inputs must be a floating-point tensor, got {getattr(inputs, 'dtype', type(inputs))}")
        check_series_shape(inputs, c, "inputs")
        weight = self.lm_heads[0].out_layer.weight
        device_type = inputs.device.type
        autocast = torch.is_autocast_enabled(device_type)  # which casts float32 (and its own dtype), not float64
        if inputs.dtype != weight.dtype and not (
            autocast and inputs.dtype in (torch.float32, torch.get_autocast_dtype(device_type))
        ):
            raise TypeError(
                f"inputs are {inputs.dtype} but the model's weights are {weight.dtype}: pass "
                f"inputs.to({weight.dtype}) (forecast() casts for you), or run under torch.autocast"
            )
        rows = tuple(inputs.shape[:2])
        for name, tensor in (("attention_mask", attention_mask), ("seq_ids", seq_ids), ("loss_mask", loss_mask)):
            if tensor is not None and tuple(tensor.shape[:2]) != rows:
                raise ValueError(f"{name} must have shape {rows} like inputs' first two, got {tuple(tensor.shape)}")
        if labels is not None and tuple(labels.shape) not in (tuple(inputs.shape), rows + (c,), rows + (c,)[: c - 1]):
            raise ValueError(
                f"labels must have the shape of inputs {tuple(inputs.shape)} (labels[:, t] follows inputs[:, t]), "
                f"got {tuple(labels.shape)}"
            )

    @staticmethod
    def _default_positions(x, valid, seq_ids) -> torch.Tensor:
        if seq_ids is not None:
            return positions_from_seq_ids(seq_ids)
        b, s = x.shape[:2]
        if valid is None:
            return torch.arange(s, device=x.device).expand(b, s)
        # Left padding: the first real token is position 0, as if the row stood alone.
        return (valid.long().cumsum(-1) - 1).clamp(min=0)

    # Forecasting and checkpoints (thin wrappers: the work lives outside model/) -----------------
    @torch.no_grad()
    def forecast(
        self,
        context: torch.Tensor,
        horizon: int,
        attention_mask: torch.Tensor | None = None,
        max_batch_tokens: int | None | str = "auto",
    ) -> torch.Tensor:
        """Autoregressive forecast of ``horizon`` points after ``context`` [B, S] (or [B, S, C]).

        Values are used as given: scale them first (the model was trained on standardised values; from about 1e10
        in float32 the squares inside its RMSNorms overflow and the forecasts, still finite, stop depending on the
        input; in float16 already from a few thousand). Returns [B, horizon] (or
        [B, horizon, C]).
        ``max_batch_tokens``: see :func:`timemoe_forecaster.forecast.forecast`.
        """
        from ..forecast import forecast

        return forecast(self, context, horizon, attention_mask=attention_mask, max_batch_tokens=max_batch_tokens)

    @classmethod
    def from_pretrained(cls, path_or_hub_id, dtype=None, device=None, **kwargs) -> TimeMoEForPrediction:
        """Load a checkpoint in the official layout (``config.json`` + safetensors, or ``.bin`` read with
        ``weights_only=True``); no code from it ever runs. Returns the model in eval mode.

        ``path_or_hub_id``: a local directory, a hub id (``"owner/name"``, fetched through huggingface_hub)
        or None for the embedded default checkpoint. ``dtype``: None for float32, ``"auto"`` for the dtype
        the weights are stored in (the embedded default: bfloat16), or a float dtype or its name. ``device``:
        None for the CPU, or a device such as ``"cuda"``. Other keywords: ``revision``, the hub options
        (``subfolder``, ``cache_dir``, ``token``, ``local_files_only``, ``force_download``) and the model's
        own ``attn_backend`` and ``moe_dispatch``.
        """
        from ..checkpoint import load_pretrained

        return load_pretrained(path_or_hub_id, dtype=dtype, device=device, model_cls=cls, **kwargs)

    def save_pretrained(self, directory, max_shard_size: int | str | None = None, dtype=None) -> None:
        """Write ``config.json`` and safetensors weights that the official loader reads too. ``max_shard_size``
        (bytes, or a string such as ``"2GB"``) splits the weights into shards with an index; ``dtype`` casts
        them (None keeps the model's). Only a previous save's own files in ``directory`` are replaced."""
        from ..checkpoint import save_pretrained

        save_pretrained(self, directory, max_shard_size=max_shard_size, dtype=dtype)


def horizon_targets(labels: torch.Tensor, horizon: int) -> torch.Tensor:
    """Targets of an L-step head at every position: out[b, t, j] = labels[b, t + j] (0 past the end).

    labels [B, S, C] -> [B, S, L, C]
    """
    s = labels.shape[1]
    padded = F.pad(labels, (0, 0, 0, horizon - 1))  # [B, S + L - 1, C]
    # A gather, not an unfold: an overlapping window view saved for the backward pass keeps a compiled
    # training step's backward graph out of CUDA graphs ("complex memory overlap").
    idx = torch.arange(s, device=labels.device)[:, None] + torch.arange(horizon, device=labels.device)  # [S, L]
    return padded[:, idx]  # [B, S, L, C]


def multi_horizon_loss(
    per_head: list[torch.Tensor],
    labels: torch.Tensor,
    loss_mask: torch.Tensor | None,
    seq_ids: torch.Tensor | None = None,
    normalizers: list[torch.Tensor] | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Huber loss (delta 2) of every head over its next L points, averaged over heads (paper eq. 9).

    As in the official code, points past the end of a row are compared with zero unless a loss mask
    excludes them; with packed rows (seq_ids) a target outside the token's own document never counts.
    A padded position (attention_mask 0) predicts nothing: with left padding its longer heads would
    otherwise be scored on the first real points. A padded label is a zero past the end of the row (right padding
    scores as no padding). Labels under weight 0 or padding may hold NaN.
    """
    labels = labels if labels.dim() == 3 else labels.unsqueeze(-1)  # [B, S, C]
    if attention_mask is not None:
        # A padded label is a point past the end of its row, compared with zero as those are: right padding then
        # scores a row as left padding or no padding does (its NaN made the loss NaN).
        labels = torch.where(attention_mask.bool()[..., None], labels, 0.0)
    b, s, c = labels.shape
    total = labels.new_zeros(())
    for i, pred in enumerate(per_head):
        horizon = pred.shape[-1] // c
        pred_BSLC = pred.view(b, s, horizon, c)
        # float32 targets: cast to the predictions' dtype (bf16 under autocast) they were rounded to 8 bits.
        target_BSLC = horizon_targets(labels.float(), horizon)
        weight = _target_weights((b, s, horizon, c), loss_mask, seq_ids, attention_mask)
        if weight is not None:
            # Targets under weight 0 are zeroed, not only their losses: the Huber gradient at a NaN target is
            # NaN, and 0 x NaN stays NaN in the backward pass.
            target_BSLC = torch.where(weight > 0, target_BSLC, 0.0)
        losses = F.huber_loss(pred_BSLC.float(), target_BSLC, reduction="none", delta=HUBER_DELTA)
        if weight is None:
            # A fill, not a host-to-device copy, so the loss can be recorded in a CUDA graph.
            denom = losses.new_full((), float(losses.numel()))
            head_sum = losses.sum()
        else:
            head_sum = (losses * weight).sum()
            denom = weight.expand_as(losses).sum()  # a 2-D loss mask weighs every channel (count_loss_points too)
        if normalizers is not None:
            denom = normalizers[i]
        total = total + head_sum / denom.clamp(min=1e-12)
    return total / len(per_head)


def count_loss_points(
    horizon_lengths: list[int],
    labels: torch.Tensor,
    loss_mask: torch.Tensor | None,
    seq_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Per head, the number of (weighted) points :func:`multi_horizon_loss` averages over."""
    labels = labels if labels.dim() == 3 else labels.unsqueeze(-1)
    b, s, c = labels.shape
    counts = []
    for horizon in horizon_lengths:
        weight = _target_weights((b, s, horizon, c), loss_mask, seq_ids, attention_mask)
        full = (b, s, horizon, c)  # a 2-D loss mask weighs every channel of a target alike
        counts.append(
            weight.expand(full).sum() if weight is not None else labels.new_full((), float(b * s * horizon * c))
        )
    return counts


def _target_weights(shape_BSLC, loss_mask, seq_ids, attention_mask) -> torch.Tensor | None:
    """The weight [B, S, L, C] of each head target in the loss (None: all count), for the loss and its count:
    the loss mask at the target, whether the target lies in the position's own packed document, and whether
    the position itself is real (not padding)."""
    b, s, horizon, c = shape_BSLC
    weight = None
    if loss_mask is not None:
        m = loss_mask if loss_mask.dim() == 3 else loss_mask.unsqueeze(-1)
        weight = horizon_targets(m.float(), horizon)  # [B, S, L, C]
    if seq_ids is not None:
        same = horizon_targets(seq_ids.unsqueeze(-1).double(), horizon) == seq_ids[:, :, None, None].double()
        # Past the row's end horizon_targets pads with 0, which reads as "document 0": those targets counted as
        # the first document's own, so the loss changed with how the documents were numbered.
        steps = torch.arange(s, device=seq_ids.device)[:, None] + torch.arange(horizon, device=seq_ids.device)
        inside = (steps < s)[None, :, :, None]  # [1, S, L, 1]
        same = (same & inside).float().expand(b, s, horizon, c)
        weight = same if weight is None else weight * same
    if attention_mask is not None:
        source = attention_mask.float()[:, :, None, None].expand(b, s, horizon, c)
        weight = source if weight is None else weight * source
    return weight


def model_flops_per_token(config: TimeMoEConfig, seq_len: int, training: bool = True) -> float:
    """Matmul FLOPs per token (activated parameters + causal attention), x3 for training."""
    h, layers = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * config.head_dim
    attn_proj = 2 * h * (2 * h + 2 * kv)
    attn_scores = 2 * 2 * h * seq_len / 2  # QK^T and PV, causal halves the work on average
    if config.use_dense:
        ffn = 2 * 3 * h * config.intermediate_size
    else:
        ffn = 2 * 3 * h * (config.expert_size * config.num_experts_per_tok + config.intermediate_size)
        ffn += 2 * h * (config.num_experts + 1)
    heads = 2 * h * config.input_size * sum(config.horizon_lengths)
    fwd = layers * (attn_proj + attn_scores + ffn) + heads + 4 * h * config.input_size
    return fwd * (3 if training else 1)


__all__ = [
    "TimeMoEForPrediction",
    "TimeMoEModel",
    "TimeMoEOutput",
    "multi_horizon_loss",
    "count_loss_points",
    "model_flops_per_token",
]
