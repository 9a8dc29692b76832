"""Attention-map capture and metrics."""

from shared_attention.analysis.capture import AttentionMaps, capture_attention
from shared_attention.analysis.metrics import attention_entropy, sink_rate, sink_ratio, sink_scores

__all__ = [
    "AttentionMaps",
    "attention_entropy",
    "capture_attention",
    "sink_rate",
    "sink_ratio",
    "sink_scores",
]
