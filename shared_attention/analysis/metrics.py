"""Metrics on attention maps ``(..., Lq, Lk)`` whose last dim holds a distribution per query."""

from __future__ import annotations

import torch
from torch import Tensor


def attention_entropy(weights: Tensor, *, reduce: bool = True) -> Tensor:
    """Entropy in bits of each attention row, ``-sum_j p_j log2 p_j`` (``0 log 0 = 0``).

    Args:
        weights: ``(..., Lk)`` rows summing to 1 (or 0 for fully masked rows, entropy 0).
        reduce: return the mean over all rows (scalar) instead of per-row ``(...)``.
    """
    p = weights.float()
    plogp = torch.where(p > 0, p * torch.log2(p.clamp_min(torch.finfo(p.dtype).tiny)), torch.zeros_like(p))
    entropy = -plogp.sum(dim=-1)
    return entropy.mean() if reduce else entropy


def sink_ratio(weights: Tensor, sinks: int = 1, *, reduce: bool = True) -> Tensor:
    """Attention mass on the first ``sinks`` keys (the "attention sink", Xiao et al. 2023).

    Args:
        weights: ``(..., Lk)`` attention rows.
        reduce: mean over all rows (scalar) instead of per-row ``(...)``.
    """
    if sinks < 0:
        raise ValueError(f"sinks must be >= 0, got {sinks}")
    ratio = weights.float()[..., :sinks].sum(dim=-1)
    return ratio.mean() if reduce else ratio


def sink_scores(weights: Tensor, token: int = 0) -> Tensor:
    """Mean attention each head gives key ``token`` over the queries that can see it (causal).

    ``alpha_k = (1 / (T - k)) sum_{t >= k} A[t, k]`` (Gu et al., 2025, "When Attention Sink Emerges
    in Language Models", Sec. 3; 0-based ``k``).

    Args:
        weights: ``(..., T, T)`` attention maps (queries by keys).
        token: the key position ``k``.

    Returns:
        ``alpha (...)``.
    """
    if weights.dim() < 2 or weights.shape[-1] < 1:
        raise ValueError(f"weights must be (..., Lq, Lk), got {tuple(weights.shape)}")
    lq = weights.shape[-2]
    if not 0 <= token < min(lq, weights.shape[-1]):
        raise ValueError(f"token {token} is outside the {lq}x{weights.shape[-1]} attention map")
    column = weights.float()[..., token:, token]
    return column.mean(dim=-1)


def sink_rate(maps: Tensor | list[Tensor], epsilon: float = 0.3, token: int = 0) -> Tensor:
    """The attention-sink metric of Gu et al. (2025): the share of heads whose mean attention on key
    ``token`` exceeds ``epsilon``, ``Sink_k^eps = 1/(L H) sum_l sum_h 1(alpha_k^{l,h} > eps)``.

    ``alpha`` is taken per sequence and the indicator averaged over sequences, layers and heads
    (the paper uses ``eps = 0.3`` and the first token, ``k = 0``). Sigmoid attention weights need
    not sum to one; the metric reads them as they are.

    Args:
        maps: one ``(B, H, T, T)`` map per layer (a list, or a stacked ``(N, B, H, T, T)`` tensor).
        epsilon: the threshold on the mean attention score.
        token: the key position.

    Returns:
        a scalar in ``[0, 1]``.
    """
    if isinstance(maps, Tensor):
        maps = [maps]
    if not maps:
        raise ValueError("sink_rate needs at least one attention map")
    indicators = [(sink_scores(m, token) > epsilon).float().flatten() for m in maps]
    return torch.cat(indicators).mean()
