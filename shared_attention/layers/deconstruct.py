"""Controlled relaxations of dot-product attention from "Deconstructing Attention: Investigating
Design Principles for Effective Language Modeling" (Xue, Moosavi, Aletras, 2025).

Standard attention ``out = softmax(Q K^T / sqrt(d)) V`` with ``Q, K, V`` projected from the
current layer's states ``x`` combines four principles; each variant relaxes one:

- ``standard``: the reference, through the dispatcher ``attention()``.
- ``no_mixing`` (no token mixing): the weights are the identity, ``out_i = V_i``.
- ``fixed_sequence`` (mixing that does not depend on the sequence): ``Q = P W_q``, ``K = P W_k``
  from a position table ``P (max_len, E)`` instead of ``x`` -- learned, or a frozen random table
  (``learn_sequence=False``) -- so the weights depend on positions (and the mask) only; ``V``
  still comes from ``x``.
- ``similarity`` (another mathematical form): ``out = normalise(sim(Q_i, K_j)) V`` with ``sim``:
  ``dot`` (softmax, = standard), ``cosine`` (softmax of ``tau cos(Q_i, K_j)``, ``tau`` learned
  from ``sqrt(d)``), ``neg_l2`` (softmax of ``-||Q_i - K_j||^2 / (2 sqrt(d))``) or ``relu``
  (``relu(Q_i . K_j / sqrt(d))`` normalised by its row sum).
- ``static_qk`` (queries and keys not tied to the current layer): ``Q, K`` are projected from the
  states recorded by the first layer of the model (its input, i.e. the token embeddings), shared
  through ``StaticStates``; ``V`` comes from ``x``.

``LayerPattern`` builds the layers of one model from a list of variants, cycled over the layers
(``["standard", "fixed_sequence"]`` alternates), for the paper's hybrid architectures.

Shapes: ``x (B, Lq, E)``, ``context (B, Lk, E)`` -> ``(B, Lq, E)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from shared_attention.functional import attention
from shared_attention.layers._common import (
    MaskLike,
    as_spec,
    check_embed,
    check_input,
    dense_allowed,
    masked_softmax,
    merge_heads,
    split_heads,
)

__all__ = ["DeconstructedAttention", "LayerPattern", "StaticStates", "VARIANTS", "SIMILARITIES"]

VARIANTS = ("standard", "no_mixing", "fixed_sequence", "similarity", "static_qk")
SIMILARITIES = ("dot", "cosine", "neg_l2", "relu")


class StaticStates:
    """Holds the states the first layer of a model records for the ``static_qk`` layers after it.

    A plain holder (not a module, so nothing of it is saved); ``states`` is ``(B, L, E)`` or None.
    """

    def __init__(self) -> None:
        self.states: Tensor | None = None


class DeconstructedAttention(nn.Module):
    """One attention layer of the "Deconstructing Attention" study (variants in the module docstring).

    Args:
        embed_dim: model width ``E``; ``num_heads`` divides it.
        dropout: dropout on the attention weights in training (``standard``: the dispatcher's).
        variant: one of ``VARIANTS``.
        similarity: for ``variant="similarity"``, one of ``SIMILARITIES``.
        max_len: rows of the position table of ``fixed_sequence``.
        learn_sequence: train the ``fixed_sequence`` table (False: frozen random, as a random
            sequence-independent query/key source).
        static: the shared holder of ``static_qk`` layers (one is made when None).
        records_static: this layer records its input into ``static`` (the model's first layer).
            A ``static_qk`` layer built alone (``static=None``) records its own input, i.e. it is
            its model's first layer; build hybrids with ``LayerPattern``.
        backend: the dispatcher backend of the softmax variants.
    """

    records_attention_weights = True

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        dropout: float = 0.0,
        variant: str = "standard",
        similarity: str = "dot",
        max_len: int = 1024,
        learn_sequence: bool = True,
        static: StaticStates | None = None,
        records_static: bool = False,
        backend: str = "auto",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.head_dim = check_embed(embed_dim, num_heads)
        if variant not in VARIANTS:
            raise ValueError(f"unknown attention variant {variant!r}; choose one of {list(VARIANTS)}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {similarity!r}; choose one of {list(SIMILARITIES)}")
        if not isinstance(max_len, int) or max_len <= 0:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.variant, self.similarity, self.backend = variant, similarity, backend
        self.scale = self.head_dim**-0.5
        self.dropout_p = dropout
        self.static = static if static is not None else StaticStates()
        self.records_static = records_static or (variant == "static_qk" and static is None)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        if variant != "no_mixing":
            self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
            self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        if variant == "fixed_sequence":
            table = torch.randn(max_len, embed_dim)
            if learn_sequence:
                self.sequence = nn.Parameter(table)
            else:
                self.register_buffer("sequence", table)
        if variant == "similarity" and similarity == "cosine":
            self.log_temperature = nn.Parameter(torch.tensor(math.log(math.sqrt(self.head_dim))))
        self.attention_recorder: Callable[[Tensor], None] | None = None

    def _qk_sources(self, x: Tensor, source: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.variant == "fixed_sequence":
            Lq, Lk = x.shape[1], source.shape[1]
            if Lq > self.sequence.shape[0] or Lk > self.sequence.shape[0]:
                raise ValueError(
                    f"fixed_sequence attention has max_len={self.sequence.shape[0]} but got Lq={Lq}, Lk={Lk}; "
                    "raise max_len"
                )
            return self.sequence[:Lq].expand(x.shape[0], Lq, -1), self.sequence[:Lk].expand(
                x.shape[0], Lk, -1
            )
        if self.variant == "static_qk":
            if context is not None:
                raise ValueError("static_qk attention is self-attention only (context must be None)")
            states = self.static.states
            if states is None or states.shape[:2] != x.shape[:2]:
                raise ValueError(
                    "static_qk attention found no recorded states of this batch: the model's first "
                    "attention layer records them (build the layers with LayerPattern)"
                )
            return states, states
        return x, source

    def forward(self, x: Tensor, *, context: Tensor | None = None, mask: MaskLike = None) -> Tensor:
        """``x (B, Lq, E)``, optional ``context (B, Lk, E)`` and mask -> ``(B, Lq, E)``."""
        check_input(x, context, self.embed_dim, type(self).__name__)
        if self.records_static and context is None:
            self.static.states = x
        source = x if context is None else context
        v = split_heads(self.v_proj(source), self.num_heads)
        if self.variant == "no_mixing":
            if source.shape[1] != x.shape[1]:
                raise ValueError("no_mixing attention needs Lq == Lk (each token keeps its own value)")
            if self.attention_recorder is not None:
                eye = torch.eye(x.shape[1], dtype=v.dtype, device=v.device)
                self.attention_recorder(eye.expand(x.shape[0], self.num_heads, -1, -1))
            return self.out_proj(merge_heads(v))
        q_source, k_source = self._qk_sources(x, source, context)
        q = split_heads(self.q_proj(q_source), self.num_heads)
        k = split_heads(self.k_proj(k_source), self.num_heads)
        dropout_p = self.dropout_p if self.training else 0.0
        softmax_dot = self.variant != "similarity" or self.similarity == "dot"
        if softmax_dot and self.attention_recorder is None:
            spec = as_spec(mask)
            out = attention(q, k, v, mask=spec, scale=self.scale, dropout_p=dropout_p, backend=self.backend)
            return self.out_proj(merge_heads(out))
        allowed = dense_allowed(mask, q.shape[0], self.num_heads, q.shape[2], k.shape[2], x.device)
        weights = self._weights(q, k, allowed)
        if self.attention_recorder is not None:
            self.attention_recorder(weights)
        if dropout_p > 0:
            weights = nn.functional.dropout(weights, dropout_p)
        return self.out_proj(merge_heads(weights @ v))

    def _weights(self, q: Tensor, k: Tensor, allowed: Tensor | None) -> Tensor:
        """Attention weights ``(B, H, Lq, Lk)`` of the similarity function."""
        sim = self.similarity if self.variant == "similarity" else "dot"
        if sim == "dot":
            return masked_softmax(q @ k.transpose(-2, -1) * self.scale, allowed)
        if sim == "cosine":
            cos = nn.functional.normalize(q, dim=-1) @ nn.functional.normalize(k, dim=-1).transpose(-2, -1)
            return masked_softmax(cos * self.log_temperature.exp(), allowed)
        if sim == "neg_l2":
            sq = (q * q).sum(-1, keepdim=True) + (k * k).sum(-1).unsqueeze(-2) - 2 * q @ k.transpose(-2, -1)
            return masked_softmax(-sq * (self.scale / 2), allowed)
        scores = torch.relu(q @ k.transpose(-2, -1) * self.scale)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, 0.0)
        return scores / (scores.sum(dim=-1, keepdim=True) + 1e-6)

    def extra_repr(self) -> str:
        extra = f", similarity={self.similarity}" if self.variant == "similarity" else ""
        return f"variant={self.variant}{extra}, records_static={self.records_static}"


class LayerPattern:
    """Attention factory for hybrid models: the ``i``-th layer it builds uses ``pattern[i % len]``.

    Called like any attention partial, ``factory(embed_dim=..., num_heads=..., dropout=...)``; the
    first layer it builds records its input for the ``static_qk`` layers (one ``StaticStates``
    per factory, so build one model per factory).

    Args:
        pattern: variant names (see ``VARIANTS``), e.g. ``["standard", "no_mixing"]``.
        **options: further ``DeconstructedAttention`` options shared by all layers.
    """

    def __init__(self, pattern: Sequence[str] | str, **options) -> None:
        names = [pattern] if isinstance(pattern, str) else list(pattern)
        if not names:
            raise ValueError("LayerPattern needs at least one variant")
        for name in names:
            if name not in VARIANTS:
                raise ValueError(f"LayerPattern: unknown variant {name!r}; choose from {list(VARIANTS)}")
        self.pattern = names
        self.options = options
        self.static = StaticStates()
        self.built = 0

    def __call__(
        self, embed_dim: int, num_heads: int, *, dropout: float = 0.0, **options
    ) -> DeconstructedAttention:
        variant = self.pattern[self.built % len(self.pattern)]
        layer = DeconstructedAttention(
            embed_dim,
            num_heads,
            dropout=dropout,
            variant=variant,
            static=self.static,
            records_static=self.built == 0,
            **{**self.options, **options},
        )
        self.built += 1
        return layer

    def __repr__(self) -> str:
        return f"LayerPattern(pattern={self.pattern}, options={self.options})"
