"""Backend on FlexAttention (``torch.nn.attention.flex_attention``)."""

from __future__ import annotations

import functools
from typing import Any

import torch

from shared_attention.backends.base import YES, AttentionCall, Backend, Support, no
from shared_attention.masks import MaskSpec, _cached


@functools.cache
def _flex_module() -> Any:
    import torch.nn.attention.flex_attention as flex

    return flex


@functools.cache
def _compiled_flex() -> Any:
    return torch.compile(_flex_module().flex_attention, dynamic=False)


def block_mask_for(mask: MaskSpec, B: int, H: int, Lq: int, Lk: int, device: torch.device) -> Any:
    """FlexAttention ``BlockMask`` for ``mask``, cached per (spec, B, H, Lq, Lk, device).

    Batch/head dims that the spec does not depend on are broadcast (``None``).
    """
    mask.validate(B, H, Lq, Lk)
    bm_b = B if mask.batch_dependent else None
    bm_h = H if mask.head_dependent else None

    def build() -> Any:
        return _flex_module().create_block_mask(mask.mask_mod(device), bm_b, bm_h, Lq, Lk, device=device)

    return _cached((mask, "flex_block_mask", bm_b, bm_h, Lq, Lk, device), build, B, H, Lq, Lk)


class FlexBackend(Backend):
    """FlexAttention with masks compiled to a ``BlockMask`` (skips empty blocks).

    Eager on CPU (forward only: FlexAttention has no CPU backward), ``torch.compile``-d on
    CUDA. ``auto`` only considers it on CUDA for block-sparse masks, where skipping
    blocks pays off.
    """

    name = "flex"

    def supports(self, call: AttentionCall) -> Support:
        try:
            _flex_module()
        except ImportError as err:
            return no(f"FlexAttention is not available in this PyTorch: {err}")
        if call.need_weights:
            return no("flex_attention does not return attention weights")
        if call.dropout:
            return no("flex_attention has no dropout")
        if call.device_type not in ("cpu", "cuda"):
            return no(f"FlexAttention does not run on {call.device_type}")
        if call.device_type == "cpu" and call.requires_grad:
            return no("FlexAttention has no backward on CPU (inputs require grad)")
        return YES

    def auto_candidate(self, call: AttentionCall) -> bool:
        return call.device_type == "cuda" and call.block_sparse_mask

    def run(self, q, k, v, mask, scale, dropout_p, need_weights):
        B, H, Lq, _ = q.shape
        Lk = k.shape[2]
        block_mask = None if mask is None else block_mask_for(mask, B, H, Lq, Lk, q.device)
        if q.device.type == "cpu" and not torch.is_grad_enabled():
            q, k, v = q.detach(), k.detach(), v.detach()
        kernel = _compiled_flex() if q.is_cuda else _flex_module().flex_attention
        return kernel(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=k.shape[1] != H)
