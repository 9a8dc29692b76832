"""Capture attention maps from the attention layers inside a model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn

from shared_attention.functional import force_backend
from shared_attention.layers.additive import AdditiveAttention, PointerHead
from shared_attention.layers.multihead import MultiHeadAttention

CAPTURED_TYPES = (MultiHeadAttention, AdditiveAttention, PointerHead)


class AttentionMaps(dict[str, list[Tensor]]):
    """Module qualified name -> one detached weight tensor per forward call.

    ``MultiHeadAttention``: ``(B, H, Lq, Lk)``; ``AdditiveAttention``: ``(B, L)`` or
    ``(B, T, L)``; ``PointerHead``: softmax of its logits, same shapes as the logits.
    """

    def last(self, name: str) -> Tensor:
        """The most recent map recorded by module ``name``."""
        return self[name][-1]


@contextlib.contextmanager
def capture_attention(model: nn.Module) -> Iterator[AttentionMaps]:
    """While active, every attention layer in ``model`` runs the ``math`` backend with
    weights and records them (detached) into the yielded ``AttentionMaps``.

    Captured layers: ``MultiHeadAttention`` (and subclasses), ``AdditiveAttention``,
    ``PointerHead``, and any layer whose class sets ``records_attention_weights = True`` and
    calls its ``attention_recorder`` with its ``(B, H, Lq, Lk)`` weights (sigmoid, MALA, NTK,
    RCMHA and the deconstructed variants do).

    Any other ``attention()`` call made inside the block also uses ``math``.
    """
    maps = AttentionMaps()
    patched: list[nn.Module] = []

    def recorder(name: str):
        def record(weights: Tensor) -> None:
            maps.setdefault(name, []).append(weights.detach())

        return record

    try:
        for name, module in model.named_modules():
            if isinstance(module, CAPTURED_TYPES) or getattr(
                type(module), "records_attention_weights", False
            ):
                module.attention_recorder = recorder(name)
                patched.append(module)
        with force_backend("math"):
            yield maps
    finally:
        for module in patched:
            module.attention_recorder = None
