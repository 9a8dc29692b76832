"""Reference backend: eager PyTorch ops, float32 accumulation, supports every call."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from shared_attention.backends.base import YES, AttentionCall, Backend, Support
from shared_attention.masks import MaskSpec


class MathBackend(Backend):
    """``softmax(q k^T * scale + mask) v`` with eager ops; the only backend returning weights.

    Half-precision inputs are computed in float32 and cast back. Returned weights are
    taken before dropout; rows whose mask allows no key get zero weights and output.
    """

    name = "math"

    def supports(self, call: AttentionCall) -> Support:
        return YES

    def run(self, q, k, v, mask, scale, dropout_p, need_weights):
        out, weights = math_attention(q, k, v, mask, scale, dropout_p)
        return (out, weights) if need_weights else out


def math_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec | None, scale: float, dropout_p: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Eager attention. q ``(B, H, Lq, D)``, k ``(B, Hkv, Lk, D)``, v ``(B, Hkv, Lk, Dv)``.

    Returns ``(out (B, H, Lq, Dv), weights (B, H, Lq, Lk))`` in the dtype of ``q``.
    """
    B, H, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    compute_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    if Hkv != H:
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
    scores = torch.matmul(q.to(compute_dtype), k.to(compute_dtype).transpose(-2, -1)) * scale
    valid = None
    if mask is not None:
        dense = mask.to_dense(B, H, Lq, Lk, q.device)
        valid = mask.row_valid(B, H, Lq, Lk, q.device)
        scores = scores.masked_fill(~dense, float("-inf"))
        if valid is not None:
            scores = scores.masked_fill(~valid, 0.0)
    weights = torch.softmax(scores, dim=-1)
    if valid is not None:
        weights = weights.masked_fill(~valid, 0.0)
    attn = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    out = torch.matmul(attn, v.to(compute_dtype))
    return out.to(q.dtype), weights.to(q.dtype)
