"""Attention mask specifications.

A mask spec is a small frozen dataclass that describes *which* keys a query may
attend to (``True`` = may attend) without fixing a tensor layout. Each spec
converts itself to what a backend needs:

- ``to_dense(B, H, Lq, Lk, device)`` -> bool tensor broadcastable to ``(B, H, Lq, Lk)``;
- ``mask_mod(device)`` -> FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool``;
- ``to_block_layout(Lq, Lk, block_size)`` -> bool ``(H or 1, nQb, nKb)``, the blocks
  that contain at least one allowed entry (union over the batch), for block-sparse kernels;
- ``to_xformers_bias(B, H, Lq, Lk, device, dtype)`` -> an xformers ``attn_bias``.

Every spec defines its semantics once, in ``_allowed(b, h, q_idx, kv_idx)``, written
with broadcasting tensor ops only: it serves as the FlexAttention ``mask_mod`` and,
evaluated on broadcast index grids, as the dense mask. Conversions are cached per
(spec, shape, device) in a small LRU. Specs holding tensors compare and hash by
identity, so do not modify their tensors in place after use.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "MaskSpec",
    "Causal",
    "KeyPadding",
    "VarLen",
    "SlidingWindow",
    "SinkWindow",
    "PowerAttention",
    "BlockSparse",
    "AndMask",
    "DenseMask",
    "clear_mask_cache",
]

_CACHE_SIZE = 128
_CACHE: OrderedDict[Hashable, Any] = OrderedDict()

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def _is_static(*dims: Any) -> bool:
    """True when every dim is a plain int (not a symbolic size during export/compile)."""
    return all(type(d) is int for d in dims)


def _tracing() -> bool:
    """True under torch.jit.trace, torch.compile or torch.export (tensors may be fake)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _cached(key: Hashable, build: Callable[[], Any], *dims: Any) -> Any:
    """LRU-cache ``build()`` under ``key``; bypassed while tracing/compiling/exporting."""
    if not _is_static(*dims) or _tracing():
        return build()
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    value = build()
    _CACHE[key] = value
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return value


def clear_mask_cache() -> None:
    """Drop every cached mask conversion."""
    _CACHE.clear()


