"""Subject-consistency scores from pretrained image models, when local weights are given.

The default metrics (`metrics.py`) are judged by a classifier trained on the generated dataset's
identities. On real images (a Stable Diffusion backend) the literature scores consistency with
general-purpose encoders instead (DreamBooth, Ruiz et al. 2023; IR-Diffusion follows the same
practice):

- `clip_i`: cosine similarity of CLIP image embeddings of the reference crop and the target crop of
  the same subject;
- `clip_t`: cosine similarity of the CLIP embedding of the whole target image and of its caption;
- `dino`: cosine similarity of DINO (ViT, self-supervised) class-token embeddings of the reference
  and target crops — more sensitive to appearance details than CLIP;
- `dino_leakage`: DINO similarity of subject i's target crop to the *other* subjects' reference
  crops, averaged (lower is better).

Weights are read from local folders only (`app.module.clip_path`, `app.module.dino_path`: Hugging
Face `CLIPModel` folders with their tokenizer and image-processor files, and `ViTModel` /
`Dinov2Model` folders with an image-processor file); nothing is downloaded, and a folder that is
missing or holds another kind of model fails with the key and the path.

Images are `(B, 3, H, W)` in [0, 1]; crops are cut by normalised boxes `(x0, y0, x1, y1)`, resized
with bicubic interpolation to the model's input size and normalised with the image processor's mean
and standard deviation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EXTERNAL_METRICS = ("clip_i", "clip_t", "dino", "dino_leakage")


def _model_folder(path: str, key: str, expected: tuple[str, ...]) -> tuple[Path, str]:
    """The checked folder and its config's `model_type` (one of `expected`)."""
    folder = Path(path).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"app.module.{key}: no model at {folder} (expected config.json, weights and "
            "preprocessor_config.json); weights are never downloaded"
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except json.JSONDecodeError as err:
        raise ValueError(f"app.module.{key}: {config_file} is not valid JSON ({err})") from err
    if model_type not in expected:
        raise ValueError(
            f"app.module.{key}: {folder} holds a {model_type!r} model, expected one of {expected}"
        )
    if not (folder / "preprocessor_config.json").is_file():
        raise FileNotFoundError(
            f"app.module.{key}: {folder} has no preprocessor_config.json (the image mean, std and size)"
        )
    return folder, model_type


