"""The attention core: one ``attention()`` entry with pluggable backends, mask specs,
attention layers and attention-map analysis."""

from shared_attention.analysis import capture_attention
from shared_attention.backends import register_backend
from shared_attention.functional import (
    BackendUnsupported,
    attention,
    available_backends,
    explain,
    force_backend,
)
from shared_attention.layers import AdditiveAttention, MultiHeadAttention, PointerHead, RotaryEmbedding
from shared_attention.masks import (
    AndMask,
    BlockSparse,
    Causal,
    DenseMask,
    KeyPadding,
    MaskSpec,
    SinkWindow,
    SlidingWindow,
    VarLen,
)

__all__ = [
    "attention",
    "explain",
    "available_backends",
    "force_backend",
    "register_backend",
    "BackendUnsupported",
    "MaskSpec",
    "Causal",
    "KeyPadding",
    "VarLen",
    "SlidingWindow",
    "SinkWindow",
    "BlockSparse",
    "AndMask",
    "DenseMask",
    "MultiHeadAttention",
    "AdditiveAttention",
    "PointerHead",
    "RotaryEmbedding",
    "capture_attention",
]
