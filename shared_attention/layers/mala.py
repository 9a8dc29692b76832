"""MALA, magnitude-aware linear attention: "Rectifying Magnitude Neglect in Linear Attention"
(Fan, Huang, Ai, He, ICCV 2025; official code qhfan/MALA).

In linear attention the weight ``phi(q_i).phi(k_j) / sum_m phi(q_i).phi(k_m)`` does not change
when ``phi(q_i)`` is scaled: the query's magnitude is lost, while in softmax a larger query gives
a sharper distribution. MALA replaces the division by a scale and an offset,

    w_ij = beta_i * s_ij - gamma_i,     s_ij = c_i phi(q_i).phi(k_j),   c_i = scale / n_i,
    z_i = sum_j s_ij,   beta_i = 1 + 1 / z_i,   gamma_i = z_i / n_i,

over the ``n_i`` keys query ``i`` may see (all valid keys, or ``j <= i`` when causal), so
``sum_j w_ij = beta_i z_i - z_i = 1`` for every query, and scaling ``phi(q_i)`` by ``t`` scales
the spread ``c_i t (phi(q_i).phi(k_j) - mean_m phi(q_i).phi(k_m))`` of the weights around
``1 / n_i``: larger queries give spikier distributions, as in softmax (the weights may be
negative). The output stays linear in ``L``:

    out_i = beta_i c_i N_i - gamma_i * sum_j v_j,   N_i = sum_j phi(q_i).phi(k_j) v_j,

with ``N_i`` and ``z_i / c_i`` the numerator and denominator of ``linear_attention_parts`` (the
same chunked prefix sums, and the Triton kernel on CUDA). ``phi = elu + 1`` and
``scale = d^-1/2`` as in the official code; the official vision blocks' RoPE on the numerator,
LePE convolution and output gate belong to their backbone and are not part of this layer.
``z_i`` is clamped at ``eps`` inside ``beta_i`` only, so rows with keys sum to one exactly and
rows with no key output zero.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from shared_attention.layers._common import (
    MaskLike,
    check_embed,
    check_input,
    dense_allowed,
    merge_heads,
    resolve_prefix_mask,
)
from shared_attention.layers.linear import LinearAttention, linear_attention_parts_auto

__all__ = ["MagnitudeAwareLinearAttention", "mala_weights"]


def mala_weights(
    q_feat: Tensor, k_feat: Tensor, *, scale: float, allowed: Tensor | None = None, eps: float = 1e-6
) -> Tensor:
    """MALA's attention weights ``w (B, H, Lq, Lk)`` (exact, quadratic), each row summing to one.

    Args:
        q_feat: ``phi(q) (B, H, Lq, D)``; k_feat: ``phi(k) (B, H, Lk, D)``.
        scale: the score scale (``d^-1/2`` in the paper's code).
        allowed: bool broadcastable to ``(B, H, Lq, Lk)``; rows with no allowed key are zero.
    """
    raw = q_feat @ k_feat.transpose(-2, -1)
    if allowed is None:
        allowed = torch.ones(raw.shape[-2:], dtype=torch.bool, device=raw.device)
    allowed = allowed.expand_as(raw)
    raw = raw.masked_fill(~allowed, 0.0)
    count = allowed.sum(dim=-1, keepdim=True).to(raw.dtype)
    c = scale / count.clamp(min=1.0)
    z = c * raw.sum(dim=-1, keepdim=True)
    weights = (1.0 + 1.0 / z.clamp(min=eps)) * c * raw - (z / count.clamp(min=1.0))
    return weights.masked_fill(~allowed, 0.0)


class MagnitudeAwareLinearAttention(LinearAttention):
    """Multi-head MALA (Fan et al., 2025): linear-time attention whose weights sum to one and
    sharpen with the query's magnitude (equations in the module docstring).

    Args: as ``LinearAttention`` plus ``scale`` (default ``d^-1/2``).
    Masks: key padding and causal in linear time; any other spec via the exact weights.
    Shapes: ``x (B, Lq, E)``, ``context (B, Lk, E)`` -> ``(B, Lq, E)``.
    """

    records_attention_weights = True

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        dropout: float = 0.0,
        feature_map: str = "elu",
        causal: bool = False,
        chunk_size: int = 64,
        eps: float = 1e-6,
        scale: float | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__(
            embed_dim,
            num_heads,
            dropout=dropout,
            feature_map=feature_map,
            causal=causal,
            chunk_size=chunk_size,
            eps=eps,
            bias=bias,
        )
        self.scale = check_embed(embed_dim, num_heads) ** -0.5 if scale is None else float(scale)
        self.attention_recorder: Callable[[Tensor], None] | None = None

    def forward(self, x: Tensor, *, context: Tensor | None = None, mask: MaskLike = None) -> Tensor:
        """``x (B, Lq, E)``, optional ``context (B, Lk, E)`` and mask -> ``(B, Lq, E)``."""
        check_input(x, context, self.embed_dim, type(self).__name__)
        qf, kf, v = self.features(x, context)
        B, H, Lq, _ = qf.shape
        Lk = kf.shape[2]
        info = resolve_prefix_mask(mask, B, Lk, x.device)
        causal = self.causal or info.causal
        if info.general is not None or self.attention_recorder is not None:
            allowed = None if info.general is None else dense_allowed(info.general, B, H, Lq, Lk, x.device)
            if info.general is None:
                allowed = _prefix_allowed(info.key_valid, causal, Lq, Lk, x.device)
            weights = mala_weights(qf, kf, scale=self.scale, allowed=allowed, eps=self.eps)
            if self.attention_recorder is not None:
                self.attention_recorder(weights)
            out = weights @ v
        else:
            out = self._linear_time(qf, kf, v, info.key_valid, causal)
        return self.out_proj(self.dropout(merge_heads(out)))

    def _linear_time(
        self, qf: Tensor, kf: Tensor, v: Tensor, key_valid: Tensor | None, causal: bool
    ) -> Tensor:
        B, _, Lq, _ = qf.shape
        Lk = kf.shape[2]
        if key_valid is not None:
            keep = key_valid[:, None, :, None].to(kf.dtype)
            kf, v = kf * keep, v * keep
            counts = key_valid.to(kf.dtype)[:, None, :]
        else:
            counts = torch.ones(1, 1, Lk, dtype=kf.dtype, device=kf.device)
        numerator, denominator = linear_attention_parts_auto(
            qf, kf, v, causal=causal, chunk_size=self.chunk_size
        )
        if causal:
            n = torch.cumsum(counts, dim=-1)
            value_sum = torch.cumsum(v, dim=-2)
        else:
            n = counts.sum(dim=-1, keepdim=True)
            value_sum = v.sum(dim=-2, keepdim=True)
        n = n.clamp(min=1.0).unsqueeze(-1)
        c = self.scale / n
        z = c * denominator.unsqueeze(-1)
        return (1.0 + 1.0 / z.clamp(min=self.eps)) * c * numerator - z * value_sum / n


def _prefix_allowed(
    key_valid: Tensor | None, causal: bool, Lq: int, Lk: int, device: torch.device
) -> Tensor | None:
    allowed = None
    if causal:
        allowed = torch.ones(Lq, Lk, dtype=torch.bool, device=device).tril()[None, None]
    if key_valid is not None:
        pad = key_valid[:, None, None, :]
        allowed = pad if allowed is None else allowed & pad
    return allowed
