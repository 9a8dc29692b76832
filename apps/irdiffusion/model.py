"""The small base model of the IR-Diffusion app: pixel-space text-to-image diffusion that runs on a CPU.

- `TextEncoder`: word embeddings + positions + pre-norm transformer blocks on our attention core;
  `(B, L)` ids -> `(B, L, D)` context for the UNet's cross-attention.
- `UNet2DConditionModel` (diffusers), tiny: attention at 16 x 16 and 8 x 8 (and the 8 x 8 mid block).
- `SubjectClassifier`: a small CNN over subject crops with two heads (identity = named colour+shape,
  pattern = the unnamed attribute) and a feature vector; the evaluation's judge of consistency.

The diffusion is epsilon-prediction with a cosine DDPM schedule; sampling uses DDIM.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn
from torchvision.ops import roi_align

from apps.common.export import ExportGraph
from shared_attention.layers.multihead import MultiHeadAttention


class TextBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """Caption ids `(B, L)` -> context `(B, L, dim)`."""

    def __init__(
        self, vocab_size: int, max_length: int, dim: int = 64, layers: int = 2, heads: int = 4
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.randn(1, max_length, dim) * 0.02)
        self.blocks = nn.ModuleList([TextBlock(dim, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens) + self.position[:, : tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class SubjectClassifier(nn.Module):
    """Crops `(B, 3, c, c)` in [-1, 1] -> identity logits, pattern logits, unit features `(B, F)`."""

    def __init__(self, num_identities: int, num_patterns: int, width: int = 32, crop_size: int = 16) -> None:
        super().__init__()
        self.crop_size = crop_size
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * width, 4 * width),
            nn.GELU(),
        )
        self.identity_head = nn.Linear(4 * width, num_identities)
        self.pattern_head = nn.Linear(4 * width, num_patterns)

    def crop(self, images: Tensor, boxes: Tensor) -> Tensor:
        """Crops of `images (B, 3, H, W)` by pixel `boxes (B, K, 4)` -> `(B * K, 3, c, c)`."""
        b, k = boxes.shape[:2]
        rois = torch.cat(
            [
                torch.arange(b, device=boxes.device).repeat_interleave(k)[:, None].float(),
                boxes.reshape(-1, 4).float(),
            ],
            dim=1,
        )
        return roi_align(
            images, rois, output_size=self.crop_size, spatial_scale=1.0, sampling_ratio=2, aligned=True
        )

    def forward(self, crops: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features = self.features(crops)
        return self.identity_head(features), self.pattern_head(features), F.normalize(features, dim=-1)


class IRDiffusionModel(nn.Module):
    """Text encoder + tiny conditional UNet + subject classifier (see the module docstring)."""

    def __init__(
        self,
        vocab_size: int,
        max_length: int,
        num_identities: int,
        num_patterns: int,
        image_size: int = 32,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block: int = 1,
        attention_heads: int = 4,
        norm_num_groups: int = 8,
        text_dim: int = 64,
        text_layers: int = 2,
        text_heads: int = 4,
        classifier_width: int = 32,
        crop_size: int = 16,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        generator: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.max_length = max_length
        self.generator_config = generator or {}
        self.text_encoder = TextEncoder(vocab_size, max_length, text_dim, text_layers, text_heads)
        self.unet = UNet2DConditionModel(
            sample_size=image_size,
            in_channels=3,
            out_channels=3,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            cross_attention_dim=text_dim,
            attention_head_dim=attention_heads,  # diffusers reads this as the number of heads
            norm_num_groups=norm_num_groups,
        )
        self.classifier = SubjectClassifier(num_identities, num_patterns, classifier_width, crop_size)
        self.schedule = {"num_train_timesteps": num_train_timesteps, "beta_schedule": beta_schedule}

    def train_scheduler(self) -> DDPMScheduler:
        return DDPMScheduler(**self.schedule, clip_sample=True)

    def sample_scheduler(self) -> DDIMScheduler:
        return DDIMScheduler(**self.schedule, clip_sample=True, set_alpha_to_one=True)

    def forward(self, sample: Tensor, timestep: Tensor, tokens: Tensor) -> Tensor:
        """Predicted noise `(B, 3, S, S)` of `sample (B, 3, S, S)` at `timestep ()` or `(B,)` given `tokens (B, L)`."""
        context = self.text_encoder(tokens)
        return self.unet(sample, timestep, context, return_dict=False)[0]

    def export_graphs(self, batch: dict[str, Tensor]) -> list[ExportGraph]:
        """The UNet step with IR processors active for the first scene of `batch` with >= 2 subjects."""
        multi = torch.nonzero(batch["num_subjects"] >= 2).flatten()
        index = int(multi[0]) if multi.numel() else 0
        step = IRUNetStep(self, batch, index)
        g = step.state.group_size
        generator = torch.Generator().manual_seed(0)
        sample = torch.randn(g, 3, self.image_size, self.image_size, generator=generator)
        timestep = torch.tensor(500, dtype=torch.long)
        tokens = step.tokens
        other = (torch.randn(sample.shape, generator=generator), torch.tensor(100, dtype=torch.long), tokens)
        return [
            ExportGraph(
                name="unet_ir",
                module=step,
                inputs=(sample, timestep, tokens),
                input_names=["sample", "timestep", "tokens"],
                output_names=["noise"],
                dynamic_dims=[{}, {}, {}],
                check_inputs=[other],
            )
        ]


class IRUNetStep(nn.Module):
    """One UNet evaluation of a `[ref_1, ..., ref_S, target]` group with the IR processors active.

    The layout (subject count, boxes, masks) is fixed at construction, taken from a real scene's
    ground truth; inputs: `sample (S + 1, 3, H, W)`, `timestep ()`, `tokens (S + 1, L)`.
    """

    def __init__(
        self, model: IRDiffusionModel, batch: dict[str, Tensor], index: int, variant: str = "both"
    ) -> None:
        super().__init__()
        from apps.irdiffusion.pipeline import layout_from_ground_truth, subject_prompts
        from apps.irdiffusion.processors import IRSettings, install

        self.model = model
        self.state = install(model.unet, backend="math")
        layout = layout_from_ground_truth(batch, [index])
        self.state.configure(IRSettings.variant(variant, cross_blend=0.3), **layout)
        refs = subject_prompts(batch, [index], model.max_length)[0]
        self.tokens = torch.cat([refs, batch["tokens"][index : index + 1]], dim=0)

    def forward(self, sample: Tensor, timestep: Tensor, tokens: Tensor) -> Tensor:
        return self.model(sample, timestep, tokens)