def _image_settings(folder: Path, default_size: int) -> tuple[int, Tensor, Tensor]:
    """Input size, mean and std `(3, 1, 1)` from the folder's image-processor file."""
    config = json.loads((folder / "preprocessor_config.json").read_text())
    size: Any = config.get("crop_size") or config.get("size") or default_size
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge") or default_size
    mean = torch.tensor(config.get("image_mean", [0.5, 0.5, 0.5]), dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(config.get("image_std", [0.5, 0.5, 0.5]), dtype=torch.float32).view(3, 1, 1)
    return int(size), mean, std


def crop_and_resize(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crops `(N, 3, size, size)` of `images (N, 3, H, W)` by normalised `boxes (N, 4)`: the box is
    sampled on a `size × size` grid of pixel centres with bicubic interpolation (crop and resize in
    one step)."""
    n = images.shape[0]
    x0, y0, x1, y1 = boxes.float().unbind(-1)
    steps = (torch.arange(size, dtype=torch.float32, device=images.device) + 0.5) / size
    xs = x0[:, None] + (x1 - x0)[:, None] * steps[None]  # (N, size) in [0, 1]
    ys = y0[:, None] + (y1 - y0)[:, None] * steps[None]
    grid = torch.stack(
        [
            (xs * 2 - 1)[:, None, :].expand(n, size, size),
            (ys * 2 - 1)[:, :, None].expand(n, size, size),
        ],
        dim=-1,
    )
    return F.grid_sample(images.float(), grid, mode="bicubic", padding_mode="border", align_corners=False)


class _ImageEncoder(nn.Module):
    model: Any
    size: int
    mean: Tensor
    std: Tensor

    def prepare(self, images: Tensor, boxes: Tensor | None = None) -> Tensor:
        if boxes is None:
            boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=images.device).expand(images.shape[0], 4)
        crops = crop_and_resize(images, boxes, self.size).clamp(0, 1)
        pixels = (crops - self.mean.to(crops.device)) / self.std.to(crops.device)
        return pixels.to(self.model.device)


class ClipScorer(_ImageEncoder):
    """CLIP image and text embeddings (unit norm) from a local `CLIPModel` folder."""

    def __init__(self, path: str) -> None:
        super().__init__()
        folder, _ = _model_folder(path, "clip_path", ("clip",))
        os.environ["HF_HUB_OFFLINE"] = "1"
        from transformers import AutoTokenizer, CLIPModel

        self.model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.size, self.mean, self.std = _image_settings(folder, self.model.config.vision_config.image_size)

    @torch.no_grad()
    def images(self, images: Tensor, boxes: Tensor | None = None) -> Tensor:
        pixels = self.prepare(images, boxes)
        out = self.model.get_image_features(pixel_values=pixels)
        features = out if isinstance(out, Tensor) else out.pooler_output
        return F.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        tokens = {k: v.to(self.model.device) for k, v in tokens.items()}
        out = self.model.get_text_features(**tokens)
        features = out if isinstance(out, Tensor) else out.pooler_output
        return F.normalize(features.float(), dim=-1)


class DinoScorer(_ImageEncoder):
    """DINO / DINOv2 class-token embeddings (unit norm) from a local `ViTModel` / `Dinov2Model` folder."""

    def __init__(self, path: str) -> None:
        super().__init__()
        folder, model_type = _model_folder(path, "dino_path", ("vit", "dinov2"))
        os.environ["HF_HUB_OFFLINE"] = "1"
        from transformers import AutoModel

        # only the class token of the last layer is used: no pooler (DINO checkpoints have none)
        extra = {"add_pooling_layer": False} if model_type == "vit" else {}
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True, **extra).eval()
        self.size, self.mean, self.std = _image_settings(folder, self.model.config.image_size)

    @torch.no_grad()
    def images(self, images: Tensor, boxes: Tensor | None = None) -> Tensor:
        pixels = self.prepare(images, boxes)
        hidden = self.model(pixel_values=pixels).last_hidden_state
        return F.normalize(hidden[:, 0].float(), dim=-1)


def external_metrics(
    references: Tensor,
    ref_boxes: Tensor,
    images: Tensor,
    target_boxes: Tensor,
    captions: list[str],
    clip: ClipScorer | None = None,
    dino: DinoScorer | None = None,
) -> dict[str, Tensor]:
    """Per-scene scores `(P,)` for references `(P, S, 3, H, W)`, targets `(P, 3, H, W)` in [0, 1],
    normalised boxes `(P, S, 4)` and the targets' captions; only the scorers given are used."""
    p, s = references.shape[:2]
    scores: dict[str, Tensor] = {}
    if len(captions) != p:
        raise ValueError(f"external_metrics: {len(captions)} captions for {p} scenes")
    flat_refs = references.flatten(0, 1)
    flat_ref_boxes = ref_boxes.reshape(p * s, 4)
    targets = images[:, None].expand(p, s, *images.shape[1:]).flatten(0, 1)
    flat_target_boxes = target_boxes.reshape(p * s, 4)
    if clip is not None:
        ref = clip.images(flat_refs, flat_ref_boxes)
        tgt = clip.images(targets, flat_target_boxes)
        scores["clip_i"] = (ref * tgt).sum(-1).view(p, s).mean(1)
        scores["clip_t"] = (clip.images(images) * clip.texts(captions)).sum(-1)
    if dino is not None:
        ref = dino.images(flat_refs, flat_ref_boxes).view(p, s, -1)
        tgt = dino.images(targets, flat_target_boxes).view(p, s, -1)
        similarity = torch.einsum("pie,pje->pij", tgt, ref)  # target crop i vs reference crop j
        scores["dino"] = similarity.diagonal(dim1=1, dim2=2).mean(1)
        if s > 1:
            off = ~torch.eye(s, dtype=torch.bool, device=similarity.device)
            scores["dino_leakage"] = (similarity * off).sum((1, 2)) / (s * (s - 1))
    return scores
