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
