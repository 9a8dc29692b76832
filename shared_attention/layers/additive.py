"""Additive (Bahdanau) attention and the Pointer Network pointer head."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def _masked_fill_min(scores: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return scores
    return scores.masked_fill(~mask, torch.finfo(scores.dtype).min)


def _align_mask(mask: Tensor | None, scores: Tensor) -> Tensor | None:
    """Broadcast a ``(B, L)`` mask to scores ``(B, T, L)``; ``(B, T, L)`` masks pass through."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = valid), got {mask.dtype}")
    if scores.dim() == 3 and mask.dim() == 2:
        return mask[:, None, :]
    return mask


class _AdditiveScorer(nn.Module):
    """``u_j = v^T tanh(W_k k_j + W_q q)`` for queries ``(B, Dq)`` or ``(B, T, Dq)``."""

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.key_proj = nn.Linear(key_dim, hidden_dim, bias=True)
        self.query_proj = nn.Linear(query_dim, hidden_dim, bias=False)
        self.score = nn.Linear(hidden_dim, 1, bias=False)
        self.attention_recorder: Callable[[Tensor], None] | None = None

    def project_keys(self, keys: Tensor) -> Tensor:
        """``keys (B, L, Dk)`` -> ``W_k keys (B, L, hidden)``; compute once per sequence."""
        return self.key_proj(keys)

    def scores(self, query: Tensor, keys: Tensor, projected_keys: Tensor | None = None) -> Tensor:
        """Unmasked pre-softmax scores ``(B, L)`` or ``(B, T, L)``."""
        return self._scores(query, keys, projected_keys)

    def _scores(self, query: Tensor, keys: Tensor, projected_keys: Tensor | None) -> Tensor:
        if query.dim() not in (2, 3):
            raise ValueError(f"query must be (B, Dq) or (B, T, Dq), got {tuple(query.shape)}")
        pk = self.project_keys(keys) if projected_keys is None else projected_keys
        pq = self.query_proj(query)
        if query.dim() == 2:
            return self.score(torch.tanh(pk + pq[:, None, :])).squeeze(-1)
        return self.score(torch.tanh(pk[:, None, :, :] + pq[:, :, None, :])).squeeze(-1)


class AdditiveAttention(_AdditiveScorer):
    """Bahdanau et al. (2015), "Neural Machine Translation by Jointly Learning to Align and
    Translate": ``score_j = v^T tanh(W_k k_j + W_q q)``, ``a = softmax(score)``,
    ``context = sum_j a_j k_j``.

    Masked keys get weight exactly 0; a query with no valid key gets zero weights and a
    zero context. ``score_offset`` (shaped like the scores) is added before the softmax: the
    perturbation of adversarial training on attention (Kitada & Iyatomi, 2021).

    Shapes: ``query (B, Dq)`` (or ``(B, T, Dq)``), ``keys (B, L, Dk)``, ``mask (B, L)``
    (or ``(B, T, L)``) bool, True = valid -> ``context (B, Dk)``, ``weights (B, L)``
    (or ``(B, T, Dk)``, ``(B, T, L)``).
    """

    def forward(
        self,
        query: Tensor,
        keys: Tensor,
        *,
        mask: Tensor | None = None,
        projected_keys: Tensor | None = None,
        score_offset: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        scores = self._scores(query, keys, projected_keys)
        if score_offset is not None:
            scores = scores + score_offset
        mask = _align_mask(mask, scores)
        weights = torch.softmax(_masked_fill_min(scores, mask), dim=-1)
        if mask is not None:
            weights = weights * mask.to(weights.dtype)
        if self.attention_recorder is not None:
            self.attention_recorder(weights)
        if weights.dim() == 2:
            context = torch.bmm(weights[:, None, :], keys).squeeze(1)
        else:
            context = torch.bmm(weights, keys)
        return context, weights


class PointerHead(_AdditiveScorer):
    """Pointer Networks (Vinyals et al., 2015): ``u_j = v^T tanh(W1 e_j + W2 d)`` scores each
    input position ``j`` as the output, for a decoder state ``d``.

    With ``clip = C`` the logits are ``C * tanh(u)`` (Bello et al., 2016; Kool et al., 2019),
    then divided by ``temperature``. Invalid positions get ``torch.finfo(dtype).min``, the
    most negative finite value: softmax gives them probability exactly 0 whenever some
    position is valid, and a row with no valid position stays finite (uniform) instead of NaN.

    Shapes: ``query (B, Dq)`` or ``(B, T, Dq)`` (all decoding steps at once),
    ``keys (B, L, Dk)``, ``mask (B, L)`` or ``(B, T, L)`` bool, True = valid ->
    ``logits (B, L)`` or ``(B, T, L)``.
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        hidden_dim: int,
        *,
        clip: float | None = None,
        temperature: float = 1.0,
    ) -> None:
        super().__init__(query_dim, key_dim, hidden_dim)
        if clip is not None and clip <= 0:
            raise ValueError(f"clip must be positive, got {clip}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.clip = clip
        self.temperature = temperature

    def forward(
        self,
        query: Tensor,
        keys: Tensor,
        *,
        mask: Tensor | None = None,
        projected_keys: Tensor | None = None,
    ) -> Tensor:
        logits = self._scores(query, keys, projected_keys)
        if self.clip is not None:
            logits = self.clip * torch.tanh(logits)
        logits = logits / self.temperature
        pointer_logits = _masked_fill_min(logits, _align_mask(mask, logits))
        if self.attention_recorder is not None:
            self.attention_recorder(torch.softmax(pointer_logits, dim=-1))
        return pointer_logits
