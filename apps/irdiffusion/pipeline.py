"""The IR-Diffusion pipeline: references -> subject masks -> vanilla scene -> target boxes -> final pass.

1. Each reference subject is generated alone (its own prompt, its own seed); its denoising
   trajectory is kept and the cross-attention maps of its subject tokens give its mask and box
   (or an external segmenter does, `segmenter=`).
2. The target prompt is generated once without IR (the vanilla scene, same seed as every
   variant); its subject-token maps give each subject's target box and region.
3. The final pass denoises `[ref_1, ..., ref_S, target]` groups from the vanilla scene's noise with
   the IR processors active; the reference slots replay their stored trajectories, so their
   hidden states at every layer and step are those of step 1 (the paper's setting,
   `reference_noise=1`). With `reference_noise = γ < 1` (our ablation, not the paper's) the
   reference slots instead hold their finished latents noised afresh, with their own initial
   noise, to timestep `round(γ · t)` at the target's timestep t, and the UNet is told that
   timestep for those rows: references clearer than the target (γ = 0: clean references), for a
   base model that copies only from references less noisy than itself. With `ir_start = f > 0` (ours,
   not the paper's) the first `round(f · steps)` steps of the final pass run with the processors
   paused, so the target follows the vanilla scene's trajectory, and with it the layout the target
   boxes were taken from, before IR starts.

Backends: `TinyBackend` (our base model, pixel space, caption ids) and `DiffusersBackend` (any local
`StableDiffusionPipeline` / `StableDiffusionXLPipeline` folder, latent space, string prompts).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from apps.irdiffusion.processors import IRSettings, install

log = logging.getLogger(__name__)

VARIANTS = ("vanilla", "mutual", "isolation", "reposition", "both")
Segmenter = Callable[[Tensor], Tensor]


# ----------------------------------------------------------------------------------------- backends
class TinyBackend:
    """Our base model: pixel space, prompts are caption ids `(B, L)`."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.unet = model.unet
        self.image_size = model.image_size
        self.latent_shape = (3, model.image_size, model.image_size)
        self.null_tokens: Tensor | None = None

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def scheduler(self) -> Any:
        return self.model.sample_scheduler()

    def encode(self, prompts: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.model.text_encoder(prompts), {}

    def encode_null(self, n: int) -> tuple[Tensor, dict[str, Tensor]]:
        tokens = torch.zeros(n, self.model.max_length, dtype=torch.long)
        tokens[:, 0] = 1
        return self.encode(tokens)

    def decode(self, latents: Tensor) -> Tensor:
        return ((latents.clamp(-1, 1) + 1) / 2).float()


class DiffusersBackend:
    """A local Stable Diffusion (1.x/2.x) or SDXL pipeline in diffusers format; prompts are strings.

    The pipeline's own scheduler configuration is sampled with DDIM (its betas, spacing and
    prediction type), and the unconditional input is built as the diffusers pipeline builds it, so
    the vanilla pass equals `pipe(prompt, latents=..., guidance_scale=...)` with a DDIM scheduler.
    Noise is drawn on the CPU (the same images on any device) and moved to the UNet's device and dtype.
    """

    def __init__(self, pipe: Any, height: int | None = None, width: int | None = None) -> None:
        self.pipe = pipe
        self.unet = pipe.unet
        self.xl = hasattr(pipe, "text_encoder_2")
        factor = getattr(pipe, "vae_scale_factor", 8)
        height = height or pipe.unet.config.sample_size * factor
        width = width or pipe.unet.config.sample_size * factor
        self.image_size = (height, width)
        self.latent_shape = (pipe.unet.config.in_channels, height // factor, width // factor)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def scheduler(self) -> Any:
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.pipe.scheduler.config)

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        device = self.unet.device
        if not self.xl:
            embeds, _ = self.pipe.encode_prompt(list(prompts), device, 1, False)
            return embeds, {}
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            list(prompts), device=device, do_classifier_free_guidance=False
        )
        h, w = self.image_size
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=embeds.dtype, device=device).repeat(
            len(prompts), 1
        )
        return embeds, {"text_embeds": pooled, "time_ids": time_ids}

    def encode_null(self, n: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The unconditional input of classifier-free guidance, as the diffusers pipeline builds it:
        the empty prompt's embeddings, or zeros for SDXL folders with `force_zeros_for_empty_prompt`."""
        embeds, extra = self.encode([""] * n)
        if self.xl and self.pipe.config.get("force_zeros_for_empty_prompt", False):
            embeds = torch.zeros_like(embeds)
            extra = {**extra, "text_embeds": torch.zeros_like(extra["text_embeds"])}
        return embeds, extra

    def decode(self, latents: Tensor) -> Tensor:
        vae = self.pipe.vae
        dtype = vae.dtype
        # SDXL's VAE overflows in float16: decode in float32 when its config asks for it, as diffusers does
        upcast = dtype == torch.float16 and vae.config.get("force_upcast", False)
        if upcast:
            vae.to(torch.float32)
        try:
            latents = latents.to(torch.float32 if upcast else dtype) / vae.config.scaling_factor
            images = vae.decode(latents, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(dtype)
        return ((images.clamp(-1, 1) + 1) / 2).float()

    def token_positions(self, prompt: str, word: str) -> list[int]:
        """Positions of `word`'s tokens inside the tokenised `prompt`, as the text encoder sees it
        (truncated to the tokenizer's length); raises if the word is absent or cut off."""
        tokenizer = self.pipe.tokenizer
        limit = tokenizer.model_max_length
        ids = tokenizer(prompt).input_ids
        word_ids = tokenizer(word, add_special_tokens=False).input_ids
        if not word_ids:
            raise ValueError(f"subject word {word!r} gives no tokens")
        for start in range(len(ids) - len(word_ids) + 1):
            if ids[start : start + len(word_ids)] == word_ids:
                if start + len(word_ids) > limit - 1:  # the last kept position is the end token
                    raise ValueError(
                        f"subject word {word!r} lies beyond the text encoder's {limit} tokens in "
                        f"prompt {prompt!r} (the prompt is truncated there): shorten the prompt"
                    )
                return list(range(start, start + len(word_ids)))
        raise ValueError(f"subject word {word!r} does not occur in prompt {prompt!r}")


def load_diffusers_backend(
    path: str | Path | None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> DiffusersBackend:
    """Load a local SD / SDXL folder (no download) onto `device` in `dtype`; clear error when there is none."""
    if not path:
        raise FileNotFoundError(
            "IR-Diffusion with Stable Diffusion needs a local diffusers folder: pass its path "
            "(e.g. app.module.sd_path=/models/stable-diffusion-v1-5); nothing is downloaded at run time"
        )
    path = Path(path).expanduser()
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{path}: not a diffusers pipeline folder (no model_index.json); expected a local "
            "StableDiffusionPipeline or StableDiffusionXLPipeline saved with save_pretrained"
        )
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(
        str(path), local_files_only=True, **({"dtype": dtype} if dtype is not None else {})
    )
    if not hasattr(pipe, "unet") or not hasattr(pipe, "vae") or not hasattr(pipe, "encode_prompt"):
        raise ValueError(
            f"{path}: holds a {type(pipe).__name__}, expected a StableDiffusionPipeline or "
            "StableDiffusionXLPipeline (a UNet, a VAE and text encoders)"
        )
    if device is not None:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return DiffusersBackend(pipe, **kwargs)


# ----------------------------------------------------------------------------------- mask helpers
def foreground_segmenter(images: Tensor, threshold: float = 0.12) -> Tensor:
    """An external-segmenter example for plain backgrounds: `(B, 3, H, W)` in [0, 1] -> `(B, H, W)` bool.

    The background colour is the median of the border pixels; foreground differs from it by more
    than `threshold` in some channel.
    """
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], dim=-1)
    background = border.median(dim=-1).values[..., None, None]
    return (images - background).abs().amax(dim=1) > threshold


