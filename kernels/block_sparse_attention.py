"""Block-sparse flash attention in Triton: forward and backward.

Softmax attention ``out = softmax(q k^T * scale, masked) v`` computed FlashAttention-2 style
(Dao, 2023: tiles of queries, online softmax with a running max and sum, the log-sum-exp saved
for the backward pass, ``dq``/``dk``/``dv`` recomputing the probabilities), visiting only the
key blocks a mask allows.

Layout and element masks (:class:`BlockIndex`):

- The score matrix is cut into ``block_m x block_n`` tiles. For every (mask batch, mask head,
  query block) a CSR row lists the active key blocks; the transposed (CSC) lists give, for every
  key block, the query blocks that use it (the ``dk``/``dv`` pass walks those).
- Every active block is either *full* (every in-range entry allowed; tile id ``-1``) or *partial*
  (diagonal blocks of causal/window masks, window edges, varlen boundaries, padded keys): a
  partial block stores its exact element mask as an ``int8 (block_m, block_n)`` tile, which the
  kernel loads (predicated off for full blocks). Out-of-range rows/columns (lengths not
  multiples of the block size) are masked by bounds checks in the kernel.
- The mask batch/head dims are 1 or ``B``/``H``: batch-dependent masks (key padding) get their
  own block lists per batch row, so padded key blocks are skipped, not just masked.

Indices are built by :func:`build_block_index` from an element rule ``allowed(b, h, q_idx,
kv_idx) -> bool`` (the FlexAttention ``mask_mod`` convention, which every mask spec of
``shared_attention.masks`` provides), evaluated on the device in chunks of query rows, or by
:func:`block_index_from_layout` from a plain block layout ``(H or 1, nQb, nKb)``.

Query rows with no allowed key output zeros and get zero gradients (the convention of the
attention core). Grouped-query attention: ``q (B, H, Lq, D)``, ``k (B, Hkv, Lk, D)``,
``v (B, Hkv, Lk, Dv)`` with ``H % Hkv == 0``; query head ``h`` reads kv head ``h // (H // Hkv)``.

Reference it must match: ``shared_attention.backends.math.math_attention``, i.e.
``shared_attention.attention(q, k, v, mask=spec, backend="math")``; tests in
``tests/kernels/test_block_sparse_attention.py`` compare values and gradients under
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = [
    "BlockIndex",
    "build_block_index",
    "block_index_from_layout",
    "block_sparse_attention",
    "default_block_size",
    "default_tiles",
    "TILE_AREA_SLACK",
    "INTERPRETED",
    "MAX_HEAD_DIM",
]

# Triton decides at decoration time whether kernels run in the interpreter.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_HEAD_DIM = 256
_LOG2E = 1.4426950408889634
_CHUNK_ELEMENTS = 1 << 24

AllowedFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def default_block_size(device: torch.device | str) -> int:
    """Tile edge used for layouts: 64 on GPUs, 32 in the interpreter (fewer, larger tiles run faster there)."""
    return 32 if torch.device(device).type == "cpu" else 64


# Tile shapes (queries x keys) of the forward, dq and dk/dv passes on GPUs for head dims up to 64,
# measured per pass on an H100 (bench/kernel_tuning.py --passes, window 1024 at 64k: forward
# 128 x 64 0.85x the time of 64 x 64, dq 64 x 32 0.84x, dk/dv 64 x 64 best). Larger heads keep
# 64 x 64 in every pass.
GPU_TILES: dict[str, tuple[int, int]] = {"forward": (128, 64), "dq": (64, 32), "dkdv": (64, 64)}
# A pass uses its own tile shape only when its index visits at most this many times the score
# entries that the base square tiles visit: coarser tiles waste work on masks whose blocks are
# finer than the tile (PowerAttention with 64-blocks under 128-row tiles).
TILE_AREA_SLACK = 1.25


def default_tiles(device: torch.device | str, head_dim: int) -> dict[str, tuple[int, int]]:
    """Tile shape of each pass (``forward``, ``dq``, ``dkdv``) before the area check."""
    base = default_block_size(device)
    if torch.device(device).type == "cpu" or head_dim > 64:
        return {kind: (base, base) for kind in ("forward", "dq", "dkdv")}
    return dict(GPU_TILES)


@dataclass(frozen=True)
class BlockIndex:
    """Which tiles of the score matrix a kernel visits, and the element masks of partial ones.

    Rows of the CSR/CSC lists are numbered ``(mb * mask_heads + mh) * n_blocks + block`` where
    ``mb``/``mh`` are the batch row / head when the mask depends on them, else 0.

    Attributes:
        block_m, block_n: tile size (queries x keys).
        q_len, k_len: the score matrix it was built for.
        mask_batch, mask_heads: 1, or the batch size / number of query heads it depends on.
        row_ptr: int32 ``(mask_batch * mask_heads * nQb + 1,)`` CSR offsets.
        row_kb: int32 ``(nnz,)`` key block of each CSR entry.
        row_tile: int32 ``(nnz,)`` tile id of each CSR entry, -1 for a full block.
        row_mid: int32 ``(mask_batch * mask_heads * nQb,)``: in each row, entries ``row_ptr[r] :
            row_mid[r]`` are full blocks that need no masking at all (no element mask, inside the
            key range), entries ``row_mid[r] : row_ptr[r + 1]`` need the masked path.
        col_ptr: int32 ``(mask_batch * mask_heads * nKb + 1,)`` CSC offsets.
        col_qb: int32 ``(nnz,)`` query block of each CSC entry.
        col_tile: int32 ``(nnz,)`` tile id of each CSC entry, -1 for a full block.
        col_mid: int32, like ``row_mid`` for the CSC lists (also masked: ragged query blocks).
        tiles: int8 ``(n_tiles, block_m, block_n)``, 1 = allowed (at least one dummy tile).
        density: active blocks / all blocks, averaged over mask batch and heads.
    """

    block_m: int
    block_n: int
    q_len: int
    k_len: int
    mask_batch: int
    mask_heads: int
    row_ptr: Tensor
    row_kb: Tensor
    row_tile: Tensor
    row_mid: Tensor
    col_ptr: Tensor
    col_qb: Tensor
    col_tile: Tensor
    col_mid: Tensor
    tiles: Tensor
    density: float

    @property
    def n_q_blocks(self) -> int:
        return math.ceil(self.q_len / self.block_m)

    @property
    def n_k_blocks(self) -> int:
        return math.ceil(self.k_len / self.block_n)

    @property
    def n_partial(self) -> int:
        return int((self.row_tile >= 0).sum())

    def visited_entries(self) -> int:
        """Score entries the kernels visit (active tiles times the tile area), over all mask rows/heads."""
        return int(self.row_ptr[-1]) * self.block_m * self.block_n

    def check(self, batch: int, heads: int, q_len: int, k_len: int, device: torch.device) -> None:
        """Raise ValueError unless the index serves a ``(batch, heads, q_len, k_len)`` call on ``device``."""
        if (q_len, k_len) != (self.q_len, self.k_len):
            raise ValueError(
                f"BlockIndex built for Lq={self.q_len}, Lk={self.k_len}, called with Lq={q_len}, Lk={k_len}"
            )
        if self.mask_batch not in (1, batch) or self.mask_heads not in (1, heads):
            raise ValueError(
                f"BlockIndex has mask batch {self.mask_batch} / heads {self.mask_heads}, "
                f"call has B={batch}, H={heads}"
            )
        if self.row_ptr.device != device:
            raise ValueError(f"BlockIndex lives on {self.row_ptr.device}, tensors on {device}")


def _csr(active: Tensor, tile_id: Tensor, masked: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CSR of a bool ``(..., rows, cols)`` grid: offsets over the flattened rows, columns, tile ids,
    and per row the offset where the entries that need masking (``masked``) start: each row lists
    its unmasked entries first, then the masked ones, each group in column order."""
    rows = active.reshape(-1, active.shape[-1])
    counts = rows.sum(dim=1)
    ptr = torch.zeros(rows.shape[0] + 1, dtype=torch.int32, device=active.device)
    ptr[1:] = counts.cumsum(0)
    flat_row, col = rows.nonzero(as_tuple=True)
    needs_mask = masked.expand(active.shape).reshape(rows.shape)[flat_row, col]
    order = torch.argsort(flat_row * 2 + needs_mask.long(), stable=True)
    flat_row, col = flat_row[order], col[order]
    tiles = tile_id.reshape(-1, tile_id.shape[-1])[flat_row, col]
    unmasked = (rows & ~masked.expand(active.shape).reshape(rows.shape)).sum(dim=1)
    mid = ptr[:-1] + unmasked.to(torch.int32)
    return ptr, col.to(torch.int32), tiles.to(torch.int32), mid


