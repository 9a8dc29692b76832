"""Softmax attention restricted to a static sparse pattern (a mask spec), for the pattern papers:

- sliding window (local attention; Beltagy et al., 2020, "Longformer"): ``SlidingWindow``;
- sink + window (streaming heads; Xiao et al., 2024, "Efficient Streaming Language Models with
  Attention Sinks"): ``SinkWindow``;
- PowerAttention (Chen et al., 2025): keys at power-of-two block distances, ``PowerAttention``.

``out = softmax(Q K^T / sqrt(d), allowed = pattern & mask) V``: the pattern is intersected with
the mask of the call and served by the dispatcher (``attention()``), which picks FlexAttention or
the block-sparse Triton kernel where they run (both read the spec's ``mask_mod`` /
``to_block_layout``) and the dense forms elsewhere.

Shapes: ``x (B, Lq, E)``, ``context (B, Lk, E)`` -> ``(B, Lq, E)``.
"""

from __future__ import annotations

from torch import Tensor

from shared_attention.layers._common import MaskLike, as_spec, check_input
from shared_attention.layers.multihead import MultiHeadAttention
from shared_attention.masks import MaskSpec

__all__ = ["SparsePatternAttention"]


class SparsePatternAttention(MultiHeadAttention):
    """Multi-head softmax attention under a fixed sparse ``pattern`` (any ``MaskSpec``).

    Args:
        embed_dim, num_heads, dropout: as ``MultiHeadAttention``.
        pattern: the mask spec every call is intersected with (e.g.
            ``SlidingWindow(128, causal=False)``, ``SinkWindow(4, 252)``, ``PowerAttention()``).
        **options: the other ``MultiHeadAttention`` options (``num_kv_heads``, ``rotary``, ``backend``...).
    """

    def __init__(
        self, embed_dim: int, num_heads: int, *, pattern: MaskSpec, dropout: float = 0.0, **options
    ) -> None:
        if not isinstance(pattern, MaskSpec):
            raise ValueError(f"pattern must be a MaskSpec (e.g. SlidingWindow), got {type(pattern).__name__}")
        super().__init__(embed_dim, num_heads, dropout=dropout, **options)
        self.pattern = pattern

    def forward(
        self, x: Tensor, *, context: Tensor | None = None, mask: MaskLike = None, value: Tensor | None = None
    ) -> Tensor:
        """As ``MultiHeadAttention.forward`` with ``mask`` intersected with the pattern."""
        check_input(x, context, self.embed_dim, type(self).__name__)
        spec = as_spec(mask)
        combined = self.pattern if spec is None else self.pattern & spec
        return super().forward(x, context=context, mask=combined, value=value)

    def extra_repr(self) -> str:
        return f"pattern={self.pattern!r}"