def boxes_from_masks(masks: Tensor) -> Tensor:
    """Normalised `x0, y0, x1, y1` boxes `(..., 4)` of bool masks `(..., H, W)`; empty masks -> whole image."""
    h, w = masks.shape[-2:]
    rows, cols = masks.any(dim=-1), masks.any(dim=-2)
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ys, h).amin(-1)
    y1 = torch.where(rows, ys + 1, 0).amax(-1)
    x0 = torch.where(cols, xs, w).amin(-1)
    x1 = torch.where(cols, xs + 1, 0).amax(-1)
    empty = ~rows.any(-1)
    boxes = torch.stack([x0 / w, y0 / h, x1 / w, y1 / h], dim=-1).float()
    whole = torch.tensor([0.0, 0.0, 1.0, 1.0], device=masks.device).expand_as(boxes)
    return torch.where(empty[..., None], whole, boxes)


def box_masks(boxes: Tensor, h: int, w: int) -> Tensor:
    """Bool `(..., h, w)`: pixel centres inside normalised `boxes (..., 4)`."""
    ys = (torch.arange(h, device=boxes.device) + 0.5) / h
    xs = (torch.arange(w, device=boxes.device) + 0.5) / w
    x0, y0, x1, y1 = (boxes[..., i, None, None] for i in range(4))
    return (xs >= x0) & (xs < x1) & (ys[:, None] >= y0) & (ys[:, None] < y1)


