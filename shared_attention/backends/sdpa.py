"""Backend on ``torch.nn.functional.scaled_dot_product_attention``."""

from __future__ import annotations

import torch.nn.functional as F

from shared_attention.backends.base import YES, AttentionCall, Backend, Support, no
from shared_attention.masks import Causal, DenseMask


class SdpaBackend(Backend):
    """PyTorch SDPA (flash / memory-efficient / cuDNN / math kernels chosen by PyTorch).

    ``Causal(0)`` with ``Lq == Lk`` uses ``is_causal``; other masks go in as a dense
    bool mask whose fully masked rows are opened and then zeroed in the output (a ``DenseMask`` on
    CUDA as the additive bias it keeps, see ``DenseMask.additive_bias``).
    Grouped-query heads use ``enable_gqa``.
    """

    name = "sdpa"

    def supports(self, call: AttentionCall) -> Support:
        if call.need_weights:
            return no("scaled_dot_product_attention does not return attention weights")
        return YES

    def run(self, q, k, v, mask, scale, dropout_p, need_weights):
        B, H, Lq, _ = q.shape
        Lk = k.shape[2]
        gqa = bool(int(k.shape[1]) != int(H))
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale, enable_gqa=gqa)
        if type(mask) is Causal and mask.offset == 0 and Lq == Lk:
            return F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale, enable_gqa=gqa
            )
        if q.is_cuda and isinstance(mask, DenseMask):  # the bias SDPA would build in every call, kept
            dense, valid = mask.additive_bias(B, H, Lq, Lk, q.device, q.dtype)
        else:
            dense, valid = mask.safe_dense(B, H, Lq, Lk, q.device)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=dense, dropout_p=dropout_p, scale=scale, enable_gqa=gqa
        )
        return out if valid is None else out.masked_fill(~valid, 0.0)