def _index_grids(
    B: int, H: int, Lq: int, Lk: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    b = torch.arange(B, device=device).view(B, 1, 1, 1)
    h = torch.arange(H, device=device).view(1, H, 1, 1)
    q = torch.arange(Lq, device=device).view(1, 1, Lq, 1)
    k = torch.arange(Lk, device=device).view(1, 1, 1, Lk)
    return b, h, q, k


class MaskSpec:
    """Base class of mask specs. Subclasses are frozen dataclasses defining ``_allowed``.

    Class attributes:
        batch_dependent: the mask differs between batch rows.
        head_dependent: the mask differs between heads.
        block_sparse: the mask is sparse at block granularity (worth a block-sparse backend).
    """

    batch_dependent: bool = False
    head_dependent: bool = False
    block_sparse: bool = False

    @property
    def kind(self) -> str:
        return type(self).__name__

    def _allowed(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor, device: torch.device) -> Tensor:
        raise TypeError(f"{type(self).__name__} does not define _allowed")

    def validate(self, B: int, H: int, Lq: int, Lk: int) -> None:
        """Raise ValueError when the spec cannot describe a ``(B, H, Lq, Lk)`` score matrix."""

    def _grid_sizes(self, B: int, H: int) -> tuple[int, int]:
        return (B if self.batch_dependent else 1), (H if self.head_dependent else 1)

    def to_dense(self, B: int, H: int, Lq: int, Lk: int, device: torch.device | str = "cpu") -> Tensor:
        """Bool mask broadcastable to ``(B, H, Lq, Lk)``; dims that do not vary are size 1."""
        device = torch.device(device)
        self.validate(B, H, Lq, Lk)
        gb, gh = self._grid_sizes(B, H)

        def build() -> Tensor:
            b, h, q, k = _index_grids(gb, gh, Lq, Lk, device)
            return self._allowed(b, h, q, k, device)

        return _cached((self, "dense", gb, gh, Lq, Lk, device), build, gb, gh, Lq, Lk)

    def row_valid(
        self, B: int, H: int, Lq: int, Lk: int, device: torch.device | str = "cpu"
    ) -> Tensor | None:
        """Bool ``(B|1, H|1, Lq, 1)``: queries with at least one allowed key; None if all rows have one."""
        device = torch.device(device)
        gb, gh = self._grid_sizes(B, H)

        def build() -> Tensor | None:
            valid = self.to_dense(B, H, Lq, Lk, device).any(dim=-1, keepdim=True)
            if _is_static(Lq, Lk) and not _tracing() and bool(valid.all()):
                return None
            return valid

        return _cached((self, "row_valid", gb, gh, Lq, Lk, device), build, gb, gh, Lq, Lk)

    def safe_dense(
        self, B: int, H: int, Lq: int, Lk: int, device: torch.device | str = "cpu"
    ) -> tuple[Tensor, Tensor | None]:
        """Dense mask where fully masked rows are opened to every key, plus the row validity.

        Kernels given this mask never see an empty row (no NaN in values or gradients);
        the caller multiplies the output by the returned ``row_valid`` to zero those rows.
        """
        device = torch.device(device)
        gb, gh = self._grid_sizes(B, H)

        def build() -> tuple[Tensor, Tensor | None]:
            dense = self.to_dense(B, H, Lq, Lk, device)
            valid = self.row_valid(B, H, Lq, Lk, device)
            if valid is None:
                return dense, None
            return dense | ~valid, valid

        return _cached((self, "safe_dense", gb, gh, Lq, Lk, device), build, gb, gh, Lq, Lk)

    def mask_mod(self, device: torch.device | str | None = None) -> MaskMod:
        """FlexAttention mask_mod ``(b, h, q_idx, kv_idx) -> bool``; held tensors moved to ``device``.

        The tensors are moved here, once, not inside the returned function: a device copy inside a
        mask_mod cannot be compiled by FlexAttention's CUDA kernels.
        """
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        spec = self._moved_to(dev)

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return spec._allowed(b, h, q_idx, kv_idx, dev)

        return mask_mod

    def _moved_to(self, device: torch.device) -> MaskSpec:
        """A shallow copy whose held tensors (fields and derived ones) live on ``device``; ``self``
        when they already do."""
        moved: MaskSpec | None = None
        for name, value in vars(self).items():
            new = value
            if isinstance(value, Tensor) and value.device != device:
                new = value.to(device)
            elif isinstance(value, MaskSpec):
                new = value._moved_to(device)
            elif isinstance(value, tuple) and any(isinstance(item, MaskSpec) for item in value):
                items = tuple(
                    item._moved_to(device) if isinstance(item, MaskSpec) else item for item in value
                )
                new = value if all(a is b for a, b in zip(items, value)) else items
            if new is not value:
                if moved is None:
                    moved = copy.copy(self)
                object.__setattr__(moved, name, new)
        return self if moved is None else moved

    def to_block_layout(self, Lq: int, Lk: int, block_size: int, *, num_heads: int = 1) -> Tensor:
        """Bool ``(H or 1, ceil(Lq/bs), ceil(Lk/bs))``: blocks holding any allowed entry.

        Batch-dependent specs return the union over the batch, so a kernel using the
        layout must still apply the element mask inside partially allowed blocks.
        ``num_heads`` is only used by head-dependent specs.
        """
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        batch, heads = self._layout_batch(), self._layout_heads(num_heads)

        def build() -> Tensor:
            dense = self.to_dense(batch, heads, Lq, Lk, "cpu").expand(batch, heads, Lq, Lk).any(dim=0)
            nqb, nkb = math.ceil(Lq / block_size), math.ceil(Lk / block_size)
            padded = torch.zeros(heads, nqb * block_size, nkb * block_size, dtype=torch.bool)
            padded[:, :Lq, :Lk] = dense
            return padded.view(heads, nqb, block_size, nkb, block_size).any(dim=4).any(dim=2)

        return _cached((self, "layout", heads, Lq, Lk, block_size), build, Lq, Lk)

    def _layout_heads(self, num_heads: int) -> int:
        return num_heads if self.head_dependent else 1

    def _layout_batch(self) -> int:
        return 1

    def to_xformers_bias(
        self, B: int, H: int, Lq: int, Lk: int, device: torch.device | str, dtype: torch.dtype
    ) -> Any:
        """xformers ``attn_bias``: a structured bias when one exists, else a dense additive tensor.

        The dense fallback is ``(B, H, Lq, Lk)`` with 0 where allowed and -inf elsewhere
        (fully masked rows opened; zero them afterwards), stored with its last dim padded
        to a multiple of 8 as xformers requires for memory alignment. Only the batch rows and
        heads the mask depends on are stored; the others are broadcast views (stride 0), which
        xformers reads as they are, so a head-independent mask costs ``Lq * Lk`` entries per
        batch row, not ``H * Lq * Lk`` (8 GiB instead of 128 GiB for 16 heads at 64k tokens).
        """
        structured = self._structured_xformers_bias(B, H, Lq, Lk, dtype)
        if structured is not None:
            return structured
        device = torch.device(device)

        def build() -> Tensor:
            dense, _ = self.safe_dense(B, H, Lq, Lk, device)
            gb, gh = dense.shape[0], dense.shape[1]
            padded_len = math.ceil(Lk / 8) * 8
            storage = torch.zeros(gb, gh, Lq, padded_len, device=device, dtype=dtype)
            bias = storage[..., :Lk]
            bias.masked_fill_(~dense.expand(gb, gh, Lq, Lk), float("-inf"))
            return bias.expand(B, H, Lq, Lk)

        return _cached((self, "xformers", B, H, Lq, Lk, device, dtype), build, B, H, Lq, Lk)

    def _structured_xformers_bias(self, B: int, H: int, Lq: int, Lk: int, dtype: torch.dtype) -> Any:
        return None

    def __and__(self, other: MaskSpec) -> AndMask:
        if not isinstance(other, MaskSpec):
            return NotImplemented
        return AndMask(self, other)


@dataclass(frozen=True)
class Causal(MaskSpec):
    """Causal mask: query ``i`` may attend key ``j`` iff ``j <= i + offset``.

    ``offset=0`` is top-left aligned (``is_causal`` in SDPA). When decoding with a KV
    cache, ``Lq`` new queries follow ``Lk - Lq`` cached keys: use ``offset = Lk - Lq``
    (``Causal.bottom_right(Lq, Lk)``). A negative offset can leave rows fully masked.
    """

    offset: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.offset, int | torch.SymInt):
            raise ValueError(f"Causal offset must be an int, got {type(self.offset).__name__}")

    @classmethod
    def bottom_right(cls, Lq: int, Lk: int) -> Causal:
        """Causal mask for ``Lq`` queries appended after ``Lk - Lq`` cached keys."""
        return cls(offset=Lk - Lq)

    def _allowed(self, b, h, q_idx, kv_idx, device):
        return kv_idx <= q_idx + self.offset

    def _structured_xformers_bias(self, B, H, Lq, Lk, dtype):
        from xformers.ops.fmha import attn_bias

        if self.offset == 0 and Lq == Lk:
            return attn_bias.LowerTriangularMask()
        if self.offset == Lk - Lq and Lq <= Lk:
            return attn_bias.LowerTriangularFromBottomRightMask()
        return None