def _finish_index(
    active: Tensor, tile_id: Tensor, tiles: Tensor, block_m: int, block_n: int, q_len: int, k_len: int
) -> BlockIndex:
    device = active.device
    nqb, nkb = active.shape[-2], active.shape[-1]
    ragged_k = torch.zeros(nkb, dtype=torch.bool, device=device)
    ragged_k[-1] = k_len % block_n != 0
    ragged_q = torch.zeros(nqb, dtype=torch.bool, device=device)
    ragged_q[-1] = q_len % block_m != 0
    # Rows (forward, dq): a tile needs masking when it has an element mask or its keys run past
    # k_len (query rows past q_len are never stored). Columns (dk, dv): also when its queries do.
    row_masked = (tile_id >= 0) | ragged_k
    col_masked = row_masked | ragged_q[:, None]
    row_ptr, row_kb, row_tile, row_mid = _csr(active, tile_id, row_masked)
    col_ptr, col_qb, col_tile, col_mid = _csr(
        active.transpose(-1, -2), tile_id.transpose(-1, -2), col_masked.transpose(-1, -2)
    )
    if tiles.shape[0] == 0:
        tiles = torch.ones(1, block_m, block_n, dtype=torch.int8, device=device)
    return BlockIndex(
        block_m=block_m,
        block_n=block_n,
        q_len=q_len,
        k_len=k_len,
        mask_batch=active.shape[0],
        mask_heads=active.shape[1],
        row_ptr=row_ptr,
        row_kb=row_kb,
        row_tile=row_tile,
        row_mid=row_mid,
        col_ptr=col_ptr,
        col_qb=col_qb,
        col_tile=col_tile,
        col_mid=col_mid,
        tiles=tiles.contiguous(),
        density=float(active.float().mean()) if active.numel() else 0.0,
    )


