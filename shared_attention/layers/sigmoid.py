"""Sigmoid attention without normalisation, as studied in "When Attention Sink Emerges in Language
Models: An Empirical View" (Gu, Pang, Du, Liu, Zhang, Du, Wang, Lin, ICLR 2025).

Softmax couples the weights of one query (they must sum to one), which the paper finds is what
makes an attention sink emerge; replacing it by an element-wise sigmoid removes the coupling:

    out_i = sum_j sigmoid(q_i . k_j / sqrt(d) + b) v_j        (no division by a row sum)

over the keys ``j`` query ``i`` may attend. The bias ``b`` keeps the output finite as the
length grows; the default ``b = -log(n)`` with ``n`` the number of keys (so each weight starts
near ``1 / n``, as softmax's) is the choice of Ramapuram et al. (2024), "Theory, Analysis, and
Best Practices for Sigmoid Self-Attention", which the sink paper's sigmoid runs follow. A fixed
float ``bias`` or a learned one (``learn_bias``) can be chosen instead.

Shapes: ``x (B, Lq, E)``, ``context (B, Lk, E)`` -> ``(B, Lq, E)``; the ``(B, H, Lq, Lk)``
weights are materialised (in query chunks of ``query_chunk`` rows outside export/compile).
"""

from __future__ import annotations

import math
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

__all__ = ["SigmoidAttention", "sigmoid_attention"]


def sigmoid_attention(
    q: Tensor, k: Tensor, v: Tensor, *, bias: Tensor | float, scale: float, allowed: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``sigmoid(q k^T * scale + bias)`` masked to zero where not allowed, and its product with v.

    Args:
        q: ``(B, H, Lq, D)``; k: ``(B, H, Lk, D)``; v: ``(B, H, Lk, Dv)``.
        bias: scalar (float or 0-d tensor) added to every score.
        allowed: bool broadcastable to ``(B, H, Lq, Lk)`` or None.

    Returns:
        ``out (B, H, Lq, Dv)``, ``weights (B, H, Lq, Lk)``.
    """
    weights = torch.sigmoid(q @ k.transpose(-2, -1) * scale + bias)
    if allowed is not None:
        weights = weights.masked_fill(~allowed, 0.0)
    return weights @ v, weights


class SigmoidAttention(nn.Module):
    """Multi-head sigmoid attention without normalisation (Gu et al., 2025; equations in the module
    docstring).

    Args:
        embed_dim: model width ``E``; ``num_heads`` divides it.
        dropout: dropout on the attention weights in training.
        bias: the score bias ``b``; None means ``-log(n)`` with ``n`` the key length of the call.
        learn_bias: make ``b`` a learned scalar per head, initialised to ``bias`` (or 0 when None,
            added to ``-log(n)``).
        causal: always causal (also per call with ``mask=Causal()``).
        query_chunk: queries per block when materialising the weights (memory bound).
    """

    records_attention_weights = True

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        dropout: float = 0.0,
        bias: float | None = None,
        learn_bias: bool = False,
        causal: bool = False,
        query_chunk: int = 1024,
        proj_bias: bool = True,
    ) -> None:
        super().__init__()
        self.head_dim = check_embed(embed_dim, num_heads)
        if not isinstance(query_chunk, int) or query_chunk <= 0:
            raise ValueError(f"query_chunk must be a positive int, got {query_chunk!r}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.scale = self.head_dim**-0.5
        self.fixed_bias = bias
        self.causal, self.query_chunk = causal, query_chunk
        init = 0.0 if bias is None else float(bias)
        self.learned_bias = nn.Parameter(torch.full((num_heads, 1, 1), init)) if learn_bias else None
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=proj_bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=proj_bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=proj_bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=proj_bias)
        self.dropout = nn.Dropout(dropout)
        self.attention_recorder: Callable[[Tensor], None] | None = None

    def score_bias(self, num_keys: int | Tensor) -> Tensor | float:
        """The bias ``b`` added to every score for a call with ``num_keys`` keys (an int, or a 0-d
        tensor so that exported graphs keep the length symbolic)."""
        log_n = math.log(num_keys) if isinstance(num_keys, int) else torch.log(num_keys)
        if self.learned_bias is not None:
            return self.learned_bias if self.fixed_bias is not None else self.learned_bias - log_n
        if self.fixed_bias is not None:
            return self.fixed_bias
        return -log_n

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
        tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
        bias = self.score_bias(k.new_ones(Lk).sum() if tracing else Lk)
        chunked = (
            isinstance(Lq, int) and Lq > self.query_chunk and self.attention_recorder is None and not tracing
        )
        if chunked:
            outs = []
            for start in range(0, Lq, self.query_chunk):
                rows = slice(start, start + self.query_chunk)
                part = (
                    None if allowed is None else allowed[..., rows, :] if allowed.shape[-2] > 1 else allowed
                )
                out, weights = sigmoid_attention(
                    q[:, :, rows], k, v, bias=bias, scale=self.scale, allowed=part
                )
                if self.training and self.dropout.p > 0:
                    out = self.dropout(weights) @ v
                outs.append(out)
            out = torch.cat(outs, dim=2)
        else:
            out, weights = sigmoid_attention(q, k, v, bias=bias, scale=self.scale, allowed=allowed)
            if self.attention_recorder is not None:
                self.attention_recorder(weights)
            if self.training and self.dropout.p > 0:
                out = self.dropout(weights) @ v
        return self.out_proj(merge_heads(out))