@dataclass(frozen=True, eq=False)
class KeyPadding(MaskSpec):
    """Key padding: batch row ``b`` may attend keys ``j < lengths[b]``.

    Args:
        lengths: ``(B,)`` integer tensor of valid key counts (valid keys form a prefix).
    """

    lengths: Tensor
    batch_dependent = True

    def __post_init__(self) -> None:
        lengths = self.lengths
        if not isinstance(lengths, Tensor):
            lengths = torch.as_tensor(lengths)
            object.__setattr__(self, "lengths", lengths)
        if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise ValueError(
                f"KeyPadding lengths must be a 1-D integer tensor (B,), got {lengths.dtype} "
                f"{tuple(lengths.shape)}"
            )
        if _is_static(*lengths.shape) and not _tracing() and lengths.numel() and bool((lengths < 0).any()):
            raise ValueError(f"KeyPadding lengths must be >= 0, got {lengths.tolist()}")

    @classmethod
    def from_bool(cls, valid: Tensor) -> KeyPadding:
        """Build from a ``(B, Lk)`` bool tensor whose True entries form a prefix of each row."""
        if valid.dim() != 2 or valid.dtype != torch.bool:
            raise ValueError(
                f"KeyPadding.from_bool expects a (B, Lk) bool tensor, got {valid.dtype} {tuple(valid.shape)}"
            )
        lengths = valid.sum(dim=1)
        prefix = torch.arange(valid.shape[1], device=valid.device)[None, :] < lengths[:, None]
        if not torch.equal(prefix, valid):
            raise ValueError(
                "KeyPadding.from_bool: valid keys must form a prefix of each row; "
                "pass the bool tensor as `mask` instead for arbitrary patterns"
            )
        return cls(lengths)

    def validate(self, B, H, Lq, Lk):
        if self.lengths.shape[0] != B:
            raise ValueError(f"KeyPadding has {self.lengths.shape[0]} lengths but the batch size is {B}")
        if _is_static(B, Lk) and not _tracing() and B and bool((self.lengths > Lk).any()):
            raise ValueError(f"KeyPadding lengths {self.lengths.tolist()} exceed the key length Lk={Lk}")

    def _grid_sizes(self, B, H):
        return B, 1

    def _allowed(self, b, h, q_idx, kv_idx, device):
        return kv_idx < self.lengths.to(device)[b]

    def _layout_batch(self):
        return self.lengths.shape[0]


