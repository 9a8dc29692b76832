"""Linear attention: "Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention"
(Katharopoulos, Vyas, Pappas, Fleuret, ICML 2020).

Softmax's ``exp(q . k)`` is replaced by a kernel ``phi(q) . phi(k)`` with a positive feature
map (``phi(x) = elu(x) + 1``), so the sums over keys factor through a ``(Dk, Dv)`` state:

    out_i = phi(q_i)^T S_i / (phi(q_i)^T z_i),   S_i = sum_j phi(k_j) v_j^T,   z_i = sum_j phi(k_j)

with ``j`` over every key (non-causal) or ``j <= i`` (causal, prefix sums: an RNN). The causal
prefix sums are computed chunk by chunk: inside a chunk of ``C`` tokens exactly (a ``C x C``
masked product), across chunks through the exclusive prefix sum of the per-chunk states, so
memory is ``O(L C + (L / C) Dk Dv)`` instead of ``O(L Dk Dv)`` or ``O(L^2)``.

``linear_attention_parts`` is the PyTorch reference contract that the Triton kernel
``kernels.linear_attention.linear_attention_parts`` matches; on CUDA the kernel is used when
it can be imported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared_attention.layers._common import (
    MaskLike,
    check_embed,
    check_input,
    dense_allowed,
    merge_heads,
    resolve_prefix_mask,
    split_heads,
)
from shared_attention.layers._common import (
    feature_map as get_feature_map,
)

__all__ = [
    "LinearAttention",
    "linear_attention_parts",
    "linear_attention_parts_quadratic",
    "linear_attention_parts_auto",
]

log = logging.getLogger(__name__)

_TRITON_PARTS: list[Callable[..., tuple[Tensor, Tensor]] | None] = []


def _check_parts_inputs(q_feat: Tensor, k_feat: Tensor, v: Tensor, causal: bool, chunk_size: int) -> None:
    for name, t in (("q_feat", q_feat), ("k_feat", k_feat), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"linear_attention_parts: {name} must be 4-D (B, H, L, D), got {shape}")
    B, H, Lq, Dk = q_feat.shape
    if k_feat.shape[:2] != (B, H) or v.shape[:2] != (B, H) or k_feat.shape[3] != Dk:
        raise ValueError(
            "linear_attention_parts: q_feat (B, H, Lq, Dk), k_feat (B, H, Lk, Dk) and v (B, H, Lk, Dv) "
            f"disagree: {tuple(q_feat.shape)}, {tuple(k_feat.shape)}, {tuple(v.shape)}"
        )
    if k_feat.shape[2] != v.shape[2]:
        raise ValueError(
            f"linear_attention_parts: k_feat and v lengths differ: {k_feat.shape[2]} vs {v.shape[2]}"
        )
    if causal and Lq != k_feat.shape[2]:
        raise ValueError(f"linear_attention_parts: causal needs Lq == Lk, got {Lq} and {k_feat.shape[2]}")
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"linear_attention_parts: chunk_size must be a positive int, got {chunk_size!r}")


def _exclusive_cumsum(x: Tensor, dim: int) -> Tensor:
    """Sum of the entries before each one along ``dim``, accumulated in float32 at least (a
    half-precision running sum stops growing once the sum dwarfs each term), in ``x``'s dtype."""
    total = torch.cumsum(x, dim=dim, dtype=torch.promote_types(x.dtype, torch.float32))
    total = torch.cat(
        [torch.zeros_like(total.narrow(dim, 0, 1)), total.narrow(dim, 0, x.shape[dim] - 1)], dim
    )
    return total.to(x.dtype)


def linear_attention_parts(
    q_feat: Tensor, k_feat: Tensor, v: Tensor, *, causal: bool = False, chunk_size: int = 64
) -> tuple[Tensor, Tensor]:
    """Numerator and denominator of linear attention from feature-mapped queries and keys.

    Args:
        q_feat: ``phi(q)``, ``(B, H, Lq, Dk)``.
        k_feat: ``phi(k)``, ``(B, H, Lk, Dk)``; padded keys must be zero rows.
        v: ``(B, H, Lk, Dv)``.
        causal: sum over ``j <= i`` only (needs ``Lq == Lk``).
        chunk_size: tokens per chunk of the causal prefix sums (memory/speed trade-off only;
            the result does not depend on it beyond rounding).

    Returns:
        ``numerator (B, H, Lq, Dv)`` with ``numerator_i = sum_j (phi(q_i) . phi(k_j)) v_j`` and
        ``denominator (B, H, Lq)`` with ``denominator_i = sum_j phi(q_i) . phi(k_j)``.
    """
    _check_parts_inputs(q_feat, k_feat, v, causal, chunk_size)
    if not causal:
        state = k_feat.transpose(-2, -1) @ v
        numerator = q_feat @ state
        denominator = (q_feat * k_feat.sum(dim=-2, keepdim=True)).sum(dim=-1)
        return numerator, denominator
    B, H, L, Dk = q_feat.shape
    Dv = v.shape[-1]
    pad = (-L) % chunk_size
    if pad:
        q_feat, k_feat, v = (F.pad(t, (0, 0, 0, pad)) for t in (q_feat, k_feat, v))
    n = (L + pad) // chunk_size
    qc = q_feat.reshape(B, H, n, chunk_size, Dk)
    kc = k_feat.reshape(B, H, n, chunk_size, Dk)
    vc = v.reshape(B, H, n, chunk_size, Dv)
    tril = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q_feat.device).tril()
    intra = (qc @ kc.transpose(-2, -1)).masked_fill(~tril, 0.0)
    chunk_state = kc.transpose(-2, -1) @ vc
    chunk_ksum = kc.sum(dim=-2)
    prior_state = _exclusive_cumsum(chunk_state, dim=2)
    prior_ksum = _exclusive_cumsum(chunk_ksum, dim=2)
    numerator = intra @ vc + qc @ prior_state
    denominator = intra.sum(dim=-1) + (qc * prior_ksum.unsqueeze(-2)).sum(dim=-1)
    numerator = numerator.reshape(B, H, n * chunk_size, Dv)[:, :, :L]
    denominator = denominator.reshape(B, H, n * chunk_size)[:, :, :L]
    return numerator, denominator


