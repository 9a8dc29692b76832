"""CLIP / DINO subject-consistency scores from local model folders (tiny random models here)."""

from __future__ import annotations

import json

import pytest
import torch

from apps.irdiffusion.external import ClipScorer, DinoScorer, crop_and_resize, external_metrics
from tests.apps.irdiffusion.tiny_encoders import write_tiny_clip, write_tiny_dino


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return write_tiny_clip(root / "clip"), write_tiny_dino(root / "dino")


def test_crop_and_resize():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 16, 16)
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(2, 4)
    torch.testing.assert_close(crop_and_resize(images, whole, 16), images, atol=1e-5, rtol=0)
    # the right half of an image whose right half is one colour: that colour everywhere, at any size
    images[:, :, :, 8:] = torch.tensor([0.2, 0.5, 0.9])[:, None, None]
    half = torch.tensor([[0.5, 0.0, 1.0, 1.0]]).expand(2, 4)
    crops = crop_and_resize(images, half, 24)
    assert crops.shape == (2, 3, 24, 24)
    torch.testing.assert_close(
        crops[..., 4:-4, 4:-4], images[..., :1, -1:].expand(2, 3, 16, 16), atol=1e-5, rtol=0
    )


def test_scores_identical_and_different_subjects(encoders):
    clip_path, dino_path = encoders
    clip, dino = ClipScorer(str(clip_path)), DinoScorer(str(dino_path))
    torch.manual_seed(0)
    p, s = 3, 2
    targets = torch.rand(p, 3, 16, 16)
    # both references are the target image, and subject i sits in box i of each: identical crops
    # (neighbourhoods included), so CLIP-I = DINO = 1; leakage compares different regions
    references = targets[:, None].expand(p, s, 3, 16, 16).clone()
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]).expand(p, s, 4)
    captions = ["a red square and a blue ring", "a green circle and a cyan cross", "a yellow diamond"]
    scores = external_metrics(references, boxes, targets, boxes, captions, clip=clip, dino=dino)
    assert set(scores) == {"clip_i", "clip_t", "dino", "dino_leakage"}
    assert all(v.shape == (p,) for v in scores.values())
    torch.testing.assert_close(scores["clip_i"], torch.ones(p), atol=1e-5, rtol=0)
    torch.testing.assert_close(scores["dino"], torch.ones(p), atol=1e-5, rtol=0)
    assert (scores["dino_leakage"] < 1 - 1e-4).all() and (scores["clip_t"].abs() <= 1 + 1e-6).all()
    # other captions give other text scores; other targets lower image consistency
    other = external_metrics(references, boxes, targets, boxes, captions[::-1], clip=clip)
    assert set(other) == {"clip_i", "clip_t"} and not torch.allclose(other["clip_t"], scores["clip_t"])
    noise = external_metrics(references, boxes, torch.rand(p, 3, 16, 16), boxes, captions, dino=dino)
    assert (noise["dino"] < scores["dino"]).all()
    with pytest.raises(ValueError, match="captions"):
        external_metrics(references, boxes, targets, boxes, captions[:2], clip=clip)


def test_missing_or_wrong_folders_fail_with_the_key(encoders, tmp_path):
    clip_path, dino_path = encoders
    with pytest.raises(FileNotFoundError, match="app.module.clip_path.*never downloaded"):
        ClipScorer(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="app.module.clip_path.*'vit'"):
        ClipScorer(str(dino_path))
    with pytest.raises(ValueError, match="app.module.dino_path.*'clip'"):
        DinoScorer(str(clip_path))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="app.module.dino_path.*not valid JSON"):
        DinoScorer(str(broken))
    no_processor = tmp_path / "no_processor"
    no_processor.mkdir()
    (no_processor / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        DinoScorer(str(no_processor))