@dataclass(frozen=True, eq=False)
class VarLen(MaskSpec):
    """Several sequences packed along the length of one row (block-diagonal attention).

    Token ``i`` of the packed row may attend token ``j`` iff both lie in the same
    sequence (and ``j <= i`` when ``causal``). Positions beyond ``sum(seq_lens)`` are
    padding and attend nothing. The same packing applies to queries and keys.

    Args:
        seq_lens: lengths of the packed sequences (list or 1-D integer tensor).
        causal: causal attention inside each sequence.
    """

    seq_lens: Sequence[int] | Tensor
    causal: bool = False

    def __post_init__(self) -> None:
        lens = [
            int(n) for n in (self.seq_lens.tolist() if isinstance(self.seq_lens, Tensor) else self.seq_lens)
        ]
        if not lens or any(n <= 0 for n in lens):
            raise ValueError(f"VarLen seq_lens must be a non-empty list of positive ints, got {lens}")
        object.__setattr__(self, "seq_lens", tuple(lens))
        doc = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
        object.__setattr__(self, "_doc_ids", doc)

    @property
    def total(self) -> int:
        return sum(self.seq_lens)

    def validate(self, B, H, Lq, Lk):
        if _is_static(Lq, Lk) and (self.total > Lq or self.total > Lk):
            raise ValueError(
                f"VarLen packs {self.total} tokens (seq_lens={list(self.seq_lens)}) but Lq={Lq}, Lk={Lk}"
            )

    def _allowed(self, b, h, q_idx, kv_idx, device):
        n = self.total
        doc = self._doc_ids.to(device)
        same = doc[q_idx.clamp(max=n - 1)] == doc[kv_idx.clamp(max=n - 1)]
        allowed = same & (q_idx < n) & (kv_idx < n)
        if self.causal:
            allowed = allowed & (kv_idx <= q_idx)
        return allowed

    def _structured_xformers_bias(self, B, H, Lq, Lk, dtype):
        if B != 1 or Lq != Lk:
            return None
        from xformers.ops.fmha import attn_bias

        lens = list(self.seq_lens) + ([Lq - self.total] if Lq > self.total else [])
        bias = attn_bias.BlockDiagonalMask.from_seqlens(lens)
        return bias.make_causal() if self.causal else bias


@dataclass(frozen=True)
class SlidingWindow(MaskSpec):
    """Local attention: query ``i`` attends keys with ``i - window < j <= i`` when causal,
    or ``|i - j| < window`` otherwise (``window`` counts the query's own position)."""

    window: int
    causal: bool = True
    block_sparse = True

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or self.window <= 0:
            raise ValueError(f"SlidingWindow window must be a positive int, got {self.window!r}")

    def _allowed(self, b, h, q_idx, kv_idx, device):
        if self.causal:
            return (kv_idx <= q_idx) & (q_idx - kv_idx < self.window)
        return (q_idx - kv_idx).abs() < self.window

    def _structured_xformers_bias(self, B, H, Lq, Lk, dtype):
        # xformers serves its local-attention biases with the FlashAttention operator only (half
        # precision; its CUTLASS backward has no local-causal bias): float32 takes the dense bias
        if Lq != Lk or dtype not in (torch.float16, torch.bfloat16):
            return None
        from xformers.ops.fmha import attn_bias

        if self.causal:  # keys at distance 0 .. window - 1 behind the query
            return attn_bias.LowerTriangularFromBottomRightLocalAttentionMask(self.window)
        return attn_bias.LocalAttentionFromBottomRightMask(
            window_left=self.window - 1, window_right=self.window - 1
        )


