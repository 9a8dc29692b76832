"""LightningModule of the IR-Diffusion app.

Training fits the base model: epsilon-prediction MSE of the UNet (captions dropped to the empty
caption with probability `cfg_dropout`, for classifier-free guidance) plus cross-entropy of the
subject classifier on ground-truth crops (identity and pattern heads; boxes jittered and enlarged
by up to `box_scale_jitter` per axis). `train_parts="classifier"` trains only the classifier of a
model initialised from `init_weights` (a trained checkpoint). Validation reports the
diffusion loss at fixed noise and timesteps (`val/loss`, monitored) and the classifier accuracies.

Reference training (`reference_training = p > 0`, with `data.references=true`): each training scene
of two or more subjects is, with probability p, denoised as a group `[ref_1, ..., ref_S, scene]`
(single-subject images of the same subjects, same identity and pattern, elsewhere on their own
background; one timestep per group) through the IR processors in the `reference_variant` setting,
by default `extended` (every scene pixel may attend to every reference token, no subject routing,
no isolation, no reposition). A large text-to-image model learns from natural images that alike
things share their details, which is what training-free consistency methods rely on; our generated
scenes never reward that, so this gives the small base model the same prior, without training
any part of isolation or reposition. `reference_timesteps`: `same` noises the references at the
scene's timestep (as the pipeline denoises them together), `lower` at a uniform timestep in
[0, t] each, so they show their details more clearly than the scene does and copying pays off
(equally noisy references are no clearer than the scene, so a model gains little from them).
Validation then also reports the ε-MSE of the multi-subject scenes without and with their
references (`val/loss_multi_plain`, `val/loss_multi_refs`).

Testing (also what `apps.eval` runs) is the IR-Diffusion evaluation: for each test scene the
pipeline generates the references, the vanilla scene and the final pass of every variant from the
same seeds (`reference_noise`: how noisy the references are in the final pass, 1 = their own
trajectories as in the paper, γ < 1 = re-noised to γ·t, see `pipeline.py`), scores them
(`metrics.py`), and at the end writes `irdiffusion_table.md/json` (mean +- std over scenes, paired
per-scene differences between variants, every scene's scores), comparison grids and timings into
the run folder. With `clip_path` / `dino_path` (local
model folders) the tables add CLIP-I, CLIP-T, DINO and DINO-leakage scores (`external.py`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from apps.common.io import write_json
from apps.common.module import BaseModule
from apps.irdiffusion.external import EXTERNAL_METRICS
from apps.irdiffusion.metrics import (
    METRICS,
    markdown_table,
    paired_differences,
    paired_markdown,
    subject_metrics,
    summarise,
)
from apps.irdiffusion.pipeline import (
    VARIANTS,
    IRDiffusionPipeline,
    TinyBackend,
    foreground_segmenter,
    subject_prompts,
)
from apps.irdiffusion.plots import save_comparison_grid
from apps.irdiffusion.processors import IRSettings, IRState, install

log = logging.getLogger(__name__)

FOREGROUND_SUFFIX = "_fg"
# columns of the paired-difference table (reference alignment is the same for every variant)
PAIRED_COLUMNS = (
    *METRICS,
    "pattern_consistency" + FOREGROUND_SUFFIX,
    "leakage" + FOREGROUND_SUFFIX,
    "subjects_drawn",
)


def scale_jitter(boxes: Tensor, amount: float) -> Tensor:
    """Pixel boxes `(..., 4)` scaled about their centres by a random factor in [1, 1 + amount] per axis.

    The factor is `1 + amount * u ** 2` (u uniform): half of the boxes stay within 1 + amount / 4,
    so tight crops keep their weight.

    Teaches the subject classifier (the evaluation's judge) the loose boxes that generated images
    get from cross-attention masks: trained on tight crops only, its identity accuracy on real
    scenes falls from 1.00 to 0.48 with boxes 1.25 times too large.
    """
    return _scaled(boxes, 1 + torch.rand((*boxes.shape[:-1], 2), device=boxes.device).square() * amount)


def _scaled(boxes: Tensor, factor: float | Tensor) -> Tensor:
    """Pixel boxes `(..., 4)` scaled about their centres by `factor` (a number or `(..., 2)` per axis)."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    half = (boxes[..., 2:] - boxes[..., :2]) / 2 * factor
    return torch.cat([centre - half, centre + half], dim=-1)


def load_model_weights(model: torch.nn.Module, path: str) -> None:
    """Initialise `model` from the weights of a training checkpoint (`module.init_weights`)."""
    from apps.common.io import load_checkpoint
    from apps.common.module import model_state_dict

    missing, unexpected = model.load_state_dict(model_state_dict(load_checkpoint(path)), strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"{path}: weights do not fit the model: missing {missing}, unexpected {unexpected}"
        )
    log.info("initialised the model from %s", path)


class IRDiffusionModule(BaseModule):
    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any = None,
        cfg_dropout: float = 0.1,
        classifier_weight: float = 0.1,
        box_jitter: float = 1.0,
        box_scale_jitter: float = 0.0,
        train_parts: str = "all",
        init_weights: str | None = None,
        sample_steps: int = 20,
        guidance_scale: float = 3.0,
        mask_threshold: float = 0.4,
        cross_blend: float = 0.3,
        segmenter: str | None = None,
        clip_path: str | None = None,
        dino_path: str | None = None,
        ir_layers: Any = "all",
        attention_backend: str = "sdpa",
        variants: tuple[str, ...] = VARIANTS,
        grid_scenes: int = 8,
        seed: int = 0,
        reference_training: float = 0.0,
        reference_variant: str = "extended",
        reference_timesteps: str = "same",
        reference_noise: float = 1.0,
        ir_start: float = 0.0,
        model_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model, optimizer, scheduler, model_config)
        self.cfg_dropout = cfg_dropout
        self.classifier_weight = classifier_weight
        self.box_jitter = box_jitter
        self.box_scale_jitter = box_scale_jitter
        if train_parts not in ("all", "classifier"):
            raise ValueError(f"module.train_parts: expected 'all' or 'classifier', got {train_parts!r}")
        self.train_parts = train_parts
        if init_weights:
            load_model_weights(model, init_weights)
        self.sample_steps = sample_steps
        self.guidance_scale = guidance_scale
        self.mask_threshold = mask_threshold
        self.cross_blend = cross_blend
        if segmenter not in (None, "foreground"):
            raise ValueError(f"module.segmenter: expected null or 'foreground', got {segmenter!r}")
        self.segmenter = segmenter
        self.clip_path = clip_path
        self.dino_path = dino_path
        self._scorers: dict[str, Any] | None = None
        self.ir_layers = ir_layers
        self.attention_backend = attention_backend
        self.variants = tuple(variants)
        self.grid_scenes = grid_scenes
        self.seed = seed
        if not 0.0 <= reference_training <= 1.0:
            raise ValueError(f"module.reference_training must lie in [0, 1], got {reference_training}")
        self.reference_training = float(reference_training)
        if reference_variant == "vanilla" or IRSettings.variant(reference_variant) is None:
            raise ValueError(
                f"module.reference_variant: expected a variant with references, got {reference_variant!r}"
            )
        self.reference_variant = reference_variant
        if reference_timesteps not in ("same", "lower"):
            raise ValueError(
                f"module.reference_timesteps: expected 'same' or 'lower', got {reference_timesteps!r}"
            )
        self.reference_timesteps = reference_timesteps
        if not 0.0 <= reference_noise <= 1.0:
            raise ValueError(f"module.reference_noise must lie in [0, 1], got {reference_noise}")
        self.reference_noise = float(reference_noise)
        if not 0.0 <= ir_start <= 1.0:
            raise ValueError(f"module.ir_start must lie in [0, 1], got {ir_start}")
        self.ir_start = float(ir_start)
        self._ir_state: IRState | None = None
        self.noise_scheduler = model.train_scheduler()
        self._test_values: dict[str, dict[str, list[float]]] = {}
        self._test_seconds: dict[str, float] = {}
        self._grid: dict[str, list[Tensor]] = {}
        self._pipeline: IRDiffusionPipeline | None = None

    # ------------------------------------------------------------------------------- training
    def _losses(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        images, tokens = batch["image"], batch["tokens"]
        b = images.shape[0]
        noise = torch.randn(images.shape, generator=generator).to(images)
        steps = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (b,), generator=generator).to(images.device)
        extra: dict[str, Tensor] = {}
        if self.training and self.train_parts == "classifier":
            diffusion = images.new_zeros(())  # the diffusion model is frozen: skip its forward
        else:
            drop = torch.zeros(b, dtype=torch.bool, device=images.device)
            if self.training and self.cfg_dropout > 0:
                drop = torch.rand(b, device=images.device) < self.cfg_dropout
                null = torch.zeros_like(tokens)
                null[:, 0] = 1
                tokens = torch.where(drop[:, None], null, tokens)
            grouped = self._reference_selection(batch) if self.training else None
            if grouped is None:
                noisy = self.noise_scheduler.add_noise(images, noise, t)
                eps = self.model(noisy, t, tokens)
                diffusion = F.mse_loss(eps, noise)
            else:
                errors = []
                plain = ~grouped
                if plain.any():
                    noisy = self.noise_scheduler.add_noise(images[plain], noise[plain], t[plain])
                    eps = self.model(noisy, t[plain], tokens[plain])
                    errors.append((eps - noise[plain]).square().flatten(1).mean(1))
                errors.append(self._group_errors(batch, grouped, tokens, drop, noise, t))
                diffusion = torch.cat(errors).mean()
            if not self.training and self.reference_training > 0 and "ref_image" in batch:
                extra = self._reference_gain(batch, noise, t, generator)

        present = batch["identity"] >= 0
        boxes = batch["boxes"].float()
        if self.training and self.box_scale_jitter > 0:
            boxes = scale_jitter(boxes, self.box_scale_jitter)
        if self.training and self.box_jitter > 0:
            boxes = boxes + (torch.rand(boxes.shape, device=boxes.device) * 2 - 1) * self.box_jitter
        crops = self.model.classifier.crop(images, boxes)[present.flatten()]
        id_logits, pattern_logits, _ = self.model.classifier(crops)
        identity = batch["identity"][present].long()
        pattern = batch["pattern"][present].long()
        classifier = F.cross_entropy(id_logits, identity) + F.cross_entropy(pattern_logits, pattern)
        return {
            "loss": diffusion + self.classifier_weight * classifier,
            "diffusion": diffusion,
            "classifier": classifier,
            "id_acc": (id_logits.argmax(-1) == identity).float().mean(),
            "pattern_acc": (pattern_logits.argmax(-1) == pattern).float().mean(),
            **extra,
        }

    # ------------------------------------------------------------------- reference training
    def _installed_state(self) -> IRState | None:
        """The `IRState` the UNet's attention processors are bound to now (None: not IR processors)."""
        return getattr(next(iter(self.model.unet.attn_processors.values())), "state", None)

    def _train_state(self) -> IRState:
        """The IR state of the training processors (installed once; again if something replaced them)."""
        if self._ir_state is None or self._installed_state() is not self._ir_state:
            self._ir_state = install(self.model.unet, backend=self.attention_backend)
        return self._ir_state

    def _reference_selection(self, batch: dict[str, Tensor]) -> Tensor | None:
        """Bool `(B,)`: scenes trained with their references this step (None: reference training off)."""
        if self.reference_training <= 0:
            return None
        if "ref_image" not in batch:
            raise ValueError(
                "module.reference_training > 0 needs reference images: set app.data.references=true"
            )
        multi = batch["num_subjects"] >= 2
        chosen = multi & (torch.rand(multi.shape, device=multi.device) < self.reference_training)
        return chosen if chosen.any() else None

    def _group_errors(
        self,
        batch: dict[str, Tensor],
        chosen: Tensor,
        tokens: Tensor,
        drop: Tensor,
        noise: Tensor,
        t: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-image ε-MSE of the chosen scenes denoised as `[ref_1..ref_S, scene]` groups."""
        state = self._train_state()
        size = batch["image"].shape[-1]
        errors = []
        counts = batch["num_subjects"]
        for s in sorted({int(c) for c in counts[chosen]}):
            idx = torch.nonzero(chosen & (counts == s)).flatten()
            refs = batch["ref_image"][idx, :s]  # (P, S, 3, H, W)
            ref_tokens = torch.stack(subject_prompts(batch, idx.tolist(), self.model.max_length))
            null = torch.zeros_like(ref_tokens)
            null[..., 0] = 1
            ref_tokens = torch.where(drop[idx][:, None, None], null, ref_tokens.to(tokens.device))
            ref_noise = torch.randn(refs.shape, generator=generator).to(refs)
            images = torch.cat([refs, batch["image"][idx, None]], dim=1).flatten(0, 1)
            group_noise = torch.cat([ref_noise, noise[idx, None]], dim=1).flatten(0, 1)
            ref_t = t[idx, None].expand(-1, s)
            if self.reference_timesteps == "lower":
                u = torch.rand(ref_t.shape, generator=generator).to(refs.device)
                ref_t = (u * (ref_t + 1).float()).long().clamp_max(ref_t)
            group_t = torch.cat([ref_t, t[idx, None]], dim=1).flatten()
            group_tokens = torch.cat([ref_tokens, tokens[idx, None]], dim=1).flatten(0, 1)
            scale = torch.tensor([size, size, size, size], dtype=torch.float32, device=refs.device)
            state.configure(
                IRSettings.variant(self.reference_variant),
                ref_masks=(batch["ref_labels"][idx, :s] == 1).float(),
                ref_boxes=batch["ref_boxes"][idx, :s].float() / scale,
                target_labels=batch["labels"][idx],
                target_boxes=batch["boxes"][idx, :s].float() / scale,
            )
            try:
                noisy = self.noise_scheduler.add_noise(images, group_noise, group_t)
                eps = self.model(noisy, group_t, group_tokens)
            finally:
                state.deactivate()
            errors.append((eps - group_noise).square().flatten(1).mean(1))
        return torch.cat(errors)

    def _reference_gain(
        self, batch: dict[str, Tensor], noise: Tensor, t: Tensor, generator: torch.Generator | None
    ) -> dict[str, Tensor]:
        """ε-MSE of the multi-subject scenes alone and denoised with their references (same noise)."""
        multi = batch["num_subjects"] >= 2
        if not multi.any():
            return {}
        plain = self.model(
            self.noise_scheduler.add_noise(batch["image"][multi], noise[multi], t[multi]),
            t[multi],
            batch["tokens"][multi],
        )
        plain_error = (plain - noise[multi]).square().flatten(1).mean(1).mean()
        drop = torch.zeros_like(multi)
        errors = self._group_errors(batch, multi, batch["tokens"], drop, noise, t, generator)
        # the scene is the last member of each group: pick the scenes' errors
        counts = batch["num_subjects"][multi]
        targets = []
        offset = 0
        for s in sorted({int(c) for c in counts}):
            n = int((counts == s).sum())
            targets.append(errors[offset : offset + n * (s + 1)].view(n, s + 1)[:, -1])
            offset += n * (s + 1)
        return {"loss_multi_plain": plain_error, "loss_multi_refs": torch.cat(targets).mean()}

    def optimizer_params(self) -> Any:
        if self.train_parts == "classifier":
            return [p for p in self.model.classifier.parameters() if p.requires_grad]
        return super().optimizer_params()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses = self._losses(batch)
        b = batch["image"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=b)
        self.log("train/diffusion", losses["diffusion"], batch_size=b)
        self.log("train/classifier", losses["classifier"], batch_size=b)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(self.seed + batch_idx)
        losses = self._losses(batch, generator)
        b = batch["image"].shape[0]
        self.log("val/loss", losses["diffusion"], prog_bar=True, batch_size=b)
        self.log("val/id_acc", losses["id_acc"], batch_size=b)
        self.log("val/pattern_acc", losses["pattern_acc"], batch_size=b)
        for name in ("loss_multi_plain", "loss_multi_refs"):
            if name in losses:
                self.log(f"val/{name}", losses[name], batch_size=b)
        # the judge on loose crops: ground-truth boxes enlarged 1.5 times per axis
        present = batch["identity"] >= 0
        loose = _scaled(batch["boxes"].float(), 1.5)
        crops = self.model.classifier.crop(batch["image"], loose)[present.flatten()]
        id_logits = self.model.classifier(crops)[0]
        loose_acc = (id_logits.argmax(-1) == batch["identity"][present].long()).float().mean()
        self.log("val/id_acc_loose", loose_acc, batch_size=b)

    # --------------------------------------------------------------------------- evaluation
    def pipeline(self) -> IRDiffusionPipeline:
        if self._pipeline is not None and self._installed_state() is not self._pipeline.state:
            self._pipeline = None  # reference training replaced the processors since
        if self._pipeline is None:
            self._pipeline = IRDiffusionPipeline(
                TinyBackend(self.model),
                steps=self.sample_steps,
                guidance_scale=self.guidance_scale,
                mask_threshold=self.mask_threshold,
                cross_blend=self.cross_blend,
                layers=self.ir_layers,
                attention_backend=self.attention_backend,
                segmenter=foreground_segmenter if self.segmenter == "foreground" else None,
                reference_noise=self.reference_noise,
                ir_start=self.ir_start,
            )
        return self._pipeline

    def external_scorers(self) -> dict[str, Any]:
        """The CLIP / DINO scorers of `clip_path` / `dino_path` (loaded once; errors name the key)."""
        if self._scorers is None:
            from apps.irdiffusion.external import ClipScorer, DinoScorer

            self._scorers = {
                "clip": ClipScorer(self.clip_path) if self.clip_path else None,
                "dino": DinoScorer(self.dino_path) if self.dino_path else None,
            }
        return self._scorers

    def _captions(self, tokens: Tensor) -> list[str]:
        vocab = getattr(getattr(self.trainer, "datamodule", None), "vocab", None)
        if vocab is None:
            raise RuntimeError(
                "CLIP-T needs the captions' words: run the test loop with the app's datamodule"
            )
        return [vocab.decode(row) for row in tokens.cpu()]

    def on_test_epoch_start(self) -> None:
        if self.clip_path or self.dino_path:
            self.external_scorers()  # fail before generating anything if a folder is wrong
        self._test_values = {v: defaultdict(list) for v in self.variants}
        self._test_seconds = defaultdict(float)
        self._grid = defaultdict(list)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        counts = batch["num_subjects"]
        s = int(counts.min())
        if int(counts.max()) != s:
            raise ValueError("a test batch mixes scenes with different subject counts")
        indices = list(range(counts.numel()))
        pipe = self.pipeline()
        ref_prompts = torch.cat(subject_prompts(batch, indices, self.model.max_length))
        ref_positions = torch.tensor([[1, 2]]).expand(ref_prompts.shape[0], 2)
        target_positions = batch["subject_tokens"][:, :s]
        seeds = [self.seed * 100_000 + int(i) for i in batch["index"]]
        generation = pipe.run(
            batch["tokens"], ref_prompts, target_positions, ref_positions, seeds, self.variants
        )
        for variant, images in generation.images.items():
            # judged on the pipeline's boxes, and (suffix `_fg`) on those boxes shrunk to the foreground
            for suffix, tighten in (("", False), (FOREGROUND_SUFFIX, True)):
                scores = subject_metrics(
                    self.model.classifier,
                    generation.references,
                    generation.ref_boxes,
                    images,
                    generation.target_boxes,
                    batch["identity"][:, :s],
                    tighten=tighten,
                )
                for name, values in scores.items():
                    self._test_values[variant][name + suffix].extend(values.tolist())
            if self.clip_path or self.dino_path:
                from apps.irdiffusion.external import external_metrics

                scorers = self.external_scorers()
                scores = external_metrics(
                    generation.references,
                    generation.ref_boxes,
                    images,
                    generation.target_boxes,
                    self._captions(batch["tokens"]),
                    clip=scorers["clip"],
                    dino=scorers["dino"],
                )
                for name, values in scores.items():
                    self._test_values[variant][name].extend(values.tolist())
        for name, seconds in generation.seconds.items():
            self._test_seconds[name] += seconds
        if batch_idx == 0:
            self._test_seconds["plain_groups_batch0"] = pipe.time_plain_groups(
                ref_prompts, batch["tokens"], len(indices), s
            )
            for name in ("references", *self.variants):
                self._test_seconds[f"{name}_batch0"] = generation.seconds[name]
        self._test_seconds["scenes"] += len(indices)
        taken = sum(t.shape[0] for t in self._grid.get("vanilla", []))
        keep = max(0, self.grid_scenes - taken)
        if keep:
            self._grid["references"].append(generation.references[:keep])
            for variant, images in generation.images.items():
                self._grid[variant].append(images[:keep])

    def on_test_epoch_end(self) -> None:
        values = {v: dict(m) for v, m in self._test_values.items() if m}
        table = summarise(values)
        paired = paired_differences(values)
        # the same comparisons on the scenes where every subject is drawn in both images: a variant
        # that leaves a subject out has nothing to leak from it, which would pass for less leakage
        paired_drawn = paired_differences(values, where="subjects_drawn")
        for variant, metrics in table.items():
            for name, (mean, _std) in metrics.items():
                self.log(f"test/{variant}/{name}", mean)
        out_dir = self._output_dir()
        seconds = dict(self._test_seconds)
        scenes = max(seconds.get("scenes", 1.0), 1.0)
        timing = {
            f"{k}_per_scene_s": v / scenes for k, v in seconds.items() if k != "scenes" and "batch0" not in k
        }
        if "plain_groups_batch0" in seconds and "both_batch0" in seconds:
            timing["processor_overhead_both_vs_plain_groups"] = (
                seconds["both_batch0"] / seconds["plain_groups_batch0"]
            )
            timing["final_pass_vs_vanilla_scene"] = seconds["both_batch0"] / max(
                seconds.get("vanilla_batch0", 0), 1e-9
            )
        report = {
            "scenes": int(scenes),
            "variants": list(table),
            "table": {
                v: {n: {"mean": m, "std": sd} for n, (m, sd) in metrics.items()}
                for v, metrics in table.items()
            },
            "paired": paired,
            "paired_all_subjects_drawn": paired_drawn,
            "timing": timing,
            "sample_steps": self.sample_steps,
            "guidance_scale": self.guidance_scale,
            "reference_noise": self.reference_noise,
            "ir_start": self.ir_start,
            "per_scene": values,
        }
        if out_dir is not None:
            write_json(out_dir / "irdiffusion_table.json", report)
            names = (*METRICS, "reference_alignment", "subjects_drawn")
            external = tuple(n for n in EXTERNAL_METRICS if any(n in m for m in table.values()))
            (out_dir / "irdiffusion_table.md").write_text(
                "Crops by the pipeline's boxes:\n\n"
                + markdown_table(table, names)
                + "\nCrops by the pipeline's boxes shrunk to the foreground inside them (`_fg`):\n\n"
                + markdown_table(table, tuple(n + FOREGROUND_SUFFIX for n in names))
                + (
                    "\nPaired differences over the same scenes (mean ± standard error; in brackets the "
                    "scenes where the first variant is better / worse, for leakage: lower):\n\n"
                    + paired_markdown(paired, PAIRED_COLUMNS)
                    + "\nThe same on the scenes where every subject is drawn in both images (`subjects_drawn`; "
                    "n scenes per pair in the JSON's `paired_all_subjects_drawn`):\n\n"
                    + paired_markdown(paired_drawn, PAIRED_COLUMNS)
                    if paired
                    else ""
                )
                + (
                    "\nPretrained-encoder scores (CLIP / DINO, pipeline boxes):\n\n"
                    + markdown_table(table, external)
                    if external
                    else ""
                )
                + "\n"
                + "\n".join(f"- {k}: {v:.4f}" for k, v in timing.items())
                + "\n"
            )
            if self._grid:
                columns = {name: torch.cat(parts) for name, parts in self._grid.items()}
                save_comparison_grid(columns, out_dir / "plots" / "irdiffusion_grid.png")
        fg_names = tuple(n + FOREGROUND_SUFFIX for n in METRICS)
        log.info(
            "IR-Diffusion evaluation over %d scenes:\n%s\n%s\n%s",
            int(scenes),
            markdown_table(table),
            markdown_table(table, fg_names),
            paired_markdown(paired, PAIRED_COLUMNS) if paired else "",
        )

    def _output_dir(self) -> Path | None:
        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            return None
        root = trainer.default_root_dir
        return Path(root) if root else None
