"""The backend interface: a call description, a support answer, and the backend base class."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor

from shared_attention.masks import MaskSpec


@dataclass(frozen=True)
class Support:
    """Whether a backend can serve a call, and why (not)."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


YES = Support(True, "supported")


def no(reason: str) -> Support:
    return Support(False, reason)


@dataclass(frozen=True)
class AttentionCall:
    """What a backend needs to know to decide whether it supports an attention call.

    Shapes: q ``(batch, heads, q_len, head_dim)``, k ``(batch, kv_heads, kv_len, head_dim)``,
    v ``(batch, kv_heads, kv_len, v_head_dim)``. ``mask_kind`` is ``"none"`` or the spec's
    class name; ``mask`` (excluded from equality) is the spec itself.
    """

    device_type: str
    dtype: torch.dtype
    batch: int
    heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    v_head_dim: int
    mask_kind: str = "none"
    block_sparse_mask: bool = False
    dropout: bool = False
    need_weights: bool = False
    requires_grad: bool = False
    mask: MaskSpec | None = field(default=None, compare=False, hash=False, repr=False)

    @property
    def gqa(self) -> bool:
        return self.heads != self.kv_heads


class Backend(ABC):
    """A way of computing softmax attention.

    ``run`` receives validated tensors, a normalised mask (``MaskSpec`` or None) and a
    float scale. Every backend returns zeros for query rows whose mask allows no key.
    """

    name: str = ""

    @abstractmethod
    def supports(self, call: AttentionCall) -> Support:
        """Whether this backend can serve ``call``; the reason says why not."""

    @abstractmethod
    def run(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: MaskSpec | None,
        scale: float,
        dropout_p: float,
        need_weights: bool,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Compute attention; ``(out, weights)`` when ``need_weights``, else ``out`` ``(B, H, Lq, Dv)``."""

    def auto_candidate(self, call: AttentionCall) -> bool:
        """Whether ``auto`` may consider this backend for ``call`` (on top of ``supports``)."""
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
