"""Attention layers sharing the interface ``layer(x, *, context=None, mask=None)``."""

from shared_attention.layers.additive import AdditiveAttention, PointerHead
from shared_attention.layers.deconstruct import DeconstructedAttention, LayerPattern, StaticStates
from shared_attention.layers.linear import LinearAttention, linear_attention_parts
from shared_attention.layers.mala import MagnitudeAwareLinearAttention, mala_weights
from shared_attention.layers.multihead import MultiHeadAttention
from shared_attention.layers.ntk import NTKAttention
from shared_attention.layers.rcmha import RelativeConvAttention
from shared_attention.layers.rotary import RotaryEmbedding
from shared_attention.layers.sigmoid import SigmoidAttention
from shared_attention.layers.sparse import SparsePatternAttention

__all__ = [
    "AdditiveAttention",
    "DeconstructedAttention",
    "LayerPattern",
    "LinearAttention",
    "MagnitudeAwareLinearAttention",
    "MultiHeadAttention",
    "NTKAttention",
    "PointerHead",
    "RelativeConvAttention",
    "RotaryEmbedding",
    "SigmoidAttention",
    "SparsePatternAttention",
    "StaticStates",
    "linear_attention_parts",
    "mala_weights",
]
