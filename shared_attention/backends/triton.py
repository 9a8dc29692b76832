"""Backend on the block-sparse flash-attention Triton kernel (``kernels.block_sparse_attention``).

A mask spec becomes a ``BlockIndex``: per (mask batch row, mask head, query block) the list of key
blocks holding any allowed entry, with the exact element mask stored for partially allowed blocks
(built from the spec's ``mask_mod``, once per spec and shape, in the mask cache). The kernel visits
only those blocks, so its cost follows the mask's density: sliding window, sink + window,
PowerAttention and other block-sparse patterns cost ``O(L * window)`` instead of ``O(L^2)``.

Runs on CUDA; on CPU only when ``TRITON_INTERPRET=1`` is set before the kernels are imported
(Triton's interpreter, used by the tests; ``auto`` never picks it on CPU). The kernel module is
imported lazily, on the first call, so importing ``shared_attention`` never imports Triton.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from types import ModuleType

import torch

from shared_attention.backends.base import YES, AttentionCall, Backend, Support, no
from shared_attention.masks import AndMask, MaskSpec, _cached

__all__ = ["TritonBackend", "block_index_for", "pass_indexes", "AUTO_MIN_SCORES"]

_KERNEL_MODULE = "kernels.block_sparse_attention"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 256
# ``auto`` considers the kernel from Lq * Lk >= 2048^2 on: below that, building the block index and
# the launch overhead are not repaid and FlexAttention / SDPA serve the call.
AUTO_MIN_SCORES = 2048 * 2048


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernels() -> ModuleType:
    import kernels.block_sparse_attention as module

    return module


def _has_element_rule(spec: MaskSpec) -> bool:
    if isinstance(spec, AndMask):
        return all(_has_element_rule(s) for s in spec.specs)
    return type(spec)._allowed is not MaskSpec._allowed


def block_index_for(
    mask: MaskSpec | None,
    B: int,
    H: int,
    Lq: int,
    Lk: int,
    device: torch.device,
    block_size: int | None = None,
    *,
    tile: tuple[int, int] | None = None,
):
    """The kernel's ``BlockIndex`` for ``mask`` on a ``(B, H, Lq, Lk)`` score matrix, cached.

    ``tile`` is ``(block_m, block_n)``; default square tiles of ``block_size`` (default: the
    kernels' ``default_block_size``). The index distinguishes batch rows / heads only when the
    spec depends on them.
    """
    kernels = _kernels()
    if tile is None:
        block = block_size or kernels.default_block_size(device)
        tile = (block, block)
    block_m, block_n = tile
    if mask is None:
        return _cached(
            ("triton_index_full", Lq, Lk, tile, device),
            lambda: kernels.build_block_index(None, Lq, Lk, block_m=block_m, block_n=block_n, device=device),
            Lq,
            Lk,
        )
    mask.validate(B, H, Lq, Lk)
    mask_batch, mask_heads = mask._grid_sizes(B, H)

    def build():
        return kernels.build_block_index(
            mask.mask_mod(device),
            Lq,
            Lk,
            mask_batch=mask_batch,
            mask_heads=mask_heads,
            block_m=block_m,
            block_n=block_n,
            device=device,
        )

    return _cached((mask, "triton_index", mask_batch, mask_heads, Lq, Lk, tile, device), build, Lq, Lk)


def pass_indexes(
    mask: MaskSpec | None, B: int, H: int, Lq: int, Lk: int, device: torch.device, head_dim: int
):
    """``(forward, dq, dkdv)`` indexes: each pass gets the tile shape of ``default_tiles`` unless
    that visits more than ``TILE_AREA_SLACK`` times the entries of the base square tiles (then the
    base index). The choice is cached with the indexes."""
    kernels = _kernels()
    base_edge = kernels.default_block_size(device)
    plan = kernels.default_tiles(device, head_dim)

    def choose():
        base = block_index_for(mask, B, H, Lq, Lk, device, tile=(base_edge, base_edge))
        chosen = []
        for kind in ("forward", "dq", "dkdv"):
            tile = plan[kind]
            if tile == (base_edge, base_edge):
                chosen.append(base)
                continue
            index = block_index_for(mask, B, H, Lq, Lk, device, tile=tile)
            slack = kernels.TILE_AREA_SLACK * base.visited_entries()
            chosen.append(index if index.visited_entries() <= slack else base)
        return tuple(chosen)

    key = ("triton_pass_indexes", mask, B if mask is not None else 0, H, Lq, Lk, device, tuple(plan.items()))
    return _cached(key, choose, Lq, Lk)


class TritonBackend(Backend):
    """Block-sparse FlashAttention-2 in Triton (forward and backward), skipping masked-out blocks.

    Serves no mask and every mask spec with an element rule (causal, key padding, varlen, sliding
    window, sink + window, block-sparse layouts, PowerAttention, dense bool masks, compositions),
    grouped-query heads, float16/bfloat16/float32, head dims up to 256. No dropout, no weights.
    ``auto`` considers it on CUDA for block-sparse masks on score matrices of at least
    ``AUTO_MIN_SCORES`` entries, ahead of FlexAttention and SDPA.
    """

    name = "triton"

    def supports(self, call: AttentionCall) -> Support:
        if call.need_weights:
            return no("the Triton block-sparse kernel does not return attention weights")
        if call.dropout:
            return no("the Triton block-sparse kernel has no dropout")
        if not _triton_installed():
            return no("triton is not installed")
        if call.device_type == "cpu":
            if not _interpret_requested():
                return no("Triton kernels run on CPU only in the interpreter (set TRITON_INTERPRET=1)")
            loaded = sys.modules.get(_KERNEL_MODULE)
            if loaded is not None and not loaded.INTERPRETED:
                return no("the Triton kernels were imported before TRITON_INTERPRET=1 was set")
            if call.dtype == torch.bfloat16:
                return no("Triton's interpreter computes bfloat16 tl.dot wrongly; use float16/float32 on CPU")
        elif call.device_type != "cuda":
            return no(f"Triton kernels do not run on {call.device_type}")
        if call.dtype not in _DTYPES:
            return no(f"the Triton kernel supports float16, bfloat16 and float32, not {call.dtype}")
        if max(call.head_dim, call.v_head_dim) > _MAX_HEAD_DIM:
            return no(
                f"the Triton kernel supports head dims up to {_MAX_HEAD_DIM} (got {call.head_dim}, {call.v_head_dim})"
            )
        if min(call.batch, call.heads, call.q_len, call.kv_len) == 0:
            return no("empty batch, heads or sequence")
        if call.mask is not None and not _has_element_rule(call.mask):
            return no(f"mask {call.mask_kind} has no element rule (_allowed) to build a block layout from")
        return YES

    def auto_candidate(self, call: AttentionCall) -> bool:
        return (
            call.device_type == "cuda"
            and call.block_sparse_mask
            and call.q_len * call.kv_len >= AUTO_MIN_SCORES
        )

    def run(self, q, k, v, mask, scale, dropout_p, need_weights):
        B, H, Lq, D = q.shape
        forward, dq, dkdv = pass_indexes(mask, B, H, Lq, k.shape[2], q.device, max(D, v.shape[3]))
        return _kernels().block_sparse_attention(q, k, v, forward, scale, dq_index=dq, dkdv_index=dkdv)
