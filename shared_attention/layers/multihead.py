"""Multi-head softmax attention layer on top of ``attention()``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from shared_attention.functional import attention
from shared_attention.layers.rotary import RotaryEmbedding
from shared_attention.masks import MaskSpec


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al., 2017), with grouped-query
    heads (Ainslie et al., 2023) and optional rotary positions.

    ``Q = x W_q``, ``K = c W_k``, ``V = c W_v`` (``c = x`` for self-attention, ``context``
    otherwise), split into ``num_heads`` query heads and ``num_kv_heads`` key/value heads;
    ``out = concat_h softmax(Q_h K_g(h)^T / sqrt(d)) V_g(h) W_o``.

    Args:
        embed_dim: model width ``E`` (input and output), divisible by ``num_heads``.
        num_heads: query heads ``H``; head dim ``d = E / H``.
        num_kv_heads: key/value heads (divides ``H``); default ``H``.
        kdim, vdim: feature sizes of the context used for keys / values; default ``E``.
        dropout: attention-weight dropout, active in training only.
        bias: biases in the projections.
        rotary: rotate q and k with ``RotaryEmbedding`` (self-attention; cross-attention
            too when ``rotary_cross``).
        backend: attention backend name passed to ``attention()``.

    Shapes: ``x (B, Lq, E)``, ``context (B, Lk, kdim)`` -> ``(B, Lq, E)``. In cross-attention
    ``x`` may also be ``(1, Lq, E)``, the same queries for every context (label or latent queries):
    they are projected once and broadcast over the batch (``broadcast_queries``).
    """

    # x of batch 1 is broadcast against a context of batch B (projected once, not B times)
    broadcast_queries = True

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        kdim: int | None = None,
        vdim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        rotary: bool = False,
        rotary_base: float = 10000.0,
        rotary_cross: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_kv_heads <= 0 or num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.backend = backend
        self.rotary_cross = rotary_cross
        kdim = embed_dim if kdim is None else kdim
        vdim = embed_dim if vdim is None else vdim
        self.q_proj = nn.Linear(embed_dim, num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(kdim, num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(vdim, num_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(num_heads * self.head_dim, embed_dim, bias=bias)
        self.rotary = RotaryEmbedding(self.head_dim, rotary_base) if rotary else None
        self.attention_recorder: Callable[[Tensor], None] | None = None

    def _split(self, x: Tensor, heads: int) -> Tensor:
        return x.unflatten(-1, (heads, self.head_dim)).transpose(1, 2)

    def _mask(self, mask: MaskSpec | Tensor | None) -> MaskSpec | Tensor | None:
        if isinstance(mask, Tensor) and mask.dim() == 2:
            return mask[:, None, None, :]
        return mask

    def forward(
        self,
        x: Tensor,
        *,
        context: Tensor | None = None,
        mask: MaskSpec | Tensor | None = None,
        value: Tensor | None = None,
    ) -> Tensor:
        """Attend from ``x (B, Lq, E)`` to ``context (B, Lk, kdim)`` (or to ``x``).

        ``mask``: a ``MaskSpec``, a bool tensor broadcastable to ``(B, H, Lq, Lk)``, or a
        ``(B, Lk)`` bool tensor read as key padding (True = valid key).
        ``value``: ``(B, Lk, vdim)`` values when they differ from ``context`` (as in
        ``nn.MultiheadAttention(query, key, value)``).
        """
        source = x if context is None else context
        q = self._split(self.q_proj(x), self.num_heads)
        if q.shape[0] != source.shape[0]:
            if q.shape[0] != 1:
                raise ValueError(
                    f"{type(self).__name__}: query batch {x.shape[0]} does not match context batch "
                    f"{source.shape[0]} (only a query batch of 1 is broadcast)"
                )
            q = q.expand(source.shape[0], -1, -1, -1)
        k = self._split(self.k_proj(source), self.num_kv_heads)
        v = self._split(self.v_proj(source if value is None else value), self.num_kv_heads)
        if self.rotary is not None and (context is None or self.rotary_cross):
            q, k = self.rotary(q), self.rotary(k)
        dropout_p = self.dropout if self.training else 0.0
        if self.attention_recorder is not None:
            out, weights = attention(
                q,
                k,
                v,
                mask=self._mask(mask),
                scale=self.scale,
                dropout_p=dropout_p,
                backend="math",
                need_weights=True,
            )
            self.attention_recorder(weights)
        else:
            out = attention(
                q, k, v, mask=self._mask(mask), scale=self.scale, dropout_p=dropout_p, backend=self.backend
            )
        return self.out_proj(out.transpose(1, 2).flatten(-2))

    @torch.no_grad()
    def load_from_torch(self, module: nn.MultiheadAttention) -> MultiHeadAttention:
        """Copy the weights of a ``torch.nn.MultiheadAttention`` with the same sizes."""
        if (
            module.embed_dim != self.embed_dim
            or module.num_heads != self.num_heads
            or self.num_kv_heads != self.num_heads
        ):
            raise ValueError("load_from_torch needs equal embed_dim/num_heads and no grouped-query heads")
        if module._qkv_same_embed_dim:
            wq, wk, wv = module.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
        for proj, weight in ((self.q_proj, wq), (self.k_proj, wk), (self.v_proj, wv)):
            proj.weight.copy_(weight)
        if module.in_proj_bias is not None and self.q_proj.bias is not None:
            for proj, b in zip((self.q_proj, self.k_proj, self.v_proj), module.in_proj_bias.chunk(3)):
                proj.bias.copy_(b)
        self.out_proj.weight.copy_(module.out_proj.weight)
        if module.out_proj.bias is not None and self.out_proj.bias is not None:
            self.out_proj.bias.copy_(module.out_proj.bias)
        return self
