"""NTK-Attention: "Toward Infinite-Long Prefix in Transformer" (Wang, Li, Liang, Song, Wang, 2024).

Prefix learning prepends ``m`` learned key/value pairs ``(P_K, P_V)`` to every attention; the
paper shows (via the neural tangent kernel) that an arbitrarily long prefix can be stood for by
``d^2 + d`` parameters per head, ``Z (d x d)`` and ``k (d)``, with a feature map ``phi`` for which
``phi(q) . phi(p) ~ exp(q . p / sqrt(d))``:

    sum_{prefix p} exp(q_i . p_K / sqrt(d)) p_V   ~  phi(q_i)^T Z
    sum_{prefix p} exp(q_i . p_K / sqrt(d))       ~  phi(q_i)^T k

    out_i = (phi(q_i)^T Z + sum_j exp(s_ij) v_j) / (phi(q_i)^T k + sum_j exp(s_ij)),
    s_ij = q_i . k_j / sqrt(d)  over the keys query ``i`` may attend.

``Z`` and ``k`` start at zero, where the layer equals plain softmax attention exactly; training
them learns the prefix. Numerator and denominator are divided by the real mass
``exp(lse_i)`` (``lse_i`` the log-sum-exp of the scores) so nothing overflows:
``out_i = (softmax_i(s) V + e^{-lse_i} phi(q_i)^T Z) / (1 + e^{-lse_i} phi(q_i)^T k)``.
Our default ``phi`` is ``elu + 1`` (positive, so ``phi(q)^T k`` is a valid mass while ``k >= 0``);
``k`` is clipped at zero from below, passing gradients at exactly zero so a zero start can learn.

Shapes: ``x (B, Lq, E)``, ``context (B, Lk, E)`` -> ``(B, Lq, E)``; the scores are materialised.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from shared_attention.layers._common import (
    MaskLike,
    check_embed,
    check_input,
    dense_allowed,
    merge_heads,
    split_heads,
)
from shared_attention.layers._common import (
    feature_map as get_feature_map,
)

__all__ = ["NTKAttention", "ntk_attention"]


def ntk_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_feat: Tensor,
    prefix_values: Tensor,
    prefix_mass: Tensor,
    *,
    scale: float,
    allowed: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """NTK-attention of ``q (B, H, Lq, d)`` over ``k, v (B, H, Lk, d)`` plus the virtual prefix.

    Args:
        q_feat: ``phi(q) (B, H, Lq, r)``.
        prefix_values: ``Z (H, r, dv)``; prefix_mass: ``k (H, r)`` (non-negative).
        allowed: bool broadcastable to ``(B, H, Lq, Lk)`` or None.

    Returns:
        ``out (B, H, Lq, dv)`` and the weights on the real keys ``(B, H, Lq, Lk)`` (each row sums
        to the share of the mass not taken by the prefix).
    """
    scores = q @ k.transpose(-2, -1) * scale
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    finite = torch.isfinite(lse)
    safe_lse = torch.where(finite, lse, torch.zeros_like(lse))
    probs = torch.where(finite, torch.exp(scores - safe_lse), torch.zeros_like(scores))
    # numerator and denominator divided by the real mass exp(lse) (clamped against overflow)
    inverse_mass = torch.exp(-safe_lse.clamp(min=-80.0))
    prefix_num = q_feat @ prefix_values.unsqueeze(0)
    prefix_den = (q_feat * prefix_mass[None, :, None, :]).sum(dim=-1, keepdim=True)
    denominator = inverse_mass * prefix_den + finite.to(scores.dtype)
    denominator = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    weights = probs / denominator
    return weights @ v + inverse_mass * prefix_num / denominator, weights


class NTKAttention(nn.Module):
    """Multi-head softmax attention with an NTK-approximated infinite prefix (Wang et al., 2024).

    Per head ``h``: ``Z_h (d x d)`` and ``k_h (d)`` (``d^2 + d`` extra parameters), zero-initialised
    so the layer starts as plain attention (equations in the module docstring).

    Args:
        embed_dim: model width ``E``; ``num_heads`` divides it.
        dropout: dropout on the attention weights in training.
        feature_map: ``phi``, ``"elu"`` (``elu + 1``) or ``"relu"``.
        causal: always causal (also per call with ``mask=Causal()``).
        init_std: standard deviation of a random initial ``Z`` (``k`` then starts at ``init_std``
            too); 0 keeps the exact plain-attention start.
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
        init_std: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.head_dim = check_embed(embed_dim, num_heads)
        if init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {init_std}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.scale = self.head_dim**-0.5
        self.feature = feature_map
        self._phi: Callable[[Tensor], Tensor] = get_feature_map(feature_map)
        self.causal = causal
        d = self.head_dim
        self.prefix_values = nn.Parameter(torch.randn(num_heads, d, d) * init_std)
        self.prefix_mass = nn.Parameter(torch.full((num_heads, d), float(init_std)))
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.attention_recorder: Callable[[Tensor], None] | None = None

    def forward(self, x: Tensor, *, context: Tensor | None = None, mask: MaskLike = None) -> Tensor:
        """``x (B, Lq, E)``, optional ``context (B, Lk, E)`` and mask -> ``(B, Lq, E)``."""
        check_input(x, context, self.embed_dim, type(self).__name__)
        source = x if context is None else context
        q = split_heads(self.q_proj(x), self.num_heads)
        k = split_heads(self.k_proj(source), self.num_heads)
        v = split_heads(self.v_proj(source), self.num_heads)
        B, H, Lq, _ = q.shape
        Lk = k.shape[2]
        allowed = dense_allowed(mask, B, H, Lq, Lk, x.device, causal=self.causal)
        out, weights = ntk_attention(
            q,
            k,
            v,
            self._phi(q),
            self.prefix_values,
            torch.where(self.prefix_mass >= 0, self.prefix_mass, torch.zeros_like(self.prefix_mass)),
            scale=self.scale,
            allowed=allowed,
        )
        if self.attention_recorder is not None:
            self.attention_recorder(weights)
        if self.training and self.dropout.p > 0:
            out = out - weights @ v + self.dropout(weights) @ v
        return self.out_proj(merge_heads(out))
