"""The attention mechanisms under test, built small, shared by the test_mech_* modules."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from shared_attention import (
    DeconstructedAttention,
    LayerPattern,
    LinearAttention,
    MagnitudeAwareLinearAttention,
    NTKAttention,
    PowerAttention,
    RelativeConvAttention,
    SigmoidAttention,
    SinkWindow,
    SlidingWindow,
    SparsePatternAttention,
)


def _static_model_layer(embed_dim: int, num_heads: int) -> nn.Module:
    return LayerPattern(["static_qk"])(embed_dim=embed_dim, num_heads=num_heads)


MECHANISMS: dict[str, Callable[[int, int], nn.Module]] = {
    "linear": lambda e, h: LinearAttention(e, h, chunk_size=4),
    "mala": lambda e, h: MagnitudeAwareLinearAttention(e, h, chunk_size=4),
    "sigmoid": lambda e, h: SigmoidAttention(e, h),
    "sigmoid_learned_bias": lambda e, h: SigmoidAttention(e, h, learn_bias=True),
    "rcmha": lambda e, h: RelativeConvAttention(e, h),
    "ntk": lambda e, h: NTKAttention(e, h, init_std=0.2),
    "no_mixing": lambda e, h: DeconstructedAttention(e, h, variant="no_mixing"),
    "fixed_sequence": lambda e, h: DeconstructedAttention(e, h, variant="fixed_sequence", max_len=64),
    "cosine": lambda e, h: DeconstructedAttention(e, h, variant="similarity", similarity="cosine"),
    "neg_l2": lambda e, h: DeconstructedAttention(e, h, variant="similarity", similarity="neg_l2"),
    "relu": lambda e, h: DeconstructedAttention(e, h, variant="similarity", similarity="relu"),
    "static_qk": _static_model_layer,
    "window": lambda e, h: SparsePatternAttention(e, h, pattern=SlidingWindow(3, causal=False)),
    "sink_window": lambda e, h: SparsePatternAttention(e, h, pattern=SinkWindow(1, 3)),
    "power": lambda e, h: SparsePatternAttention(e, h, pattern=PowerAttention(window=2)),
}
