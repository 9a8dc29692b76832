"""RCMHA: "Relative Convolutional Multi-Head Attention for Natural Language Modelling"
(Sugiharto, Aradea, Mubarok, 2023).

Two changes to multi-head attention:

1. a depth-wise convolution over the sequence on the query, key and value inputs (one filter of
   width ``kernel_size`` per channel, after the projections as in Primer's multi-dconv-head
   attention, which RCMHA extends): ``Q = DWConv_q(x W_q)``, ``K = DWConv_k(c W_k)``,
   ``V = DWConv_v(c W_v)``; the convolution is causal (left-padded) when the attention is;
2. relative positional encoding in the scores, in the Transformer-XL form
   (Dai et al., 2019), with sinusoids ``R_{i-j}`` of the distance projected by ``W_r`` and two
   learned global biases ``u, w`` per head:

       s_ij = ((Q_i + u) . K_j + (Q_i + w) . W_r R_{i-j}) / sqrt(d),   out = softmax(s) V.

The relative term is computed once per distance (``Lq + Lk - 1`` of them) and gathered, so the
extra memory is ``O(H (Lq + Lk) d)`` plus the ``(Lq, Lk)`` scores. Padded keys are zeroed before
the convolution so they cannot leak into valid positions.

Shapes: ``x (B, Lq, E)``, ``context (B, Lk, E)`` -> ``(B, Lq, E)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared_attention.layers._common import (
    MaskLike,
    check_embed,
    check_input,
    dense_allowed,
    key_valid_from_mask,
    mask_is_causal,
    masked_softmax,
    merge_heads,
    split_heads,
)

__all__ = ["RelativeConvAttention", "sinusoid_table"]


def sinusoid_table(positions: Tensor, dim: int) -> Tensor:
    """Sinusoidal encodings ``(P, dim)`` of (possibly negative) float ``positions (P,)``."""
    half = dim // 2
    freq = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / half
    )
    angles = positions.float()[:, None] * freq[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2:
        table = F.pad(table, (0, 1))
    return table


class DepthwiseConv1d(nn.Module):
    """Per-channel convolution over the sequence of ``(B, L, C)``; causal = left padding only."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size <= 0:
            raise ValueError(f"kernel_size must be a positive int, got {kernel_size!r}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels)

    def forward(self, x: Tensor, causal: bool) -> Tensor:
        pad = self.kernel_size - 1
        left, right = (pad, 0) if causal else (pad // 2, pad - pad // 2)
        return self.conv(F.pad(x.transpose(1, 2), (left, right))).transpose(1, 2)


class RelativeConvAttention(nn.Module):
    """RCMHA (Sugiharto et al., 2023): depth-wise convolved q/k/v + Transformer-XL relative scores.

    Args:
        embed_dim: model width ``E``; ``num_heads`` divides it.
        dropout: dropout on the attention weights in training.
        kernel_size: width of the depth-wise convolutions (3 in Primer / RCMHA).
        causal: always causal (also per call with ``mask=Causal()``, which makes the convolutions
            causal too).
    """

    records_attention_weights = True

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        dropout: float = 0.0,
        kernel_size: int = 3,
        causal: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.head_dim = check_embed(embed_dim, num_heads)
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.scale = self.head_dim**-0.5
        self.causal = causal
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.q_conv = DepthwiseConv1d(embed_dim, kernel_size)
        self.k_conv = DepthwiseConv1d(embed_dim, kernel_size)
        self.v_conv = DepthwiseConv1d(embed_dim, kernel_size)
        self.rel_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.content_bias = nn.Parameter(torch.zeros(num_heads, 1, self.head_dim))
        self.position_bias = nn.Parameter(torch.zeros(num_heads, 1, self.head_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.attention_recorder: Callable[[Tensor], None] | None = None

    def relative_scores(self, q: Tensor, Lk: int) -> Tensor:
        """``(Q_i + w) . W_r R_{i-j}`` as ``(B, H, Lq, Lk)`` for ``q (B, H, Lq, d)``."""
        Lq = q.shape[2]
        distances = torch.arange(Lq + Lk - 1, device=q.device) - (Lk - 1)
        rel = self.rel_proj(sinusoid_table(distances, self.embed_dim).to(q.dtype))
        rel = rel.unflatten(-1, (self.num_heads, self.head_dim)).transpose(0, 1)
        by_distance = (q + self.position_bias) @ rel.transpose(-2, -1).unsqueeze(0)
        index = (
            torch.arange(Lq, device=q.device)[:, None] - torch.arange(Lk, device=q.device)[None, :] + (Lk - 1)
        )
        return by_distance.gather(-1, index.expand(q.shape[0], self.num_heads, Lq, Lk))

    def forward(self, x: Tensor, *, context: Tensor | None = None, mask: MaskLike = None) -> Tensor:
        """``x (B, Lq, E)``, optional ``context (B, Lk, E)`` and mask -> ``(B, Lq, E)``."""
        check_input(x, context, self.embed_dim, type(self).__name__)
        source = x if context is None else context
        B, Lq, Lk = x.shape[0], x.shape[1], source.shape[1]
        causal = self.causal or mask_is_causal(mask)
        key_valid = key_valid_from_mask(mask, B, Lk, x.device)
        if key_valid is not None:
            keep = key_valid.unsqueeze(-1).to(source.dtype)
            source = source * keep
            if context is None:
                x = source
        q = split_heads(self.q_conv(self.q_proj(x), causal), self.num_heads)
        k = split_heads(self.k_conv(self.k_proj(source), causal), self.num_heads)
        v = split_heads(self.v_conv(self.v_proj(source), causal), self.num_heads)
        scores = ((q + self.content_bias) @ k.transpose(-2, -1) + self.relative_scores(q, Lk)) * self.scale
        allowed = dense_allowed(mask, B, self.num_heads, Lq, Lk, x.device, causal=self.causal)
        weights = masked_softmax(scores, allowed)
        if self.attention_recorder is not None:
            self.attention_recorder(weights)
        out = self.dropout(weights) @ v
        return self.out_proj(merge_heads(out))
