"""Helpers shared by the attention mechanisms: head splitting, mask resolution, feature maps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from shared_attention.masks import AndMask, Causal, DenseMask, KeyPadding, MaskSpec, SinkWindow, SlidingWindow

MaskLike = MaskSpec | Tensor | None


def split_heads(x: Tensor, heads: int) -> Tensor:
    """``(B, L, H * D)`` -> ``(B, H, L, D)``."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """``(B, H, L, D)`` -> ``(B, L, H * D)``."""
    return x.transpose(1, 2).flatten(-2)


def check_embed(embed_dim: int, num_heads: int) -> int:
    """The head dim ``E / H``; raises when ``embed_dim`` is not divisible by ``num_heads``."""
    if not isinstance(embed_dim, int) or not isinstance(num_heads, int) or embed_dim <= 0 or num_heads <= 0:
        raise ValueError(f"embed_dim and num_heads must be positive ints, got {embed_dim!r}, {num_heads!r}")
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
    return embed_dim // num_heads


def check_input(x: Tensor, context: Tensor | None, embed_dim: int, name: str) -> None:
    """Raise a clear error when ``x (B, Lq, E)`` / ``context (B, Lk, E)`` have the wrong shape."""
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != embed_dim:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: x must be (B, L, {embed_dim}), got {shape}")
    if context is not None and (context.dim() != 3 or context.shape[0] != x.shape[0]):
        raise ValueError(
            f"{name}: context must be (B, Lk, E) with B={x.shape[0]}, got {tuple(context.shape)}"
        )


def as_spec(mask: MaskLike) -> MaskSpec | None:
    """A mask as a ``MaskSpec``: a ``(B, Lk)`` bool tensor is key padding (True = valid key),
    another bool tensor broadcastable to ``(B, H, Lq, Lk)`` becomes a ``DenseMask``."""
    if mask is None or isinstance(mask, MaskSpec):
        return mask
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be None, a MaskSpec or a bool tensor (True = valid), got {got}")
    if mask.dim() == 2:
        return DenseMask(mask[:, None, None, :])
    return DenseMask(mask)


def dense_allowed(
    mask: MaskLike, B: int, H: int, Lq: int, Lk: int, device: torch.device, *, causal: bool = False
) -> Tensor | None:
    """Bool ``(B|1, H|1, Lq, Lk)`` (True = may attend), or None for no mask.

    ``causal`` also restricts query ``i`` to keys ``j <= i`` (a mechanism's own ``causal`` option).
    """
    spec = as_spec(mask)
    allowed = None
    if spec is not None:
        spec.validate(B, H, Lq, Lk)
        allowed = spec.to_dense(B, H, Lq, Lk, device)
    if causal:
        tril = torch.ones(Lq, Lk, dtype=torch.bool, device=device).tril()[None, None]
        allowed = tril if allowed is None else allowed & tril
    return allowed


@dataclass(frozen=True)
class PrefixMask:
    """A mask a linear-time mechanism can serve without a dense score matrix.

    ``key_valid``: bool ``(B, Lk)`` or None; ``causal``: query ``i`` sees keys ``j <= i``;
    ``general``: any remaining spec, which forces the dense (quadratic) path.
    """

    key_valid: Tensor | None
    causal: bool
    general: MaskSpec | None


def resolve_prefix_mask(mask: MaskLike, B: int, Lk: int, device: torch.device) -> PrefixMask:
    """Split ``mask`` into key padding + top-left causal, the forms prefix sums serve exactly."""
    if mask is None:
        return PrefixMask(None, False, None)
    if isinstance(mask, Tensor):
        if mask.dtype != torch.bool:
            raise ValueError(f"mask tensor must be bool (True = valid), got {mask.dtype}")
        if mask.dim() == 2:
            if mask.shape[0] != B or mask.shape[1] != Lk:
                raise ValueError(f"key-padding mask must be (B, Lk)=({B}, {Lk}), got {tuple(mask.shape)}")
            return PrefixMask(mask.to(device), False, None)
        return PrefixMask(None, False, DenseMask(mask))
    specs = mask.specs if isinstance(mask, AndMask) else (mask,)
    valid: Tensor | None = None
    causal = False
    rest: list[MaskSpec] = []
    for spec in specs:
        if isinstance(spec, Causal) and spec.offset == 0:
            causal = True
        elif isinstance(spec, KeyPadding):
            spec.validate(B, 1, 1, Lk)
            pad = torch.arange(Lk, device=device)[None, :] < spec.lengths.to(device)[:, None]
            valid = pad if valid is None else valid & pad
        else:
            rest.append(spec)
    if rest:
        return PrefixMask(None, False, mask)
    return PrefixMask(valid, causal, None)


def mask_is_causal(mask: MaskLike) -> bool:
    """True when ``mask`` forbids every key after the query (so local convolutions must be causal too)."""
    if isinstance(mask, AndMask):
        return any(mask_is_causal(s) for s in mask.specs)
    if isinstance(mask, Causal):
        return mask.offset <= 0
    if isinstance(mask, SlidingWindow):
        return mask.causal
    if isinstance(mask, SinkWindow):
        return True
    return bool(getattr(mask, "causal", False)) if isinstance(mask, MaskSpec) else False


def key_valid_from_mask(mask: MaskLike, B: int, Lk: int, device: torch.device) -> Tensor | None:
    """Bool ``(B, Lk)`` of keys that exist (key padding only), or None."""
    if isinstance(mask, Tensor) and mask.dim() == 2:
        return mask.to(device)
    specs = mask.specs if isinstance(mask, AndMask) else (mask,)
    valid = None
    for spec in specs:
        if isinstance(spec, KeyPadding):
            pad = torch.arange(Lk, device=device)[None, :] < spec.lengths.to(device)[:, None]
            valid = pad if valid is None else valid & pad
    return valid


def elu_plus_one(x: Tensor) -> Tensor:
    """``phi(x) = elu(x) + 1`` (Katharopoulos et al., 2020): positive, smooth."""
    return F.elu(x) + 1.0


def relu_feature(x: Tensor) -> Tensor:
    """``phi(x) = relu(x)`` (non-negative; may give all-zero features)."""
    return F.relu(x)


FEATURE_MAPS: dict[str, Callable[[Tensor], Tensor]] = {"elu": elu_plus_one, "relu": relu_feature}


def feature_map(name: str) -> Callable[[Tensor], Tensor]:
    """The feature map called ``name``; raises listing the known names otherwise."""
    if name not in FEATURE_MAPS:
        raise ValueError(f"unknown feature_map {name!r}; choose one of {sorted(FEATURE_MAPS)}")
    return FEATURE_MAPS[name]


def masked_fill_scores(scores: Tensor, allowed: Tensor | None, value: float) -> Tensor:
    """``scores`` with disallowed entries set to ``value`` (no-op without a mask)."""
    return scores if allowed is None else scores.masked_fill(~allowed, value)


def masked_softmax(scores: Tensor, allowed: Tensor | None) -> Tensor:
    """Softmax over the last dim restricted to ``allowed``; rows with no allowed key are all zero
    (with finite gradients)."""
    if allowed is None:
        return torch.softmax(scores, dim=-1)
    allowed = allowed.expand_as(scores)
    row_valid = allowed.any(dim=-1, keepdim=True)
    scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(~row_valid, 0.0)
    return torch.softmax(scores, dim=-1) * row_valid