def linear_attention_parts_quadratic(
    q_feat: Tensor, k_feat: Tensor, v: Tensor, *, causal: bool = False, allowed: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Slow exact reference of ``linear_attention_parts`` through the ``(Lq, Lk)`` kernel matrix.

    ``allowed``: optional bool mask broadcastable to ``(B, H, Lq, Lk)`` (any pattern).
    """
    scores = q_feat @ k_feat.transpose(-2, -1)
    if causal:
        Lq, Lk = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(Lq, Lk, dtype=torch.bool, device=scores.device).tril(), 0.0)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, 0.0)
    return scores @ v, scores.sum(dim=-1)


def _triton_parts() -> Callable[..., tuple[Tensor, Tensor]] | None:
    if not _TRITON_PARTS:
        try:
            from kernels.linear_attention import linear_attention_parts as kernel
        except ImportError as err:
            log.info("Triton linear attention unavailable (%s); using the PyTorch reference", err)
            kernel = None
        _TRITON_PARTS.append(kernel)
    return _TRITON_PARTS[0]


def linear_attention_parts_auto(
    q_feat: Tensor, k_feat: Tensor, v: Tensor, *, causal: bool = False, chunk_size: int = 64
) -> tuple[Tensor, Tensor]:
    """``linear_attention_parts`` by the Triton kernel on CUDA (when importable), else PyTorch."""
    if q_feat.is_cuda and not torch.compiler.is_compiling():
        kernel = _triton_parts()
        if kernel is not None:
            return kernel(q_feat, k_feat, v, causal=causal, chunk_size=chunk_size)
    return linear_attention_parts(q_feat, k_feat, v, causal=causal, chunk_size=chunk_size)


class LinearAttention(nn.Module):
    """Multi-head linear attention (Katharopoulos et al., 2020).

    ``Q = x W_q``, ``K = c W_k``, ``V = c W_v`` split into ``H`` heads of size ``d``;
    ``out_i = phi(Q_i)^T sum_j phi(K_j) V_j^T / (phi(Q_i)^T sum_j phi(K_j) + eps)`` per head,
    over valid keys ``j`` (``j <= i`` when causal); ``y = concat_h(out) W_o``.

    Args:
        embed_dim: model width ``E``; ``num_heads`` divides it.
        dropout: dropout on the attention output (the weights are never materialised).
        feature_map: ``"elu"`` (``elu + 1``, the paper's) or ``"relu"``.
        causal: always causal (also enabled per call by ``mask=Causal()``).
        chunk_size: chunk length of the causal prefix sums.
        eps: added to the denominator (rows with no valid key output 0).

    Masks: ``None``, a ``(B, Lk)`` bool key-padding tensor, ``KeyPadding``, ``Causal()`` and
    their ``&`` run in linear time; any other spec falls back to the exact quadratic form.
    Shapes: ``x (B, Lq, E)``, ``context (B, Lk, E)`` -> ``(B, Lq, E)``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        dropout: float = 0.0,
        feature_map: str = "elu",
        causal: bool = False,
        chunk_size: int = 64,
        eps: float = 1e-6,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.head_dim = check_embed(embed_dim, num_heads)
        if not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.feature = feature_map
        self.phi = get_feature_map(feature_map)
        self.causal, self.chunk_size, self.eps = causal, chunk_size, eps
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def extra_repr(self) -> str:
        return f"feature_map={self.feature}, causal={self.causal}, chunk_size={self.chunk_size}"

    def features(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``phi(Q) (B, H, Lq, d)``, ``phi(K) (B, H, Lk, d)``, ``V (B, H, Lk, d)``."""
        source = x if context is None else context
        q = split_heads(self.q_proj(x), self.num_heads)
        k = split_heads(self.k_proj(source), self.num_heads)
        v = split_heads(self.v_proj(source), self.num_heads)
        return self.phi(q), self.phi(k), v

    def forward(self, x: Tensor, *, context: Tensor | None = None, mask: MaskLike = None) -> Tensor:
        """``x (B, Lq, E)``, optional ``context (B, Lk, E)`` and mask -> ``(B, Lq, E)``."""
        check_input(x, context, self.embed_dim, type(self).__name__)
        qf, kf, v = self.features(x, context)
        B, H, Lq, _ = qf.shape
        Lk = kf.shape[2]
        info = resolve_prefix_mask(mask, B, Lk, x.device)
        causal = self.causal or info.causal
        if info.general is not None:
            allowed = dense_allowed(info.general, B, H, Lq, Lk, x.device)
            numerator, denominator = linear_attention_parts_quadratic(
                qf, kf, v, causal=causal, allowed=allowed
            )
        else:
            if info.key_valid is not None:
                keep = info.key_valid[:, None, :, None].to(kf.dtype)
                kf, v = kf * keep, v * keep
            numerator, denominator = linear_attention_parts_auto(
                qf, kf, v, causal=causal, chunk_size=self.chunk_size
            )
        out = numerator / (denominator.unsqueeze(-1) + self.eps)
        return self.out_proj(self.dropout(merge_heads(out)))
