"""Attention layers sharing the interface ``layer(x, *, context=None, mask=None)``."""

from shared_attention.layers.additive import AdditiveAttention, PointerHead
from shared_attention.layers.multihead import MultiHeadAttention
from shared_attention.layers.rotary import RotaryEmbedding

__all__ = ["AdditiveAttention", "MultiHeadAttention", "PointerHead", "RotaryEmbedding"]