def build_block_index(
    allowed: AllowedFn | None,
    q_len: int,
    k_len: int,
    *,
    mask_batch: int = 1,
    mask_heads: int = 1,
    block_m: int = 64,
    block_n: int = 64,
    device: torch.device | str = "cpu",
) -> BlockIndex:
    """Build the block lists and partial-block tiles of an element mask.

    Args:
        allowed: ``allowed(b, h, q_idx, kv_idx) -> bool`` on broadcast index tensors (the
            FlexAttention ``mask_mod`` convention); ``None`` means every key is allowed.
        q_len, k_len: score matrix size.
        mask_batch, mask_heads: how many batch rows / heads the rule distinguishes (1 = shared).
        block_m, block_n: tile size; the kernels use the same.
        device: where the rule is evaluated and the index lives (the tensors' device).

    The rule is evaluated in chunks of query blocks (about 16M entries each), so building costs
    ``O(Lq * Lk)`` cheap element ops once per (mask, shape); cache the result.
    """
    device = torch.device(device)
    nqb, nkb = math.ceil(q_len / block_m), math.ceil(k_len / block_n)
    if allowed is None:
        active = torch.ones(1, 1, nqb, nkb, dtype=torch.bool, device=device)
        tile_id = torch.full(active.shape, -1, dtype=torch.int32, device=device)
        tiles = torch.empty(0, block_m, block_n, dtype=torch.int8, device=device)
        return _finish_index(active, tile_id, tiles, block_m, block_n, q_len, k_len)
    grid_b = torch.arange(mask_batch, device=device).view(-1, 1, 1, 1)
    grid_h = torch.arange(mask_heads, device=device).view(1, -1, 1, 1)
    kv_idx = torch.arange(k_len, device=device).view(1, 1, 1, -1)
    padded_k = nkb * block_n
    per_qblock = mask_batch * mask_heads * block_m * padded_k
    chunk_blocks = max(1, _CHUNK_ELEMENTS // per_qblock)
    active = torch.zeros(mask_batch, mask_heads, nqb, nkb, dtype=torch.bool, device=device)
    tile_id = torch.full(active.shape, -1, dtype=torch.int32, device=device)
    tile_chunks: list[Tensor] = []
    n_tiles = 0
    for qb0 in range(0, nqb, chunk_blocks):
        qb1 = min(nqb, qb0 + chunk_blocks)
        row0, row1 = qb0 * block_m, min(q_len, qb1 * block_m)
        q_idx = torch.arange(row0, row1, device=device).view(1, 1, -1, 1)
        values = allowed(grid_b, grid_h, q_idx, kv_idx).to(torch.bool)
        values = values.expand(mask_batch, mask_heads, row1 - row0, k_len)
        rows = (qb1 - qb0) * block_m
        entries = torch.zeros(mask_batch, mask_heads, rows, padded_k, dtype=torch.bool, device=device)
        entries[:, :, : row1 - row0, :k_len] = values
        in_range = torch.zeros(rows, padded_k, dtype=torch.bool, device=device)
        in_range[: row1 - row0, :k_len] = True
        blocked = entries.view(mask_batch, mask_heads, qb1 - qb0, block_m, nkb, block_n)
        any_allowed = blocked.any(dim=5).any(dim=3)
        outside = (~in_range).view(1, 1, qb1 - qb0, block_m, nkb, block_n)
        all_allowed = (blocked | outside).all(dim=5).all(dim=3)
        partial = any_allowed & ~all_allowed
        active[:, :, qb0:qb1] = any_allowed
        count = int(partial.sum())
        if count:
            ids = torch.full(partial.shape, -1, dtype=torch.int32, device=device)
            ids[partial] = torch.arange(n_tiles, n_tiles + count, dtype=torch.int32, device=device)
            tile_id[:, :, qb0:qb1] = ids
            tile_chunks.append(blocked.permute(0, 1, 2, 4, 3, 5)[partial].to(torch.int8))
            n_tiles += count
    tiles = (
        torch.cat(tile_chunks)
        if tile_chunks
        else torch.empty(0, block_m, block_n, dtype=torch.int8, device=device)
    )
    if tiles.shape[0] > 1:
        # Keep one copy of each distinct element mask (a window has two: the diagonal and the
        # window's far edge), so the partial tiles the kernels read stay in cache.
        tiles, inverse = torch.unique(tiles.view(tiles.shape[0], -1), dim=0, return_inverse=True)
        tiles = tiles.view(-1, block_m, block_n)
        partial = tile_id >= 0
        tile_id[partial] = inverse.to(torch.int32)[tile_id[partial].long()]
    return _finish_index(active, tile_id, tiles, block_m, block_n, q_len, k_len)


def block_index_from_layout(
    layout: Tensor, block_size: int, q_len: int, k_len: int, device: torch.device | str | None = None
) -> BlockIndex:
    """Index of a plain block layout: bool ``(H or 1, nQb, nKb)``, every active block fully allowed.

    This is the form ``MaskSpec.to_block_layout`` and ``BlockSparse`` use; lengths that are not
    multiples of ``block_size`` are handled by the kernels' bounds checks.
    """
    if layout.dim() != 3 or layout.dtype != torch.bool:
        raise ValueError(
            f"layout must be a bool tensor (H or 1, nQb, nKb), got {layout.dtype} {tuple(layout.shape)}"
        )
    nqb, nkb = math.ceil(q_len / block_size), math.ceil(k_len / block_size)
    if layout.shape[1] < nqb or layout.shape[2] < nkb:
        raise ValueError(
            f"layout {tuple(layout.shape)} with block_size={block_size} does not cover Lq={q_len}, Lk={k_len}"
        )
    device = torch.device(device) if device is not None else layout.device
    active = layout[None, :, :nqb, :nkb].to(device)
    tile_id = torch.full(active.shape, -1, dtype=torch.int32, device=device)
    tiles = torch.empty(0, block_size, block_size, dtype=torch.int8, device=device)
    return _finish_index(active, tile_id, tiles, block_size, block_size, q_len, k_len)


@triton.jit
def _tile_allowed(
    tiles_ptr,
    tile,
    offs_m,
    offs_n,
    q_len,
    k_len,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    TRANSPOSED: tl.constexpr,
):
    """Bool tile of allowed entries: bounds, and the stored element mask when ``tile >= 0``.

    ``(BLOCK_M, BLOCK_N)``, or ``(BLOCK_N, BLOCK_M)`` when ``TRANSPOSED``.
    """
    base = tiles_ptr + tl.maximum(tile, 0).to(tl.int64) * (BLOCK_M * BLOCK_N)
    if TRANSPOSED:
        in_range = (offs_n[:, None] < k_len) & (offs_m[None, :] < q_len)
        local = tl.arange(0, BLOCK_N)[:, None] + tl.arange(0, BLOCK_M)[None, :] * BLOCK_N
    else:
        in_range = (offs_m[:, None] < q_len) & (offs_n[None, :] < k_len)
        local = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    element = tl.load(base + local, mask=in_range & (tile >= 0), other=1)
    return in_range & (element != 0)


@triton.jit
def _load_rows(
    base, offs_rows, offs_cols, stride_row, n_rows, n_cols, CHECK_ROWS: tl.constexpr, EVEN_COLS: tl.constexpr
):
    """``(rows, cols)`` tile of a row-major matrix with unit column stride; bounds masks only where
    they are needed (``CHECK_ROWS``; columns unless ``EVEN_COLS``), so full tiles load unmasked."""
    ptrs = base + offs_rows[:, None] * stride_row + offs_cols[None, :]
    if CHECK_ROWS:
        if EVEN_COLS:
            tile = tl.load(ptrs, mask=offs_rows[:, None] < n_rows, other=0.0)
        else:
            tile = tl.load(
                ptrs, mask=(offs_rows[:, None] < n_rows) & (offs_cols[None, :] < n_cols), other=0.0
            )
    else:
        if EVEN_COLS:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=offs_cols[None, :] < n_cols, other=0.0)
    return tile


