"""Rotary position embedding (RoFormer, Su et al. 2021)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    """Rotate pairs of features by position-dependent angles so that ``q_m . k_n`` depends
    only on ``m - n`` (RoFormer: "Enhanced Transformer with Rotary Position Embedding").

    Feature ``i`` and ``i + D/2`` form a pair rotated by ``theta_i * pos`` with
    ``theta_i = base^(-2i / D)`` (the "rotate half" layout).

    Args:
        dim: head dim ``D`` (even).
        base: frequency base.
    """

    inv_freq: Tensor

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"RotaryEmbedding dim must be a positive even int, got {dim}")
        self.dim = dim
        self.base = base
        inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, positions: Tensor | None = None, offset: int = 0) -> Tensor:
        """Rotate ``x (B, H, L, D)``.

        Args:
            positions: ``(L,)`` or ``(B, L)`` integer positions; default ``offset + arange(L)``.
            offset: first position when ``positions`` is None (e.g. cached tokens when decoding).
        """
        L = x.shape[-2]
        if positions is None:
            positions = torch.arange(L, device=x.device) + offset
        angles = positions.to(torch.float32)[..., None] * self.inv_freq
        if angles.dim() == 3:
            angles = angles[:, None]
        cos, sin = angles.cos(), angles.sin()
        x1, x2 = x.float().chunk(2, dim=-1)
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return rotated.to(x.dtype)