def token_maps(maps: dict[tuple[int, int], Tensor], positions: Tensor, size: tuple[int, int]) -> Tensor:
    """Average subject-token cross-attention maps over resolutions -> `(B, S, H, W)`, min-max normalised.

    `maps[(h, w)]` is `(B, h * w, L)`; `positions (B, S, T)` lists each subject's token positions
    (-1 = unused). Each map is scaled to [0, 1] by its own minimum and maximum: a subject token
    takes a large share of every pixel's softmax (padding and the other words take the rest), so
    the raw maps sit on a high floor and a threshold on max-normalised maps (the old behaviour)
    selected almost every pixel (whole-image masks and boxes).
    """
    total = None
    for (h, w), probs in maps.items():
        b = probs.shape[0]
        grid = probs.view(b, h, w, -1).permute(0, 3, 1, 2)  # (B, L, h, w)
        up = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
        index = positions.clamp_min(0)
        picked = torch.gather(
            up[:, None].expand(-1, positions.shape[1], -1, -1, -1),
            2,
            index[..., None, None].expand(-1, -1, -1, *size),
        )
        picked = (picked * (positions >= 0)[..., None, None]).sum(dim=2)
        total = picked if total is None else total + picked
    if total is None:
        raise RuntimeError("no cross-attention maps were recorded; does the UNet have cross-attention?")
    low = total.flatten(-2).amin(-1)[..., None, None]
    high = total.flatten(-2).amax(-1)[..., None, None]
    return (total - low) / (high - low).clamp_min(1e-12)


def layout_from_ground_truth(batch: dict[str, Tensor], indices: Sequence[int]) -> dict[str, Tensor]:
    """An IR layout from dataset scenes: references = the subjects where they are; targets mirrored left-right.

    Used for export and tests; returns the keyword arguments of `IRState.configure`.
    """
    labels = batch["labels"][list(indices)]
    p, h, w = labels.shape
    s = int(batch["num_subjects"][list(indices)].min())
    ref_masks = torch.stack([(labels == i + 1).float() for i in range(s)], dim=1)
    ref_boxes = batch["boxes"][list(indices), :s].float() / torch.tensor([w, h, w, h])
    target_boxes = torch.stack(
        [1 - ref_boxes[..., 2], ref_boxes[..., 1], 1 - ref_boxes[..., 0], ref_boxes[..., 3]], -1
    )
    inside = box_masks(target_boxes, h, w)  # (P, S, H, W)
    target_labels = torch.where(inside.any(1), inside.float().argmax(1) + 1, 0)
    return {
        "ref_masks": ref_masks,
        "ref_boxes": ref_boxes,
        "target_labels": target_labels,
        "target_boxes": target_boxes,
    }


def subject_prompts(batch: dict[str, Tensor], indices: Sequence[int], max_length: int) -> list[Tensor]:
    """Per scene, `(S, L)` caption ids of each subject alone ("a <colour> <shape>")."""
    prompts = []
    for i in indices:
        s = int(batch["num_subjects"][i])
        tokens = batch["tokens"][i]
        rows = []
        for subject in range(s):
            colour, shape = (int(v) for v in batch["subject_tokens"][i, subject])
            row = torch.zeros(max_length, dtype=torch.long)
            row[:3] = torch.stack([tokens[colour - 1], tokens[colour], tokens[shape]])
            rows.append(row)
        prompts.append(torch.stack(rows))
    return prompts