@dataclass(frozen=True)
class SinkWindow(MaskSpec):
    """Streaming attention (StreamingLLM): query ``i`` attends the first ``sinks`` keys and
    the last ``window`` keys up to itself, causally: ``j <= i and (j < sinks or i - j < window)``."""

    sinks: int
    window: int
    block_sparse = True

    def __post_init__(self) -> None:
        if not isinstance(self.sinks, int) or self.sinks < 0:
            raise ValueError(f"SinkWindow sinks must be an int >= 0, got {self.sinks!r}")
        if not isinstance(self.window, int) or self.window <= 0:
            raise ValueError(f"SinkWindow window must be a positive int, got {self.window!r}")

    def _allowed(self, b, h, q_idx, kv_idx, device):
        return (kv_idx <= q_idx) & ((kv_idx < self.sinks) | (q_idx - kv_idx < self.window))


@dataclass(frozen=True)
class PowerAttention(MaskSpec):
    """PowerAttention's sparse pattern ("PowerAttention: Exponentially Scaling of Receptive Fields
    for Effective Sparse Attention", Chen et al., 2025): besides a local window, a query attends
    the keys whose distance is a power of two, so stacking ``n`` layers reaches ``2^n`` tokens
    back with ``O(log L)`` keys per query.

    Distances are counted in blocks of ``block_size`` tokens (``qb = i // block_size``,
    ``kb = j // block_size``, ``d = qb - kb``, or ``|qb - kb|`` when not causal): query ``i``
    attends key ``j`` iff (``j <= i`` when causal) and (``d < window`` or ``d`` is a power of two
    or ``kb < sinks``). ``window`` and ``sinks`` count blocks; ``window >= 1`` keeps the diagonal
    block, so every query sees at least itself.
    """

    block_size: int = 1
    window: int = 1
    sinks: int = 0
    causal: bool = True
    block_sparse = True

    def __post_init__(self) -> None:
        if not isinstance(self.block_size, int) or self.block_size <= 0:
            raise ValueError(f"PowerAttention block_size must be a positive int, got {self.block_size!r}")
        if not isinstance(self.window, int) or self.window <= 0:
            raise ValueError(f"PowerAttention window must be a positive int (blocks), got {self.window!r}")
        if not isinstance(self.sinks, int) or self.sinks < 0:
            raise ValueError(f"PowerAttention sinks must be an int >= 0 (blocks), got {self.sinks!r}")

    def _allowed(self, b, h, q_idx, kv_idx, device):
        qb = q_idx // self.block_size
        kb = kv_idx // self.block_size
        distance = qb - kb if self.causal else (qb - kb).abs()
        power_of_two = (distance > 0) & ((distance & (distance - 1)) == 0)
        allowed = (distance < self.window) | power_of_two | (kb < self.sinks)
        if self.causal:
            allowed = allowed & (kv_idx <= q_idx)
        return allowed


