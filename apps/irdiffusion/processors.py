"""Isolation and Reposition Attention as diffusers attention processors (He et al., 2024).

IR-Diffusion denoises a batch laid out as groups `[ref_1, ..., ref_S, target]` (one group per scene
and per classifier-free-guidance half, ordered `[cfg][scene][member]`). References run plain
attention; the target's self-attention gets extra keys/values from the references:

- Reference keys/values: the hidden states of reference `i` (the input of `to_k`/`to_v` at the same
  layer and step) are offered to the target, visible only to target pixels of subject `i`.
- Reposition Attention: those reference hidden states are first cropped by the box of subject `i`
  in its reference, resized to subject `i`'s box in the target and pasted there (bilinear
  sampling), so each target token finds its counterpart at the same place; only pasted pixels
  that fall on the reference subject's mask are visible.
- Isolation Attention: target pixels of subject `i` may not attend to target pixels of subject
  `j != i` (background pixels attend to, and are attended by, everything).
- Mutual cross-attention blend: inside subject `i`'s target region the cross-attention output is
  blended with the output of the same queries attending to reference `i`'s prompt.
- Extended attention (`route=False`, the `extended` variant): every target pixel sees every token
  of every reference, with no subject routing (the plain "mutual self-attention" baseline of
  training-free consistency methods, and how `module.reference_training` trains the base model).
  Only self-attention is unrouted: the cross-attention blend (`cross_blend`) applies to it as to
  every other variant, so the variants differ in self-attention alone.

Only the reference tokens some target pixel may see are offered as keys: for each scene and subject
the visible (repositioned) reference positions are gathered into `M` slots (`M` = the largest count
over scenes and subjects, padded slots masked), so the target attends to `N + S * M` keys instead of
`N + S * N` (a subject covering a quarter of the image gives `M ≈ N / 4`). For the target rows the
mask is one dense boolean `(P, 1, N, N + S * M)` (query pixels x [target pixels, gathered reference
tokens]); `expand_mask` scatters it back to the `(P, 1, N, N + S * N)` layout over all reference
positions. It is built once per resolution per generation with tensor ops and passed to
`shared_attention.functional.attention` as a `DenseMask`. Reference keys/values are taken from the
keys/values the layer already computed (sampled at the gathered positions when repositioning: a
gather of four bilinear taps per position, whose indices and weights are built with the mask; this
equals projecting the sampled hidden states because `to_k`/`to_v` are linear maps without bias); a
layer with a key bias or a key norm projects the sampled hidden states instead. Unlike the official code,
isolation is a real attention mask (not an in-place edit of the hidden states) and subject masks use
one threshold with a single meaning (foreground if the normalised map exceeds it).

All state of a generation lives in one `IRState` shared by the processors of a UNet; `reset()`
clears it between generations. With the state inactive (no settings, or `paused` for the early
steps the pipeline's `ir_start` leaves to plain attention) every processor computes exactly what
diffusers' `AttnProcessor2_0` computes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from shared_attention.functional import attention
from shared_attention.masks import DenseMask


@dataclass
class IRSettings:
    """Which parts of IR-Diffusion are on for the final pass."""

    reference: bool = True
    isolation: bool = True
    reposition: bool = True
    cross_blend: float = 0.0
    # False: every target pixel sees every reference token (no subject routing, no masks)
    route: bool = True

    @classmethod
    def variant(cls, name: str, cross_blend: float = 0.0) -> IRSettings | None:
        """Settings of a named comparison variant (`vanilla` has none: no processors active)."""
        table = {
            "vanilla": None,
            "extended": (True, False, False, False),
            "mutual": (True, False, False, True),
            "isolation": (True, True, False, True),
            "reposition": (True, False, True, True),
            "both": (True, True, True, True),
        }
        if name not in table:
            raise ValueError(f"unknown IR-Diffusion variant {name!r}; expected one of {sorted(table)}")
        flags = table[name]
        if flags is None:
            return None
        reference, isolation, reposition, route = flags
        return cls(reference, isolation, reposition, cross_blend=cross_blend, route=route)


class IRState:
    """Per-generation state shared by every `IRAttnProcessor` of one UNet.

    Layout tensors (normalised box coordinates in [0, 1], `x0, y0, x1, y1`):
        ref_masks     (P, S, H0, W0) float  subject masks in the references
        ref_boxes     (P, S, 4)
        target_labels (P, H0, W0) long      0 background, i + 1 target region of subject i
        target_boxes  (P, S, 4)
    """

    def __init__(self, layer_names: Iterable[str] = (), backend: str = "auto") -> None:
        self.layer_names = list(layer_names)
        self.backend = backend
        self.reset()

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    def reset(self) -> None:
        """Forget everything of the previous generation (layout, caches, recordings, counters)."""
        self.settings: IRSettings | None = None
        self.num_subjects = 0
        self.ref_masks: Tensor | None = None
        self.ref_boxes: Tensor | None = None
        self.target_labels: Tensor | None = None
        self.target_boxes: Tensor | None = None
        self.latent_hw: tuple[int, int] | None = None
        self.record_cross = False
        self.record_tokens: Tensor | None = None
        self.cross_maps: dict[tuple[int, int], Tensor] = {}
        self.cross_counts: dict[tuple[int, int], int] = {}
        self.calls = 0
        self.step = 0
        # set by the pipeline for the steps before `ir_start`: processors act as plain attention,
        # keeping the layout and the masks cached for the steps after
        self.paused = False
        self._cache: dict[tuple[int, int], dict[str, Any]] = {}

    @property
    def active(self) -> bool:
        return self.settings is not None and self.num_subjects > 0 and not self.paused

    @property
    def group_size(self) -> int:
        return self.num_subjects + 1

    def configure(
        self,
        settings: IRSettings | None,
        ref_masks: Tensor,
        ref_boxes: Tensor,
        target_labels: Tensor,
        target_boxes: Tensor,
    ) -> None:
        """Set the layout of the final pass; drops masks cached for an earlier layout."""
        p, s, h0, w0 = ref_masks.shape
        if tuple(ref_boxes.shape) != (p, s, 4) or tuple(target_boxes.shape) != (p, s, 4):
            raise ValueError(f"boxes must be (P, S, 4) = ({p}, {s}, 4)")
        if tuple(target_labels.shape) != (p, h0, w0):
            raise ValueError(f"target_labels must be (P, H0, W0) = ({p}, {h0}, {w0})")
        self.settings = settings
        self.num_subjects = s
        self.ref_masks = ref_masks.float()
        self.ref_boxes = ref_boxes.float()
        self.target_labels = target_labels.long()
        self.target_boxes = target_boxes.float()
        self.latent_hw = (h0, w0)
        self._cache = {}

    def deactivate(self) -> None:
        self.settings = None
        self.num_subjects = 0
        self._cache = {}

    def start_recording(self, tokens: Tensor | None = None) -> None:
        """Accumulate head-averaged cross-attention probabilities `(B, N, L)` per resolution."""
        self.record_cross = True
        self.record_tokens = tokens
        self.cross_maps = {}
        self.cross_counts = {}

    def stop_recording(self) -> dict[tuple[int, int], Tensor]:
        self.record_cross = False
        maps = {hw: total / self.cross_counts[hw] for hw, total in self.cross_maps.items()}
        self.cross_maps, self.cross_counts = {}, {}
        return maps

    def spatial_size(self, num_tokens: int) -> tuple[int, int]:
        """(h, w) of a flattened feature map of `num_tokens` tokens with the latent's aspect ratio."""
        num_tokens = int(num_tokens)
        if self.latent_hw is None:
            side = int(round(num_tokens**0.5))
            return side, num_tokens // side
        h0, w0 = self.latent_hw
        factor = round((h0 * w0 / num_tokens) ** 0.5)
        return h0 // factor, w0 // factor

    def layout(self, h: int, w: int, device: torch.device) -> dict[str, Any]:
        """Masks and sampling grids of resolution `(h, w)`, built once per generation."""
        key = (h, w)
        if key not in self._cache:
            self._cache[key] = {
                k: (v.to(device) if v is not None else None) for k, v in build_layout(self, h, w).items()
            }
        return self._cache[key]

    def batch_forms(
        self, h: int, w: int, groups: int, dtype: torch.dtype, device: torch.device
    ) -> dict[str, Any]:
        """The layout's tensors repeated for a batch of `groups` groups (and cast to the features'
        dtype where they multiply features), built once per resolution, batch and dtype.

        index `(groups, S, M * T)` long: the reference positions to gather (T = 4 bilinear taps
        when repositioning, else 1); weight `(groups, S, M * T, 1)` or None: the taps' weights;
        blend `(groups, S, 1, N, 1)` and keep `(groups, 1, N, 1)`: the cross-attention blend
        weights `a * [pixel owned by subject i]` and `1 - sum_i` of them.
        """
        layout = self.layout(h, w, device)
        key = f"batch_{groups}_{dtype}"
        if key not in layout:
            reps = groups // layout["mask"].shape[0]
            if layout["tap_index"] is None:
                index, weight = layout["ref_index"], None
            else:
                index = layout["tap_index"].flatten(-2)
                weight = layout["tap_weight"].flatten(-2).repeat(reps, 1, 1)[..., None].to(dtype)
            blend = self.settings.cross_blend if self.settings is not None else 0.0
            owner = layout["owner"].repeat(reps, 1, 1).permute(0, 2, 1)  # (groups, S, N)
            weights = owner.to(dtype) * blend
            layout[key] = {
                "index": index.repeat(reps, 1, 1),
                "weight": weight,
                "blend": weights[:, :, None, :, None],
                "keep": (1 - weights.sum(dim=1))[:, None, :, None],
            }
        return layout[key]

    def mask_spec(self, h: int, w: int, groups: int, device: torch.device) -> DenseMask:
        """The target's mask for a batch of `groups` groups as one `DenseMask`, reused by every call.

        Reusing the spec object lets the core's mask cache serve its dense forms across layers and steps.
        """
        layout = self.layout(h, w, device)
        key = f"spec_{groups}"
        if key not in layout:
            mask = layout["mask"]
            layout[key] = DenseMask(mask.repeat(groups // mask.shape[0], 1, 1, 1))  # type: ignore[union-attr]
        return layout[key]  # type: ignore[return-value]


def _pixel_centres(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    return ys.view(h, 1).expand(h, w), xs.view(1, w).expand(h, w)


def labels_at(labels: Tensor, h: int, w: int) -> Tensor:
    """Label maps `(P, H0, W0)` sampled at the pixel centres of an `(h, w)` grid -> `(P, h * w)`."""
    p = labels.shape[0]
    return F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest-exact").long().view(p, h * w)


def reposition_grid(ref_boxes: Tensor, target_boxes: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Sampling grid that moves each reference box onto its target box, for `F.grid_sample`.

    Returns `grid (P, S, h, w, 2)` in [-1, 1] (pixels outside the target box sample far outside,
    which reads zeros) and `inside (P, S, h, w)` bool (pixel centre inside the target box).
    """
    ys, xs = _pixel_centres(h, w, ref_boxes.device)
    tx0, ty0, tx1, ty1 = (target_boxes[..., i, None, None] for i in range(4))
    rx0, ry0, rx1, ry1 = (ref_boxes[..., i, None, None] for i in range(4))
    inside = (xs >= tx0) & (xs < tx1) & (ys >= ty0) & (ys < ty1)
    ref_x = rx0 + (xs - tx0) * (rx1 - rx0) / (tx1 - tx0).clamp_min(1e-6)
    ref_y = ry0 + (ys - ty0) * (ry1 - ry0) / (ty1 - ty0).clamp_min(1e-6)
    grid = torch.stack([ref_x * 2 - 1, ref_y * 2 - 1], dim=-1)
    grid = torch.where(inside[..., None], grid, torch.full_like(grid, -3.0))
    return grid, inside


def build_layout(state: IRState, h: int, w: int) -> dict[str, Tensor | None]:
    """The target's attention mask at `(h, w)`, the reference positions it uses and, with
    reposition, the sampling grid.

    ref_index `(P, S, M)` long: the positions (of the `h x w` grid of reference `i`'s hidden states,
    after reposition) that some target pixel may see, visible ones first in raster order, padded
    with position 0; `M` is the largest visible count over scenes and subjects (0 without
    reference keys, `N` for the unrouted `extended` variant).
    mask `(P, 1, N, N + S * M)` bool, True = may attend:
      [:, :, q, k]           target pixel q -> target pixel k (isolation blocks subject i -> j != i)
      [:, :, q, N + i*M + m] target pixel q -> reference-i token `ref_index[:, i, m]`: only if q is in
                             subject i's target region and that token lies on reference i's
                             subject (after reposition); never for a padded slot.
    grid `(P, S, M, 2)`: where each gathered token samples reference `i` (reposition only), and
    the same points as bilinear taps (`bilinear_taps`): tap_index `(P, S, M, 4)`, tap_weight
    `(P, S, M, 4)`.
    """
    assert state.settings is not None and state.ref_masks is not None
    settings = state.settings
    p, s = state.ref_masks.shape[:2]
    n = h * w
    labels = labels_at(state.target_labels, h, w)  # (P, N)
    grid = None
    if settings.reposition:
        grid, inside = reposition_grid(state.ref_boxes, state.target_boxes, h, w)
        sampled = F.grid_sample(
            state.ref_masks.reshape(p * s, 1, *state.ref_masks.shape[2:]),
            grid.reshape(p * s, h, w, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        ).view(p, s, h, w)
        visible_ref = (sampled > 0.5) & inside
    else:
        coverage = (
            F.adaptive_avg_pool2d(state.ref_masks, (h, w)) if state.ref_masks.shape[-1] % w == 0 else None
        )
        if coverage is None:
            coverage = F.interpolate(state.ref_masks, size=(h, w), mode="bilinear", align_corners=False)
        visible_ref = coverage > 0.5
    visible_ref = visible_ref.view(p, s, n)
    if settings.isolation:
        q_lab, k_lab = labels[:, :, None], labels[:, None, :]
        self_mask = ~((q_lab > 0) & (k_lab > 0) & (q_lab != k_lab))
    else:
        self_mask = torch.ones(p, n, n, dtype=torch.bool, device=labels.device)
    owner = labels[:, :, None] == torch.arange(1, s + 1, device=labels.device).view(1, 1, s)  # (P, N, S)
    if not settings.reference:
        visible_ref = torch.zeros_like(visible_ref)
    elif not settings.route:
        visible_ref = torch.ones_like(visible_ref)
    else:  # a token no target pixel owns is never seen: leave it out
        visible_ref = visible_ref & owner.any(dim=1)[..., None]
    slots = int(visible_ref.sum(dim=-1).max()) if visible_ref.numel() else 0
    order = torch.sort((~visible_ref).to(torch.uint8), dim=-1, stable=True).indices  # visible first
    ref_index = order[..., :slots]  # (P, S, M)
    valid = torch.gather(visible_ref, 2, ref_index)
    seen = owner[..., None] if settings.route else torch.ones_like(owner)[..., None]
    ref_mask = seen & valid[:, None]  # (P, N, S, M)
    mask = torch.cat([self_mask, ref_mask.reshape(p, n, s * slots)], dim=-1)[:, None]
    tap_index = tap_weight = None
    if grid is not None:
        grid = torch.gather(grid.reshape(p, s, n, 2), 2, ref_index[..., None].expand(p, s, slots, 2))
        tap_index, tap_weight = bilinear_taps(grid, h, w)
    return {
        "mask": mask,
        "grid": grid,
        "tap_index": tap_index,
        "tap_weight": tap_weight,
        "owner": owner,
        "ref_index": ref_index,
    }


def bilinear_taps(grid: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """`F.grid_sample`'s bilinear sampling (zero padding, `align_corners=False`) of an `(h, w)` map
    at the points `grid (..., 2)` (x, y in [-1, 1]) as four taps per point: flat positions
    `index (..., 4)` long and `weight (..., 4)` float (0 for a tap outside the map).

    Sampling token-major features `(..., N, D)` by gathering the taps reads whole feature rows,
    where `grid_sample` on channel-first maps walks the channels of each point one by one.
    """
    x = ((grid[..., 0].float() + 1) * w - 1) / 2
    y = ((grid[..., 1].float() + 1) * h - 1) / 2
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    xs = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=-1)
    ys = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=-1)
    weight = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=-1)
    inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
    index = torch.where(inside, ys * w + xs, torch.zeros_like(xs)).long()
    return index, torch.where(inside, weight, torch.zeros_like(weight))


def expand_mask(layout: dict[str, Tensor | None], n: int) -> Tensor:
    """The layout's mask over all reference positions, `(P, 1, N, N + S * N)`: the gathered slots
    scattered back to the positions they stand for (for inspection and tests)."""
    mask, ref_index = layout["mask"], layout["ref_index"]
    assert mask is not None and ref_index is not None
    p, s, slots = ref_index.shape
    counts = torch.zeros(p, n, s, n, dtype=torch.int32, device=mask.device)
    gathered = mask[:, 0, :, n:].reshape(p, n, s, slots).to(torch.int32)
    # padded slots repeat position 0 with False: adding keeps a visible position 0 visible
    counts.scatter_add_(3, ref_index[:, None].expand(p, n, s, slots), gathered)
    return torch.cat([mask[:, 0, :, :n], (counts > 0).reshape(p, n, s * n)], dim=-1)[:, None]


class IRAttnProcessor:
    """A diffusers attention processor with IR-Diffusion's masks (see the module docstring).

    `name` is the processor's key in `unet.attn_processors`; `enabled` says whether IR applies at
    this layer (the others only count calls and record cross-attention maps).
    """

    def __init__(self, name: str, state: IRState, enabled: bool = True) -> None:
        self.name = name
        self.state = state
        self.enabled = enabled

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        state = self.state
        state.calls += 1
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        mask = None
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
            mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask > -1.0
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        is_cross = encoder_hidden_states is not None
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query = query.view(batch_size, -1, heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        num_tokens = query.shape[2]
        use_ir = self.enabled and state.active and mask is None and batch_size % state.group_size == 0
        if use_ir and not is_cross and (state.settings.reference or state.settings.isolation):  # type: ignore[union-attr]
            out = self._isolated_self_attention(attn, hidden_states, query, key, value, num_tokens)
        else:
            out = attention(query, key, value, mask=mask, backend=state.backend)
            if is_cross and use_ir and state.settings.cross_blend > 0:  # type: ignore[union-attr]
                out = self._blend_cross(query, key, value, out, num_tokens)
        if is_cross and state.record_cross:
            probs = torch.softmax((query @ key.transpose(-1, -2)) * attn.scale, dim=-1).mean(dim=1)
            hw = state.spatial_size(num_tokens)
            state.cross_maps[hw] = state.cross_maps.get(hw, 0) + probs.detach()
            state.cross_counts[hw] = state.cross_counts.get(hw, 0) + 1

        hidden_states = out.transpose(1, 2).reshape(batch_size, -1, heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _isolated_self_attention(
        self, attn: Any, hidden_states: Tensor, query: Tensor, key: Tensor, value: Tensor, n: int
    ) -> Tensor:
        """Self-attention of a `[refs..., target]` batch: refs plain, target with IR keys/values."""
        state = self.state
        s, g = state.num_subjects, state.group_size
        batch, heads, _, head_dim = query.shape
        groups = batch // g
        channels = hidden_states.shape[-1]
        h, w = state.spatial_size(n)
        layout = state.layout(h, w, query.device)
        p = layout["mask"].shape[0]
        if groups % p:
            raise ValueError(f"{self.name}: batch of {groups} groups is not a multiple of {p} scenes")
        q = query.view(groups, g, heads, n, head_dim)
        k = key.view(groups, g, heads, n, head_dim)
        v = value.view(groups, g, heads, n, head_dim)
        out_refs = attention(
            q[:, :s].reshape(groups * s, heads, n, head_dim),
            k[:, :s].reshape(groups * s, heads, n, head_dim),
            v[:, :s].reshape(groups * s, heads, n, head_dim),
            backend=state.backend,
        ).view(groups, s, heads, n, head_dim)

        slots = layout["ref_index"].shape[-1]
        forms = state.batch_forms(h, w, groups, query.dtype, query.device)
        index, weight = forms["index"], forms["weight"]
        linear = (
            getattr(attn.to_k, "bias", None) is None
            and getattr(attn.to_v, "bias", None) is None
            and attn.norm_k is None
        )

        def pick(tokens: Tensor) -> Tensor:
            """`(groups, S, N, D)` per reference position -> `(groups, S, M, D)` at the gathered
            positions (bilinearly sampled from the reference when repositioning: a gather of four
            taps and their weighted sum)."""
            d = tokens.shape[-1]
            picked = torch.gather(tokens, 2, index[..., None].expand(groups, s, index.shape[-1], d))
            if weight is None:
                return picked
            return (picked * weight).view(groups, s, slots, 4, d).sum(dim=3)

        if linear:  # the layer's own reference keys/values, picked (sampling commutes with to_k/to_v)

            def per_position(t: Tensor) -> Tensor:
                return t[:, :s].permute(0, 1, 3, 2, 4).reshape(groups, s, n, heads * head_dim)

            k_extra = pick(per_position(k)).reshape(groups, s * slots, heads, head_dim).transpose(1, 2)
            v_extra = pick(per_position(v)).reshape(groups, s * slots, heads, head_dim).transpose(1, 2)
        else:
            extra = pick(hidden_states.view(groups, g, n, channels)[:, :s]).reshape(
                groups, s * slots, channels
            )
            k_extra = attn.to_k(extra).view(groups, s * slots, heads, head_dim).transpose(1, 2)
            v_extra = attn.to_v(extra).view(groups, s * slots, heads, head_dim).transpose(1, 2)
            if attn.norm_k is not None:
                k_extra = attn.norm_k(k_extra)
        k_target = torch.cat([k[:, s], k_extra], dim=2)
        v_target = torch.cat([v[:, s], v_extra], dim=2)
        mask = state.mask_spec(h, w, groups, query.device)
        out_target = attention(q[:, s], k_target, v_target, mask=mask, backend=state.backend)
        out = torch.cat([out_refs, out_target[:, None]], dim=1)
        return out.reshape(batch, heads, n, head_dim)

    def _blend_cross(self, query: Tensor, key: Tensor, value: Tensor, out: Tensor, n: int) -> Tensor:
        """Inside subject i's target region: (1 - a) * own cross-attention + a * attention to ref i's prompt."""
        state = self.state
        s, g = state.num_subjects, state.group_size
        batch, heads, _, head_dim = query.shape
        groups = batch // g
        h, w = state.spatial_size(n)
        forms = state.batch_forms(h, w, groups, out.dtype, query.device)
        length = key.shape[2]
        q_target = query.view(groups, g, heads, n, head_dim)[:, s]
        k_refs = key.view(groups, g, heads, length, head_dim)[:, :s]
        v_refs = value.view(groups, g, heads, length, head_dim)[:, :s]
        q_rep = (
            q_target[:, None].expand(groups, s, heads, n, head_dim).reshape(groups * s, heads, n, head_dim)
        )
        from_refs = attention(
            q_rep,
            k_refs.reshape(groups * s, heads, length, head_dim),
            v_refs.reshape(groups * s, heads, length, head_dim),
            backend=state.backend,
        ).view(groups, s, heads, n, head_dim)
        out = out.view(groups, g, heads, n, head_dim)
        target = out[:, s] * forms["keep"] + (forms["blend"] * from_refs).sum(dim=1)
        return torch.cat([out[:, :s], target[:, None]], dim=1).reshape(batch, heads, n, head_dim)


def install(unet: Any, layers: str | Iterable[str] = "all", backend: str = "auto") -> IRState:
    """Give every attention layer of `unet` an `IRAttnProcessor` sharing one new `IRState`.

    `layers`: "all" or prefixes of processor names (e.g. ["up_blocks", "mid_block"]) where IR applies;
    the layers are counted from `unet.attn_processors`, so any UNet works.
    """
    names = list(unet.attn_processors.keys())
    state = IRState(names, backend=backend)
    prefixes = None if layers == "all" else tuple([layers] if isinstance(layers, str) else layers)
    processors = {
        name: IRAttnProcessor(name, state, enabled=prefixes is None or name.startswith(prefixes))
        for name in names
    }
    unet.set_attn_processor(processors)
    return state