# ------------------------------------------------------------------------------------- pipeline
@dataclass
class Generation:
    """Everything one `IRDiffusionPipeline.run` produced (images in [0, 1])."""

    references: Tensor  # (P, S, 3, H, W)
    ref_masks: Tensor  # (P, S, H, W) bool
    ref_boxes: Tensor  # (P, S, 4)
    target_boxes: Tensor  # (P, S, 4)
    target_labels: Tensor  # (P, H, W)
    images: dict[str, Tensor] = field(default_factory=dict)  # variant -> (P, 3, H, W)
    seconds: dict[str, float] = field(default_factory=dict)


class IRDiffusionPipeline:
    """IR-Diffusion over a backend (see the module docstring); `run` does all steps for P scenes."""

    def __init__(
        self,
        backend: Any,
        steps: int = 20,
        guidance_scale: float = 3.0,
        mask_threshold: float = 0.4,
        cross_blend: float = 0.3,
        layers: str | Sequence[str] = "all",
        attention_backend: str = "auto",
        segmenter: Segmenter | None = None,
        reference_noise: float = 1.0,
        ir_start: float = 0.0,
    ) -> None:
        if not 0.0 <= reference_noise <= 1.0:
            raise ValueError(f"reference_noise must lie in [0, 1], got {reference_noise}")
        if not 0.0 <= ir_start <= 1.0:
            raise ValueError(f"ir_start must lie in [0, 1], got {ir_start}")
        self.reference_noise = float(reference_noise)
        self.ir_start = float(ir_start)
        self.backend = backend
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.mask_threshold = mask_threshold
        self.cross_blend = cross_blend
        self.segmenter = segmenter
        self.state = install(backend.unet, layers=layers, backend=attention_backend)

    @property
    def ir_from(self) -> int:
        """The first step of the final pass with the processors on (`round(ir_start * steps)`)."""
        return int(round(self.ir_start * self.steps))

    def _unet(self, x: Tensor, t: Tensor, context: Tensor, extra: dict[str, Tensor]) -> Tensor:
        kwargs = {"added_cond_kwargs": extra} if extra else {}
        return self.backend.unet(x, t, context, return_dict=False, **kwargs)[0]

    @torch.no_grad()
    def denoise(
        self,
        noise: Tensor,
        cond: tuple[Tensor, dict[str, Tensor]],
        uncond: tuple[Tensor, dict[str, Tensor]],
        replay: Callable[[int, Tensor], tuple[Tensor, Tensor | None]] | None = None,
        replay_slots: Tensor | None = None,
        ir_from: int = 0,
    ) -> tuple[Tensor, list[Tensor]]:
        """DDIM with classifier-free guidance.

        `replay(i, t)` gives the latents `(B, ...)` whose `replay_slots` rows overwrite x before step
        i (timestep t), and the timestep of those rows (None: t, like every other row). Steps before
        `ir_from` run with the processors paused (plain attention).
        """
        scheduler = self.backend.scheduler()
        scheduler.set_timesteps(self.steps)
        x = noise * scheduler.init_noise_sigma
        trajectory = [x]
        context = torch.cat([uncond[0], cond[0]])
        extra = {k: torch.cat([uncond[1][k], cond[1][k]]) for k in cond[1]}
        for i, t in enumerate(scheduler.timesteps):
            self.state.step = i
            self.state.paused = i < ir_from
            timestep: Tensor = t
            if replay is not None:
                latents, replay_t = replay(i, t)
                x = x.clone()
                x[replay_slots] = latents[replay_slots].to(x.dtype)
                if replay_t is not None:
                    rows = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
                    rows[replay_slots] = int(replay_t)
                    timestep = torch.cat([rows, rows])
            model_in = scheduler.scale_model_input(torch.cat([x, x]), t)
            eps_uncond, eps_cond = self._unet(model_in, timestep, context, extra).chunk(2)
            eps = eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)
            x = scheduler.step(eps, t, x).prev_sample
            trajectory.append(x)
        self.state.paused = False
        return x, trajectory

    def _masks(self, images: Tensor, maps: Tensor) -> Tensor:
        """Subject masks `(B, S, H, W)` from token maps (and the segmenter's foreground, when given)."""
        h, w = images.shape[-2:]
        maps = (
            F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)
            if maps.shape[-2:] != (h, w)
            else maps
        )
        winner = maps.argmax(dim=1, keepdim=True) == torch.arange(maps.shape[1], device=maps.device).view(
            1, -1, 1, 1
        )
        if self.segmenter is not None:
            return self.segmenter(images)[:, None] & winner
        return (maps > self.mask_threshold) & winner

    @torch.no_grad()
    def run(
        self,
        target_prompts: Any,
        ref_prompts: Any,
        target_positions: Tensor,
        ref_positions: Tensor,
        seeds: Sequence[int],
        variants: Sequence[str] = VARIANTS,
    ) -> Generation:
        """Generate P scenes of S subjects each.

        target_prompts: P prompts; ref_prompts: P * S prompts (scene-major);
        target_positions `(P, S, T)` / ref_positions `(P * S, T)`: subject token positions (-1 unused).
        """
        backend = self.backend
        p, s = target_positions.shape[:2]
        c, lh, lw = backend.latent_shape
        noise_target = torch.stack(
            [torch.randn(c, lh, lw, generator=torch.Generator().manual_seed(int(sd))) for sd in seeds]
        )
        noise_refs = torch.stack(
            [
                torch.randn(c, lh, lw, generator=torch.Generator().manual_seed(int(sd) * 7919 + 17 + i))
                for sd in seeds
                for i in range(s)
            ]
        )
        device, dtype = backend.device, backend.dtype
        noise_target, noise_refs = noise_target.to(device, dtype), noise_refs.to(device, dtype)
        target_positions, ref_positions = target_positions.to(device), ref_positions.to(device)
        # 1. references
        self.state.reset()
        self.state.latent_hw = (lh, lw)
        ref_cond = backend.encode(ref_prompts)
        ref_uncond = backend.encode_null(p * s)
        self.state.start_recording()
        start = time.perf_counter()
        ref_latents, ref_trajectory = self.denoise(noise_refs, ref_cond, ref_uncond)
        seconds = {"references": time.perf_counter() - start}
        ref_maps_all = {hw: m[p * s :] for hw, m in self.state.stop_recording().items()}
        references = backend.decode(ref_latents)
        ref_maps = token_maps(ref_maps_all, ref_positions[:, None], (lh, lw))  # (P*S, 1, h, w)
        ref_masks = self._masks(references, ref_maps)[:, 0]
        ref_boxes = boxes_from_masks(ref_masks)
        # 2. vanilla scene and target boxes
        self.state.reset()
        self.state.latent_hw = (lh, lw)
        cond = backend.encode(target_prompts)
        uncond = backend.encode_null(p)
        self.state.start_recording()
        start = time.perf_counter()
        vanilla, _ = self.denoise(noise_target, cond, uncond)
        seconds["vanilla"] = time.perf_counter() - start
        maps = token_maps(
            {hw: m[p:] for hw, m in self.state.stop_recording().items()}, target_positions, (lh, lw)
        )
        vanilla_images = backend.decode(vanilla)
        target_masks = self._masks(vanilla_images, maps)
        target_boxes = boxes_from_masks(target_masks)
        h, w = vanilla_images.shape[-2:]
        inside = box_masks(target_boxes, lh, lw)
        score = F.interpolate(maps, size=(lh, lw), mode="bilinear", align_corners=False) * inside
        target_labels = torch.where(inside.any(1), score.argmax(1) + 1, 0)
        ref_masks_latent = F.interpolate(ref_masks.float()[:, None], size=(lh, lw), mode="area")[:, 0]
        generation = Generation(
            references=references.view(p, s, *references.shape[1:]),
            ref_masks=ref_masks.view(p, s, h, w),
            ref_boxes=ref_boxes.view(p, s, 4),
            target_boxes=target_boxes,
            target_labels=F.interpolate(target_labels[:, None].float(), size=(h, w), mode="nearest")[
                :, 0
            ].long(),
            images={"vanilla": vanilla_images} if "vanilla" in variants else {},
            seconds=seconds,
        )
        # 3. final passes
        g = s + 1
        group_cond = self._grouped(ref_cond, cond, p, s)
        group_uncond = self._grouped(ref_uncond, uncond, p, s)
        slots = torch.zeros(p * g, dtype=torch.bool, device=device)
        slots.view(p, g)[:, :s] = True
        init = self._group_latents(noise_refs.view(p, s, c, lh, lw), noise_target, p)
        replay = self._replay(ref_trajectory, ref_latents, noise_refs, noise_target, p, s)
        for variant in variants:
            if variant == "vanilla":
                continue
            self.state.reset()
            self.state.configure(
                IRSettings.variant(variant, cross_blend=self.cross_blend),
                ref_masks=ref_masks_latent.view(p, s, lh, lw),
                ref_boxes=ref_boxes.view(p, s, 4),
                target_labels=target_labels,
                target_boxes=target_boxes,
            )
            start = time.perf_counter()
            final, _ = self.denoise(
                init, group_cond, group_uncond, replay=replay, replay_slots=slots, ir_from=self.ir_from
            )
            generation.seconds[variant] = time.perf_counter() - start
            generation.images[variant] = backend.decode(final.view(p, g, c, lh, lw)[:, s])
        self.state.reset()
        return generation

    def _replay(
        self,
        trajectory: list[Tensor],
        finished: Tensor,
        noise_refs: Tensor,
        noise_target: Tensor,
        p: int,
        s: int,
    ) -> Callable[[int, Tensor], tuple[Tensor, Tensor | None]]:
        """The reference slots' latents (and timestep) before each step of the final pass."""
        c, lh, lw = self.backend.latent_shape
        if self.reference_noise >= 1.0:  # the paper: replay the references' own trajectories
            stored = [self._group_latents(x.view(p, s, c, lh, lw), noise_target, p) for x in trajectory]
            return lambda i, t: (stored[i], None)
        scheduler = self.backend.scheduler()  # its add_noise: the training forward process

        def renoised(i: int, t: Tensor) -> tuple[Tensor, Tensor]:
            t_ref = torch.tensor(int(round(self.reference_noise * int(t))), dtype=torch.long)
            x = scheduler.add_noise(finished, noise_refs.to(finished.dtype), t_ref.expand(finished.shape[0]))
            return self._group_latents(x.view(p, s, c, lh, lw), noise_target, p), t_ref

        return renoised

    def time_plain_groups(
        self, ref_prompts: Any, target_prompts: Any, p: int, s: int, seed: int = 0
    ) -> float:
        """Seconds of one final pass over the same `[refs, target]` batch with the processors inactive."""
        c, lh, lw = self.backend.latent_shape
        noise = torch.randn(p * (s + 1), c, lh, lw, generator=torch.Generator().manual_seed(seed))
        noise = noise.to(self.backend.device, self.backend.dtype)
        cond = self._grouped(self.backend.encode(ref_prompts), self.backend.encode(target_prompts), p, s)
        uncond = self._grouped(self.backend.encode_null(p * s), self.backend.encode_null(p), p, s)
        self.state.reset()
        start = time.perf_counter()
        self.denoise(noise, cond, uncond)
        return time.perf_counter() - start

    @staticmethod
    def _grouped(
        refs: tuple[Tensor, dict[str, Tensor]], target: tuple[Tensor, dict[str, Tensor]], p: int, s: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        def join(a: Tensor, b: Tensor) -> Tensor:
            return torch.cat([a.view(p, s, *a.shape[1:]), b.view(p, 1, *b.shape[1:])], dim=1).flatten(0, 1)

        return join(refs[0], target[0]), {k: join(refs[1][k], target[1][k]) for k in target[1]}

    @staticmethod
    def _group_latents(refs: Tensor, target: Tensor, p: int) -> Tensor:
        return torch.cat([refs, target[:, None]], dim=1).flatten(0, 1)