@dataclass(frozen=True, eq=False)
class BlockSparse(MaskSpec):
    """Block-sparse pattern: query block ``qb`` attends key block ``kb`` of head ``h`` iff
    ``layout[h, qb, kb]`` (``layout`` has 1 head, shared by all heads, or H heads).

    Args:
        layout: bool ``(H or 1, nQb, nKb)``.
        block_size: tokens per block, for queries and keys.
    """

    layout: Tensor
    block_size: int
    block_sparse = True

    def __post_init__(self) -> None:
        if not isinstance(self.layout, Tensor) or self.layout.dim() != 3 or self.layout.dtype != torch.bool:
            shape = (
                tuple(self.layout.shape) if isinstance(self.layout, Tensor) else type(self.layout).__name__
            )
            raise ValueError(f"BlockSparse layout must be a bool tensor (H or 1, nQb, nKb), got {shape}")
        if not isinstance(self.block_size, int) or self.block_size <= 0:
            raise ValueError(f"BlockSparse block_size must be a positive int, got {self.block_size!r}")

    @property
    def head_dependent(self) -> bool:  # type: ignore[override]
        return self.layout.shape[0] > 1

    def validate(self, B, H, Lq, Lk):
        heads, nqb, nkb = self.layout.shape
        if heads not in (1, H):
            raise ValueError(f"BlockSparse layout has {heads} heads but attention has H={H}")
        if _is_static(Lq, Lk) and (nqb * self.block_size < Lq or nkb * self.block_size < Lk):
            raise ValueError(
                f"BlockSparse layout {tuple(self.layout.shape)} with block_size={self.block_size} "
                f"covers {nqb * self.block_size}x{nkb * self.block_size} but scores are {Lq}x{Lk}"
            )

    def _allowed(self, b, h, q_idx, kv_idx, device):
        layout = self.layout.to(device)
        _, nqb, nkb = layout.shape
        head = h if layout.shape[0] > 1 else torch.zeros_like(h)
        qb = (q_idx // self.block_size).clamp(max=nqb - 1)
        kb = (kv_idx // self.block_size).clamp(max=nkb - 1)
        return layout[head, qb, kb]

    def to_block_layout(self, Lq, Lk, block_size, *, num_heads=1):
        if block_size == self.block_size:
            self.validate(1, self.layout.shape[0], Lq, Lk)
            return self.layout[:, : math.ceil(Lq / block_size), : math.ceil(Lk / block_size)]
        return super().to_block_layout(Lq, Lk, block_size, num_heads=num_heads)

    def _layout_heads(self, num_heads):
        return self.layout.shape[0]


@dataclass(frozen=True, eq=False)
class DenseMask(MaskSpec):
    """An explicit bool mask broadcastable to ``(B, H, Lq, Lk)`` (True = may attend)."""

    mask: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.mask, Tensor) or self.mask.dtype != torch.bool:
            got = self.mask.dtype if isinstance(self.mask, Tensor) else type(self.mask).__name__
            raise ValueError(f"mask tensor must be bool (True = may attend), got {got}")
        if self.mask.dim() > 4:
            raise ValueError(
                f"mask tensor must have at most 4 dims (B, H, Lq, Lk), got {tuple(self.mask.shape)}"
            )

    @property
    def _mask4(self) -> Tensor:
        m = self.mask
        return m.view((1,) * (4 - m.dim()) + tuple(m.shape))

    @property
    def batch_dependent(self) -> bool:  # type: ignore[override]
        return self._mask4.shape[0] > 1

    @property
    def head_dependent(self) -> bool:  # type: ignore[override]
        return self._mask4.shape[1] > 1

    def validate(self, B, H, Lq, Lk):
        mb, mh, mq, mk = self._mask4.shape
        for got, want in ((mb, B), (mh, H), (mq, Lq), (mk, Lk)):
            if _is_static(got, want) and got not in (1, want):
                raise ValueError(
                    f"mask of shape {tuple(self.mask.shape)} is not broadcastable to "
                    f"(B, H, Lq, Lk)=({B}, {H}, {Lq}, {Lk})"
                )

    def to_dense(self, B, H, Lq, Lk, device="cpu"):
        self.validate(B, H, Lq, Lk)
        return self._mask4.to(device)

    def row_valid(self, B, H, Lq, Lk, device="cpu"):
        return self.to_dense(B, H, Lq, Lk, device).any(dim=-1, keepdim=True)

    def _version_key(self, device: torch.device, *extra: Any) -> tuple:
        """What a remembered form of this mask depends on: device, ``extra`` and the tensor's
        version (bumped by in-place edits; inference tensors have none and count as never edited)."""
        version = None if self.mask.is_inference() else self.mask._version
        return (str(device), *extra, version)

    def safe_dense(self, B, H, Lq, Lk, device="cpu"):
        """As ``MaskSpec.safe_dense``, without a copy of the mask when no row is empty.

        From the second call on the same spec (a spec reused across layers and steps), whether some
        row is empty is checked once per device and tensor version (one host sync) and remembered
        on the spec; a mask with no empty row is then returned as is, with validity ``None``. The
        first call, and every call while tracing, return the opened copy and the validity without
        looking at the data, so a spec used once costs no sync.
        """
        dense = self.to_dense(B, H, Lq, Lk, device)
        if _tracing() or not _is_static(*dense.shape):
            valid = dense.any(dim=-1, keepdim=True)
            return dense | ~valid, valid
        key = self._version_key(dense.device)
        memo = self.__dict__.setdefault("_row_valid_memo", {})
        if memo.get(key, "first") in ("first", "seen"):
            valid = dense.any(dim=-1, keepdim=True)
            if key not in memo:
                memo.clear()  # only the current version of the tensor is asked for again
                memo[key] = "seen"
                return dense | ~valid, valid
            memo[key] = None if bool(valid.all()) else valid
        valid = memo[key]
        return (dense, None) if valid is None else (dense | ~valid, valid)

    def additive_bias(
        self, B: int, H: int, Lq: int, Lk: int, device: torch.device | str, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor | None]:
        """``safe_dense`` as an additive float bias of ``dtype`` (0 = may attend, -inf = may not),
        kept on this spec per device, dtype and tensor version, with rows padded to a multiple of 16
        elements (a view of the first ``Lk``), the alignment SDPA's fused kernels want for a bias.

        A bool mask given to SDPA is converted to such a bias (and padded) inside every call; a spec
        reused across layers and steps pays that once. While tracing it returns the bool mask.
        """
        dense, valid = self.safe_dense(B, H, Lq, Lk, device)
        if _tracing() or not _is_static(*dense.shape):
            return dense, valid
        key = self._version_key(dense.device, dtype)
        memo = self.__dict__.setdefault("_bias_memo", {})
        if key not in memo:
            memo.clear()
            *lead, lk = dense.shape
            padded = torch.full((*lead, -(-lk // 16) * 16), float("-inf"), dtype=dtype, device=dense.device)
            memo[key] = padded.narrow(-1, 0, lk).masked_fill_(dense, 0.0)
        return memo[key], valid

    def _allowed(self, b, h, q_idx, kv_idx, device):
        m = self._mask4.to(device)
        mb, mh, mq, mk = m.shape
        zero = torch.zeros_like(q_idx)
        return m[
            b if mb > 1 else zero,
            h if mh > 1 else zero,
            q_idx if mq > 1 else zero,
            kv_idx if mk > 1 else zero,
        ]

    def _layout_batch(self):
        return self._mask4.shape[0]

    def _layout_heads(self, num_heads):
        return self._mask4.shape[1]


@dataclass(frozen=True, eq=False)
class AndMask(MaskSpec):
    """Intersection of specs: a key is allowed iff every spec allows it (``a & b``)."""

    specs: tuple[MaskSpec, ...] = field(default=())

    def __init__(self, *specs: MaskSpec) -> None:
        flat: list[MaskSpec] = []
        for spec in specs:
            if not isinstance(spec, MaskSpec):
                raise ValueError(f"AndMask takes MaskSpec arguments, got {type(spec).__name__}")
            flat.extend(spec.specs if isinstance(spec, AndMask) else (spec,))
        if not flat:
            raise ValueError("AndMask needs at least one spec")
        object.__setattr__(self, "specs", tuple(flat))

    @property
    def batch_dependent(self) -> bool:  # type: ignore[override]
        return any(s.batch_dependent for s in self.specs)

    @property
    def head_dependent(self) -> bool:  # type: ignore[override]
        return any(s.head_dependent for s in self.specs)

    @property
    def block_sparse(self) -> bool:  # type: ignore[override]
        return any(s.block_sparse for s in self.specs)

    def validate(self, B, H, Lq, Lk):
        for spec in self.specs:
            spec.validate(B, H, Lq, Lk)

    def _grid_sizes(self, B, H):
        sizes = [s._grid_sizes(B, H) for s in self.specs]
        return max(b for b, _ in sizes), max(h for _, h in sizes)

    def _allowed(self, b, h, q_idx, kv_idx, device):
        allowed = self.specs[0]._allowed(b, h, q_idx, kv_idx, device)
        for spec in self.specs[1:]:
            allowed = allowed & spec._allowed(b, h, q_idx, kv_idx, device)
        return allowed

    def to_dense(self, B, H, Lq, Lk, device="cpu"):
        device = torch.device(device)
        self.validate(B, H, Lq, Lk)
        gb, gh = self._grid_sizes(B, H)

        def build() -> Tensor:
            dense = self.specs[0].to_dense(B, H, Lq, Lk, device)
            for spec in self.specs[1:]:
                dense = dense & spec.to_dense(B, H, Lq, Lk, device)
            return dense

        return _cached((self, "dense", gb, gh, Lq, Lk, device), build, gb, gh, Lq, Lk)

    def _layout_batch(self):
        return max(s._layout_batch() for s in self.specs)

    def _layout_heads(self, num_heads):
        return max(s._layout_heads(num_heads) for s in self.specs)