@triton.jit
def _fwd_block(
    acc,
    m_i,
    l_i,
    q,
    k_base,
    v_base,
    tiles,
    kb,
    tile,
    offs_m,
    stride_kn,
    stride_vn,
    q_len,
    k_len,
    head_dim,
    v_dim,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
    MASKED: tl.constexpr,
    EVEN_D: tl.constexpr,
):
    """One key block of the online softmax. Unmasked blocks (full, inside the key range) skip the
    bounds and element masks and the guard against all-masked rows."""
    offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    k = _load_rows(k_base, offs_n, tl.arange(0, BLOCK_D), stride_kn, k_len, head_dim, MASKED, EVEN_D)
    qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    if MASKED:
        allowed = _tile_allowed(tiles, tile, offs_m, offs_n, q_len, k_len, BLOCK_M, BLOCK_N, False)
        qk = tl.where(allowed, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_safe = m_new
    # scale and shift in one multiply-add per score (qk_scale > 0 keeps -inf at -inf)
    p = tl.exp2(qk * qk_scale - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_rows(v_base, offs_n, tl.arange(0, BLOCK_DV), stride_vn, k_len, v_dim, MASKED, EVEN_D)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    Out,
    LSE,
    row_ptr,
    row_mid,
    row_kb,
    row_tile,
    tiles,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_ob,
    stride_oh,
    stride_om,
    num_heads,
    group,
    q_len,
    k_len,
    head_dim,
    v_dim,
    mask_b_stride,
    mask_h_stride,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
    SKIP_FULL: tl.constexpr,
    EVEN_D: tl.constexpr,
):
    qb = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // num_heads
    h = bh % num_heads
    hkv = h // group
    row = b * mask_b_stride + h * mask_h_stride + qb
    start = tl.load(row_ptr + row)
    end = tl.load(row_ptr + row + 1)
    if SKIP_FULL:
        mid = tl.load(row_mid + row)
    else:
        mid = start

    offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + hkv.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + hkv.to(tl.int64) * stride_vh
    q = _load_rows(q_base, offs_m, tl.arange(0, BLOCK_D), stride_qm, q_len, head_dim, True, EVEN_D)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    # Full blocks first, with no masking at all, then the blocks that need the element / bounds mask.
    for entry in range(start, mid):
        kb = tl.load(row_kb + entry)
        acc, m_i, l_i = _fwd_block(
            acc, m_i, l_i, q, k_base, v_base, tiles, kb, -1, offs_m, stride_kn, stride_vn,
            q_len, k_len, head_dim, v_dim, qk_scale,
            BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, PRECISION, False, EVEN_D,
        )  # fmt: skip
    for entry in range(mid, end):
        kb = tl.load(row_kb + entry)
        tile = tl.load(row_tile + entry)
        acc, m_i, l_i = _fwd_block(
            acc, m_i, l_i, q, k_base, v_base, tiles, kb, tile, offs_m, stride_kn, stride_vn,
            q_len, k_len, head_dim, v_dim, qk_scale,
            BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, PRECISION, True, EVEN_D,
        )  # fmt: skip
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.log2(l_safe))
    o_base = Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(
        o_base + offs_m[:, None] * stride_om + offs_dv[None, :],
        out.to(Out.dtype.element_ty),
        mask=(offs_m[:, None] < q_len) & (offs_dv[None, :] < v_dim),
    )
    tl.store(LSE + bh.to(tl.int64) * q_len + offs_m, lse, mask=offs_m < q_len)


