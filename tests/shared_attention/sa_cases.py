"""Shared cases for the shared_attention tests: shapes, mask factories, brute-force masks."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from shared_attention.masks import (
    AndMask,
    BlockSparse,
    Causal,
    KeyPadding,
    MaskSpec,
    SinkWindow,
    SlidingWindow,
    VarLen,
)

# (B, H, Hkv, Lq, Lk, D)
SHAPES = {
    "b2h4g2_l13": (2, 4, 2, 13, 13, 8),
    "b1h2_l37": (1, 2, 2, 37, 37, 16),
    "b2h2g1_decode5of37": (2, 2, 1, 5, 37, 8),
    "b1h4g1_l130": (1, 4, 1, 130, 130, 8),
}

MaskFactory = Callable[[int, int, int, int, torch.Generator], "MaskSpec | torch.Tensor | None"]


def _lengths(B: int, Lk: int, gen: torch.Generator) -> torch.Tensor:
    lengths = torch.randint(1, Lk + 1, (B,), generator=gen)
    lengths[0] = 0 if B > 1 else lengths[0]
    return lengths


def _var_len(L: int, causal: bool) -> VarLen:
    total = max(1, L - 2)
    lens, left, step = [], total, 3
    while left > 0:
        n = min(left, step)
        lens.append(n)
        left -= n
        step = step * 2 + 1
    return VarLen(lens, causal=causal)


def _block_sparse(H: int, Lq: int, Lk: int, gen: torch.Generator, per_head: bool) -> BlockSparse:
    bs = 8
    layout = torch.rand(H if per_head else 1, math.ceil(Lq / bs), math.ceil(Lk / bs), generator=gen) < 0.5
    layout[..., 0, 0] = True
    return BlockSparse(layout, bs)


MASKS: dict[str, MaskFactory] = {
    "none": lambda B, H, Lq, Lk, g: None,
    "causal": lambda B, H, Lq, Lk, g: Causal(),
    "causal_bottom_right": lambda B, H, Lq, Lk, g: Causal.bottom_right(Lq, Lk),
    "causal_neg_offset": lambda B, H, Lq, Lk, g: Causal(-3),
    "key_padding": lambda B, H, Lq, Lk, g: KeyPadding(_lengths(B, Lk, g)),
    "varlen": lambda B, H, Lq, Lk, g: _var_len(min(Lq, Lk), causal=False),
    "varlen_causal": lambda B, H, Lq, Lk, g: _var_len(min(Lq, Lk), causal=True),
    "sliding": lambda B, H, Lq, Lk, g: SlidingWindow(4),
    "sliding_bidir": lambda B, H, Lq, Lk, g: SlidingWindow(5, causal=False),
    "sink_window": lambda B, H, Lq, Lk, g: SinkWindow(2, 4),
    "block_sparse": lambda B, H, Lq, Lk, g: _block_sparse(H, Lq, Lk, g, per_head=False),
    "block_sparse_heads": lambda B, H, Lq, Lk, g: _block_sparse(H, Lq, Lk, g, per_head=True),
    "and_causal_padding": lambda B, H, Lq, Lk, g: (
        Causal.bottom_right(Lq, Lk) & KeyPadding(_lengths(B, Lk, g))
    ),
    "and_sliding_varlen": lambda B, H, Lq, Lk, g: AndMask(SlidingWindow(3), _var_len(min(Lq, Lk), False)),
    "bool_tensor": lambda B, H, Lq, Lk, g: torch.rand(B, 1, Lq, Lk, generator=g) < 0.6,
    "bool_tensor_2d": lambda B, H, Lq, Lk, g: torch.rand(Lq, Lk, generator=g) < 0.3,
}


def brute_force_allowed(spec: MaskSpec, b: int, h: int, i: int, j: int) -> bool:
    """Definition of each spec, one entry at a time, in plain Python."""
    if isinstance(spec, Causal):
        return j <= i + spec.offset
    if isinstance(spec, KeyPadding):
        return j < int(spec.lengths[b])
    if isinstance(spec, VarLen):
        starts = [sum(spec.seq_lens[:n]) for n in range(len(spec.seq_lens))]
        for start, n in zip(starts, spec.seq_lens):
            if start <= i < start + n and start <= j < start + n:
                return (not spec.causal) or j <= i
        return False
    if isinstance(spec, SlidingWindow):
        if spec.causal:
            return 0 <= i - j < spec.window
        return abs(i - j) < spec.window
    if isinstance(spec, SinkWindow):
        return j <= i and (j < spec.sinks or i - j < spec.window)
    if isinstance(spec, BlockSparse):
        head = h if spec.layout.shape[0] > 1 else 0
        return bool(spec.layout[head, i // spec.block_size, j // spec.block_size])
    if isinstance(spec, AndMask):
        return all(brute_force_allowed(s, b, h, i, j) for s in spec.specs)
    raise TypeError(type(spec))


def brute_force_dense(spec: MaskSpec, B: int, H: int, Lq: int, Lk: int) -> torch.Tensor:
    out = torch.zeros(B, H, Lq, Lk, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            for i in range(Lq):
                for j in range(Lk):
                    out[b, h, i, j] = brute_force_allowed(spec, b, h, i, j)
    return out


def make_qkv(B, H, Hkv, Lq, Lk, D, *, dtype=torch.float32, seed=0, requires_grad=False, Dv=None):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Lq, D, generator=gen, dtype=dtype)
    k = torch.randn(B, Hkv, Lk, D, generator=gen, dtype=dtype)
    v = torch.randn(B, Hkv, Lk, Dv or D, generator=gen, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]
