"""Building blocks of Time-MoE: norm, rotary positions, SwiGLU token embedding, expert MLP, heads.

Shape legend: B batch, S sequence, H hidden, N heads, D head dim, F MLP width, C input channels,
L horizon length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SILU_NAMES = ("silu", "swish")  # the names of SiLU, which the fused MoE kernels compute

ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,  # transformers' other name for it
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class RMSNorm(nn.Module):
    """Root-mean-square norm; statistics in fp32 so bf16 training keeps its scale."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rotary_angles(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles of ``position_ids`` [B, S]: two [B, S, D] tensors in ``dtype``."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float()
    inv_freq = 1.0 / (theta ** (exponents / head_dim))  # [D/2]
    # Angles in fp32 whatever the model dtype: positions up to 4096 need the mantissa.
    freqs = position_ids.float()[..., None] * inv_freq  # [B, S, D/2]
    angles = torch.cat((freqs, freqs), dim=-1)  # [B, S, D]
    return angles.cos().to(dtype), angles.sin().to(dtype)


# ``rotary_angles`` as an opaque op, for torch.compile only. As plain tensor code, inductor inlined these
# pointwise ops into every layer's rotary kernel, forward and backward, recomputing pow, cos and sin for each
# element of q and k: 1.5 ms of a 37 ms large training step on an H100
# (``benchmarks/results/raw/profiles/session3/profile_train_large_compiled-model.txt``). Behind the op the angles
# are computed once per forward and every layer reads them. Eager code calls the function itself: the op's
# dispatch imported dynamo on the first forecast of a process and cost up to 1 ms of a 36 ms CPU forecast.
rotary_cos_sin = torch.library.custom_op("timemoe::rotary_cos_sin", mutates_args=())(rotary_angles)


@rotary_cos_sin.register_fake
def _(position_ids, head_dim, theta, dtype):
    shape = (*position_ids.shape, head_dim)
    return position_ids.new_empty(shape, dtype=dtype), position_ids.new_empty(shape, dtype=dtype)


class RotaryEmbedding(nn.Module):
    """Non-interleaved RoPE: the first and second halves of each head dim form the rotated pairs.

    The frequencies are recomputed per call (D/2 numbers), so the module holds no buffer that
    meta-device construction or a checkpoint would have to restore.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        angles = rotary_cos_sin if torch.compiler.is_compiling() else rotary_angles
        return angles(position_ids, self.head_dim, float(self.theta), dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, N, S, D] by the angles ``cos``/``sin`` [B, S, D]."""
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, S, D]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)  # [B, N, S, D]
    return x * cos + rotated * sin


class InputEmbedding(nn.Module):
    """Point-wise SwiGLU embedding of each time step (paper eq. 1): act(W_g x) * (W_e x)."""

    def __init__(self, input_size: int, hidden_size: int, hidden_act: str) -> None:
        super().__init__()
        self.emb_layer = nn.Linear(input_size, hidden_size, bias=False)
        self.gate_layer = nn.Linear(input_size, hidden_size, bias=False)
        self.act = ACTIVATIONS[hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.gate_layer(x)) * self.emb_layer(x)  # [B, S, H]


class GatedMLP(nn.Module):
    """SwiGLU feed-forward block: down(act(gate(x)) * up(x)). Used as shared expert and dense FFN."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act = ACTIVATIONS[hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class OutputHead(nn.Module):
    """One forecast head: hidden state -> the next ``horizon_length`` points (of every channel)."""

    def __init__(self, hidden_size: int, horizon_length: int, input_size: int) -> None:
        super().__init__()
        self.horizon_length = horizon_length
        self.out_layer = nn.Linear(hidden_size, input_size * horizon_length, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out_layer(hidden)  # [..., L * C]