@triton.jit
def _dq_block(
    dq,
    q,
    do,
    lse,
    delta,
    k_base,
    v_base,
    tiles,
    kb,
    tile,
    offs_m,
    stride_kn,
    stride_vn,
    q_len,
    k_len,
    head_dim,
    v_dim,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
    MASKED: tl.constexpr,
    EVEN_D: tl.constexpr,
):
    offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    k = _load_rows(k_base, offs_n, tl.arange(0, BLOCK_D), stride_kn, k_len, head_dim, MASKED, EVEN_D)
    v = _load_rows(v_base, offs_n, tl.arange(0, BLOCK_DV), stride_vn, k_len, v_dim, MASKED, EVEN_D)
    qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    if MASKED:
        allowed = _tile_allowed(tiles, tile, offs_m, offs_n, q_len, k_len, BLOCK_M, BLOCK_N, False)
        qk = tl.where(allowed, qk, float("-inf"))
    p = tl.exp2(qk * qk_scale - lse[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)


@triton.jit
def _bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    OUT,
    DQ,
    LSE,
    DELTA,
    row_ptr,
    row_mid,
    row_kb,
    row_tile,
    tiles,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_ob,
    stride_oh,
    stride_om,
    stride_dqb,
    stride_dqh,
    stride_dqm,
    num_heads,
    group,
    q_len,
    k_len,
    head_dim,
    v_dim,
    mask_b_stride,
    mask_h_stride,
    qk_scale,
    sm_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
    SKIP_FULL: tl.constexpr,
    EVEN_D: tl.constexpr,
):
    qb = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // num_heads
    h = bh % num_heads
    hkv = h // group
    row = b * mask_b_stride + h * mask_h_stride + qb
    start = tl.load(row_ptr + row)
    end = tl.load(row_ptr + row + 1)
    if SKIP_FULL:
        mid = tl.load(row_mid + row)
    else:
        mid = start

    offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < q_len
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    do_base = DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
    q = _load_rows(q_base, offs_m, offs_d, stride_qm, q_len, head_dim, True, EVEN_D)
    do = _load_rows(do_base, offs_m, tl.arange(0, BLOCK_DV), stride_dom, q_len, v_dim, True, EVEN_D)
    lse = tl.load(LSE + bh.to(tl.int64) * q_len + offs_m, mask=row_ok, other=float("inf"))
    # delta = rowsum(out * grad_out), computed here and stored for the dk/dv pass (which runs after)
    o_base = OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    o = _load_rows(o_base, offs_m, tl.arange(0, BLOCK_DV), stride_om, q_len, v_dim, True, EVEN_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * q_len + offs_m, delta, mask=row_ok)
    k_base = K + b.to(tl.int64) * stride_kb + hkv.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + hkv.to(tl.int64) * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for entry in range(start, mid):
        kb = tl.load(row_kb + entry)
        dq = _dq_block(
            dq, q, do, lse, delta, k_base, v_base, tiles, kb, -1, offs_m, stride_kn, stride_vn,
            q_len, k_len, head_dim, v_dim, qk_scale,
            BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, PRECISION, False, EVEN_D,
        )  # fmt: skip
    for entry in range(mid, end):
        kb = tl.load(row_kb + entry)
        tile = tl.load(row_tile + entry)
        dq = _dq_block(
            dq, q, do, lse, delta, k_base, v_base, tiles, kb, tile, offs_m, stride_kn, stride_vn,
            q_len, k_len, head_dim, v_dim, qk_scale,
            BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, PRECISION, True, EVEN_D,
        )  # fmt: skip
    dq = dq * sm_scale
    tl.store(
        DQ
        + b.to(tl.int64) * stride_dqb
        + h.to(tl.int64) * stride_dqh
        + offs_m[:, None] * stride_dqm
        + offs_d[None, :],
        dq.to(DQ.dtype.element_ty),
        mask=row_ok[:, None] & (offs_d[None, :] < head_dim),
    )


@triton.jit
def _dkdv_block(
    dk,
    dv,
    k,
    v,
    q_base,
    do_base,
    LSE,
    DELTA,
    stats,
    tiles,
    qb,
    tile,
    offs_n,
    stride_qm,
    stride_dom,
    q_len,
    k_len,
    head_dim,
    v_dim,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
    MASKED: tl.constexpr,
    EVEN_D: tl.constexpr,
):
    offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    q = _load_rows(q_base, offs_m, tl.arange(0, BLOCK_D), stride_qm, q_len, head_dim, MASKED, EVEN_D)
    do = _load_rows(do_base, offs_m, tl.arange(0, BLOCK_DV), stride_dom, q_len, v_dim, MASKED, EVEN_D)
    if MASKED:
        row_ok = offs_m < q_len
        lse = tl.load(LSE + stats + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + stats + offs_m, mask=row_ok, other=0.0)
    else:
        lse = tl.load(LSE + stats + offs_m)
        delta = tl.load(DELTA + stats + offs_m)
    qk_t = tl.dot(k, tl.trans(q), input_precision=PRECISION)
    if MASKED:
        allowed_t = _tile_allowed(tiles, tile, offs_m, offs_n, q_len, k_len, BLOCK_M, BLOCK_N, True)
        qk_t = tl.where(allowed_t, qk_t, float("-inf"))
    p_t = tl.exp2(qk_t * qk_scale - lse[None, :])
    dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
    dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    DK,
    DV,
    LSE,
    DELTA,
    col_ptr,
    col_mid,
    col_qb,
    col_tile,
    tiles,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dkb,
    stride_dkh,
    stride_dkn,
    stride_dvb,
    stride_dvh,
    stride_dvn,
    num_heads,
    num_kv_heads,
    group,
    q_len,
    k_len,
    head_dim,
    v_dim,
    mask_b_stride,
    mask_h_stride,
    qk_scale,
    sm_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
    SKIP_FULL: tl.constexpr,
    EVEN_D: tl.constexpr,
):
    kb = tl.program_id(0)
    bhkv = tl.program_id(1)
    b = bhkv // num_kv_heads
    hkv = bhkv % num_kv_heads
    offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    col_ok = offs_n < k_len
    k_base = K + b.to(tl.int64) * stride_kb + hkv.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + hkv.to(tl.int64) * stride_vh
    k = _load_rows(k_base, offs_n, offs_d, stride_kn, k_len, head_dim, True, EVEN_D)
    v = _load_rows(v_base, offs_n, offs_dv, stride_vn, k_len, v_dim, True, EVEN_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    for g in range(group):
        h = hkv * group + g
        col = b * mask_b_stride + h * mask_h_stride + kb
        start = tl.load(col_ptr + col)
        end = tl.load(col_ptr + col + 1)
        if SKIP_FULL:
            mid = tl.load(col_mid + col)
        else:
            mid = start
        q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        do_base = DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
        stats = (b * num_heads + h).to(tl.int64) * q_len
        for entry in range(start, mid):
            qb = tl.load(col_qb + entry)
            dk, dv = _dkdv_block(
                dk, dv, k, v, q_base, do_base, LSE, DELTA, stats, tiles, qb, -1, offs_n,
                stride_qm, stride_dom, q_len, k_len, head_dim, v_dim, qk_scale,
                BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, PRECISION, False, EVEN_D,
            )  # fmt: skip
        for entry in range(mid, end):
            qb = tl.load(col_qb + entry)
            tile = tl.load(col_tile + entry)
            dk, dv = _dkdv_block(
                dk, dv, k, v, q_base, do_base, LSE, DELTA, stats, tiles, qb, tile, offs_n,
                stride_qm, stride_dom, q_len, k_len, head_dim, v_dim, qk_scale,
                BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, PRECISION, True, EVEN_D,
            )  # fmt: skip
    dk = dk * sm_scale
    tl.store(
        DK
        + b.to(tl.int64) * stride_dkb
        + hkv.to(tl.int64) * stride_dkh
        + offs_n[:, None] * stride_dkn
        + offs_d[None, :],
        dk.to(DK.dtype.element_ty),
        mask=col_ok[:, None] & (offs_d[None, :] < head_dim),
    )
    tl.store(
        DV
        + b.to(tl.int64) * stride_dvb
        + hkv.to(tl.int64) * stride_dvh
        + offs_n[:, None] * stride_dvn
        + offs_dv[None, :],
        dv.to(DV.dtype.element_ty),
        mask=col_ok[:, None] & (offs_dv[None, :] < v_dim),
    )


def _precision(dtype: torch.dtype) -> str:
    """fp32 inputs keep full precision (they are compared with the float32 reference); half
    precision inputs use the tensor cores' native path."""
    return "ieee" if dtype == torch.float32 else "tf32"


# Full blocks run an unmasked loop before the masked one; launch_config(forward={"SKIP_FULL": False})
# sends every block through the masked loop (for comparison).
SKIP_FULL_DEFAULT = True
# Per-pass launch overrides ("forward", "backward") set by :func:`launch_config` (tuning runs).
_LAUNCH_OVERRIDES: dict[str, dict[str, int]] = {}


@contextlib.contextmanager
def launch_config(
    forward: dict[str, int] | None = None,
    backward: dict[str, int] | None = None,
    dq: dict[str, int] | None = None,
    dkdv: dict[str, int] | None = None,
):
    """Run the kernels with other ``num_warps`` / ``num_stages`` (GPU only), e.g. to tune them:
    ``with launch_config(forward={"num_warps": 8, "num_stages": 3}): ...``. ``backward`` sets both
    backward passes; ``dq`` / ``dkdv`` set one of them."""
    saved = dict(_LAUNCH_OVERRIDES)
    for name, options in (("forward", forward), ("backward", backward), ("dq", dq), ("dkdv", dkdv)):
        if options:
            _LAUNCH_OVERRIDES[name] = dict(options)
    try:
        yield
    finally:
        _LAUNCH_OVERRIDES.clear()
        _LAUNCH_OVERRIDES.update(saved)


def _overrides(kind: str) -> dict[str, int]:
    """Overrides of one pass; the ``dq`` and ``dkdv`` passes fall back to the ``backward`` ones."""
    if kind in _LAUNCH_OVERRIDES:
        return _LAUNCH_OVERRIDES[kind]
    if kind in ("dq", "dkdv"):
        return _LAUNCH_OVERRIDES.get("backward", {})
    return {}


def _launch_options(head_dim: int, device: torch.device, kind: str = "forward") -> dict[str, int]:
    if device.type == "cpu":
        return {}
    # Measured on an H100 (bench/kernel_tuning.py --passes, bench/results/warps_large_heads_cuda.json;
    # window 1024 at 64k): 4 warps and 3 stages in every pass up to head dim 128 (at 128, 8 warps
    # took 1.8-1.9x as long); above 128, forward 4 warps / 1 stage, backward 8 warps / 2 stages.
    if head_dim <= 128:
        options = {"num_warps": 4, "num_stages": 3}
    elif kind == "forward":
        options = {"num_warps": 4, "num_stages": 1}
    else:
        options = {"num_warps": 8, "num_stages": 2}
    options.update({k: v for k, v in _overrides(kind).items() if k != "SKIP_FULL"})
    return options


def _skip_full(kind: str) -> bool:
    """Whether full blocks skip the element-mask select (a scalar branch per block)."""
    return bool(_overrides(kind).get("SKIP_FULL", SKIP_FULL_DEFAULT))


def _head_tiles(head_dim: int, v_dim: int) -> dict[str, int | bool]:
    """Tile widths of the head dims (powers of two, at least 16) and whether both are exact, so
    that loads need no head-dim mask."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_dv = max(16, triton.next_power_of_2(v_dim))
    return {"BLOCK_D": block_d, "BLOCK_DV": block_dv, "EVEN_D": head_dim == block_d and v_dim == block_dv}


def _mask_strides(index: BlockIndex, n_blocks: int) -> tuple[int, int]:
    h_stride = n_blocks if index.mask_heads > 1 else 0
    b_stride = index.mask_heads * n_blocks if index.mask_batch > 1 else 0
    return b_stride, h_stride


def _unit_last(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _forward(q: Tensor, k: Tensor, v: Tensor, index: BlockIndex, scale: float) -> tuple[Tensor, Tensor]:
    B, H, Lq, D = q.shape
    Hkv, Lk, Dv = k.shape[1], k.shape[2], v.shape[3]
    out = torch.empty(B, H, Lq, Dv, device=q.device, dtype=q.dtype)
    lse = torch.empty(B, H, Lq, device=q.device, dtype=torch.float32)
    b_stride, h_stride = _mask_strides(index, index.n_q_blocks)
    grid = (index.n_q_blocks, B * H)
    _fwd_kernel[grid](
        q,
        k,
        v,
        out,
        lse,
        index.row_ptr,
        index.row_mid,
        index.row_kb,
        index.row_tile,
        index.tiles,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        H,
        H // Hkv,
        Lq,
        Lk,
        D,
        Dv,
        b_stride,
        h_stride,
        scale * _LOG2E,
        BLOCK_M=index.block_m,
        BLOCK_N=index.block_n,
        PRECISION=_precision(q.dtype),
        SKIP_FULL=_skip_full("forward"),
        **_head_tiles(D, Dv),
        **_launch_options(max(D, Dv), q.device, "forward"),
    )
    return out, lse


def _backward(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    dq_index: BlockIndex,
    dkdv_index: BlockIndex,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Both backward passes; ``dq_index`` / ``dkdv_index`` may use different tile shapes."""
    delta, dq = backward_dq(grad_out, q, k, v, out, lse, dq_index, scale)
    dk, dv = backward_dkdv(grad_out, q, k, v, lse, delta, dkdv_index, scale)
    return dq, dk, dv


def _pass_options(kind: str, index: BlockIndex, q: Tensor, D: int, Dv: int) -> dict[str, Any]:
    return {
        "BLOCK_M": index.block_m,
        "BLOCK_N": index.block_n,
        "PRECISION": _precision(q.dtype),
        "SKIP_FULL": _skip_full(kind),
        **_head_tiles(D, Dv),
        **_launch_options(max(D, Dv), q.device, kind),
    }


def backward_dq(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    index: BlockIndex,
    scale: float,
) -> tuple[Tensor, Tensor]:
    """The ``dq`` pass (one program per query block); returns ``(delta, dq)``, ``delta`` being the
    row sums of ``out * grad_out`` that the ``dk``/``dv`` pass needs too."""
    B, H, Lq, D = q.shape
    Hkv, Lk, Dv = k.shape[1], k.shape[2], v.shape[3]
    grad_out = _unit_last(grad_out)
    out = _unit_last(out)
    delta = torch.empty(B, H, Lq, device=q.device, dtype=torch.float32)
    dq = torch.empty_like(q)
    qk_scale = scale * _LOG2E
    b_stride, h_stride = _mask_strides(index, index.n_q_blocks)
    _bwd_dq_kernel[(index.n_q_blocks, B * H)](
        q,
        k,
        v,
        grad_out,
        out,
        dq,
        lse,
        delta,
        index.row_ptr,
        index.row_mid,
        index.row_kb,
        index.row_tile,
        index.tiles,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        grad_out.stride(0),
        grad_out.stride(1),
        grad_out.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        dq.stride(0),
        dq.stride(1),
        dq.stride(2),
        H,
        H // Hkv,
        Lq,
        Lk,
        D,
        Dv,
        b_stride,
        h_stride,
        qk_scale,
        scale,
        **_pass_options("dq", index, q, D, Dv),
    )
    return delta, dq


def backward_dkdv(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lse: Tensor,
    delta: Tensor,
    index: BlockIndex,
    scale: float,
) -> tuple[Tensor, Tensor]:
    """The ``dk``/``dv`` pass (one program per key block and key/value head); returns ``(dk, dv)``."""
    B, H, Lq, D = q.shape
    Hkv, Lk, Dv = k.shape[1], k.shape[2], v.shape[3]
    grad_out = _unit_last(grad_out)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    qk_scale = scale * _LOG2E
    b_stride, h_stride = _mask_strides(index, index.n_k_blocks)
    _bwd_dkdv_kernel[(index.n_k_blocks, B * Hkv)](
        q,
        k,
        v,
        grad_out,
        dk,
        dv,
        lse,
        delta,
        index.col_ptr,
        index.col_mid,
        index.col_qb,
        index.col_tile,
        index.tiles,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        grad_out.stride(0),
        grad_out.stride(1),
        grad_out.stride(2),
        dk.stride(0),
        dk.stride(1),
        dk.stride(2),
        dv.stride(0),
        dv.stride(1),
        dv.stride(2),
        H,
        Hkv,
        H // Hkv,
        Lq,
        Lk,
        D,
        Dv,
        b_stride,
        h_stride,
        qk_scale,
        scale,
        **_pass_options("dkdv", index, q, D, Dv),
    )
    return dk, dv


class BlockSparseAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: forward saves ``out`` and the base-2 log-sum-exp ``(B, H, Lq)``."""

    @staticmethod
    def forward(
        ctx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        index: BlockIndex,
        scale: float,
        dq_index: BlockIndex,
        dkdv_index: BlockIndex,
    ) -> Tensor:
        out, lse = _forward(q, k, v, index, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.indexes = (dq_index, dkdv_index)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(grad_out, q, k, v, out, lse, *ctx.indexes, ctx.scale)
        return dq, dk, dv, None, None, None, None


def block_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: BlockIndex,
    scale: float | None = None,
    *,
    dq_index: BlockIndex | None = None,
    dkdv_index: BlockIndex | None = None,
) -> Tensor:
    """Block-sparse softmax attention with the block lists and element masks of ``index``.

    Args:
        q: ``(B, H, Lq, D)``; k: ``(B, Hkv, Lk, D)``; v: ``(B, Hkv, Lk, Dv)``; ``H % Hkv == 0``;
            float16, bfloat16 or float32, all on one CUDA device (or CPU under
            ``TRITON_INTERPRET=1``); ``D, Dv <= 256``.
        index: from :func:`build_block_index` / :func:`block_index_from_layout` for ``(Lq, Lk)``;
            the forward pass's tiles.
        scale: score scale, default ``1 / sqrt(D)``.
        dq_index, dkdv_index: indexes of the same mask with the tile shapes of the two backward
            passes (default ``index``). Any tile shapes give the same result; they change speed only.

    Returns:
        ``(B, H, Lq, Dv)`` in the dtype of ``q``; rows with no allowed key are zeros.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, H, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    if k.shape[0] != B or v.shape[:3] != k.shape[:3] or k.shape[3] != D or Hkv == 0 or H % Hkv:
        raise ValueError(
            f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
            "(need k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv), H % Hkv == 0)"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(
            f"q, k, v must share a float16/bfloat16/float32 dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if max(D, v.shape[3]) > MAX_HEAD_DIM:
        raise ValueError(f"head dims up to {MAX_HEAD_DIM} are supported, got D={D}, Dv={v.shape[3]}")
    if q.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            "block_sparse_attention on CPU needs TRITON_INTERPRET=1 set before kernels are imported"
        )
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        raise ValueError("Triton's interpreter computes bfloat16 tl.dot wrongly; use float16/float32 on CPU")
    dq_index = index if dq_index is None else dq_index
    dkdv_index = index if dkdv_index is None else dkdv_index
    for name, idx in (("index", index), ("dq_index", dq_index), ("dkdv_index", dkdv_index)):
        if idx.mask_batch != index.mask_batch or idx.mask_heads != index.mask_heads:
            raise ValueError(
                f"{name} has mask batch/heads ({idx.mask_batch}, {idx.mask_heads}), "
                f"index has ({index.mask_batch}, {index.mask_heads}): build all three from one mask"
            )
        idx.check(B, H, Lq, Lk, q.device)
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    return BlockSparseAttentionFunction.apply(q, k, v, index, float(scale), dq_index, dkdv_index)
