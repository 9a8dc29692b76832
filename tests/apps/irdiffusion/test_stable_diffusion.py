"""IR-Diffusion on diffusers Stable Diffusion and SDXL pipelines (tiny random folders written here):
loading, parity of the vanilla pass with diffusers' own pipeline, every variant, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from apps.irdiffusion.pipeline import IRDiffusionPipeline, load_diffusers_backend
from apps.irdiffusion.processors import IRAttnProcessor
from apps.irdiffusion.sd import load_scenes, parse_scenes, subject_positions
from tests.apps.irdiffusion.tiny_encoders import (
    write_tiny_clip,
    write_tiny_dino,
    write_tiny_stable_diffusion,
)
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stable_diffusion")
    return {
        "sd": write_tiny_stable_diffusion(root / "sd"),
        "sdxl": write_tiny_stable_diffusion(root / "sdxl", xl=True),
        "root": root,
    }


def _positions(backend, prompt: str, words: list[str], width: int = 8) -> torch.Tensor:
    rows = [backend.token_positions(prompt, word) for word in words]
    return torch.tensor([row + [-1] * (width - len(row)) for row in rows])


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_vanilla_pass_equals_the_diffusers_pipeline(folders, kind):
    """With the IR processors installed, the pipeline's vanilla scene is exactly what diffusers'
    own pipeline makes from the same initial noise (DDIM, classifier-free guidance; for SDXL the
    zeroed unconditional input and the size conditioning)."""
    backend = load_diffusers_backend(folders[kind])
    assert backend.xl == (kind == "sdxl") and backend.latent_shape == (4, 8, 8)
    pipe = IRDiffusionPipeline(backend, steps=3, guidance_scale=5.0, layers="all")
    processors = backend.unet.attn_processors
    assert processors and all(isinstance(p, IRAttnProcessor) and p.enabled for p in processors.values())
    prompt, words = "a cat and a dog", ["cat", "dog"]
    generation = pipe.run(
        [prompt],
        ["a cat", "a small dog"],
        target_positions=_positions(backend, prompt, words)[None],
        ref_positions=torch.cat(
            [_positions(backend, "a cat", ["cat"]), _positions(backend, "a small dog", ["dog"])]
        ),
        seeds=[7],
    )
    noise = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(7))[None]
    expected = backend.pipe(
        prompt, latents=noise, num_inference_steps=3, guidance_scale=5.0, output_type="pt"
    ).images
    torch.testing.assert_close(generation.images["vanilla"], expected, atol=1e-5, rtol=0)
    assert set(generation.images) == {"vanilla", "mutual", "isolation", "reposition", "both"}
    assert generation.references.shape == (1, 2, 3, 16, 16)
    for variant, images in generation.images.items():
        assert images.shape == (1, 3, 16, 16) and images.min() >= 0 and images.max() <= 1, variant
    # the final passes read the references: they are not the vanilla scene
    assert not torch.allclose(generation.images["both"], generation.images["vanilla"])
    boxes = torch.cat([generation.ref_boxes, generation.target_boxes])
    assert ((boxes >= 0) & (boxes <= 1)).all() and (boxes[..., 2:] > boxes[..., :2]).all()


def test_layers_select_processors_and_bfloat16_runs(folders):
    backend = load_diffusers_backend(folders["sdxl"], dtype=torch.bfloat16)
    assert backend.dtype == torch.bfloat16
    pipe = IRDiffusionPipeline(backend, steps=2, layers=["up_blocks"])
    enabled = {name: p.enabled for name, p in backend.unet.attn_processors.items()}
    assert any(enabled.values()) and not all(enabled.values())
    assert all(flag == name.startswith("up_blocks") for name, flag in enabled.items())
    generation = pipe.run(
        ["a cat and a dog"],
        ["a cat", "a dog"],
        target_positions=_positions(backend, "a cat and a dog", ["cat", "dog"])[None],
        ref_positions=torch.cat(
            [_positions(backend, "a cat", ["cat"]), _positions(backend, "a dog", ["dog"])]
        ),
        seeds=[0],
        variants=["vanilla", "both"],
    )
    assert generation.images["both"].dtype == torch.float32
    assert torch.isfinite(generation.images["both"]).all()


def test_token_positions_and_truncation(folders):
    backend = load_diffusers_backend(folders["sd"])
    # character tokens: "a" (1 token) then "cat" (3 tokens) after the start token
    assert backend.token_positions("a cat", "cat") == [2, 3, 4]
    with pytest.raises(ValueError, match="does not occur"):
        backend.token_positions("a cat", "dog")
    long_prompt = "a very long prompt about many things and then a dog"
    with pytest.raises(ValueError, match="beyond the text encoder's 32 tokens"):
        backend.token_positions(long_prompt, "dog")


def test_scenes_are_checked_with_file_and_entry(tmp_path, folders):
    scenes = parse_scenes(
        [{"prompt": "a cat and a dog", "subjects": ["cat", {"word": "dog", "reference": "a small dog"}]}],
        "inline",
    )
    assert [s.reference for s in scenes[0].subjects] == ["a photo of a cat", "a small dog"]
    bad = tmp_path / "scenes.yaml"
    bad.write_text("- prompt: a cat\n  subjects: [cat]\n- prompt: a dog\n  subject: [dog]\n")
    with pytest.raises(ValueError, match=r"scenes.yaml: scene 1: unknown keys \['subject'\]"):
        load_scenes(bad)
    bad.write_text("- prompt: a cat\n  subjects: [cat\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_scenes(bad)
    with pytest.raises(FileNotFoundError, match="scenes_file"):
        load_scenes(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="non-empty list"):
        parse_scenes([{"prompt": "a cat", "subjects": []}], "inline")
    backend = load_diffusers_backend(folders["sd"])
    wrong = parse_scenes([{"prompt": "a cat and a dog", "subjects": ["cow"]}], "inline")
    with pytest.raises(ValueError, match="inline: scene 0: subject word 'cow' does not occur"):
        subject_positions(backend, wrong[0], "inline: scene 0")


def test_cli_generates_grids_images_scores_and_timings(folders):
    root = folders["root"]
    scenes = root / "scenes.yaml"
    scenes.write_text(
        "- prompt: a cat and a dog\n"
        "  subjects: [cat, {word: dog, reference: a small dog}]\n"
        "- prompt: a box, a cup and a hat\n"
        "  subjects: [box, cup, hat]\n"
    )
    out = root / "run"
    proc = run_cli(
        "apps.irdiffusion.sd",
        f"sd_path={folders['sdxl']}",
        f"scenes_file={scenes}",
        "seeds=[0,1]",
        "seeds_per_batch=2",
        "steps=2",
        "ir_layers=all",
        f"clip_path={write_tiny_clip(root / 'clip')}",
        f"dino_path={write_tiny_dino(root / 'dino')}",
        f"hydra.run.dir={out}",
    )
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["generations"] == 4 and summary["processor_overhead_both_vs_plain_groups"] > 0
    report = json.loads((out / "irdiffusion_sd.json").read_text())
    assert [r["scene"] for r in report["per_generation"]] == [0, 0, 1, 1]
    assert [len(r["target_boxes"]) for r in report["per_generation"]] == [2, 2, 3, 3]
    assert set(report["table"]) == {"vanilla", "mutual", "isolation", "reposition", "both"}
    assert set(report["table"]["both"]) == {"clip_i", "clip_t", "dino", "dino_leakage"}
    assert all(len(v) == 4 for v in report["per_scene_scores"]["both"].values())
    assert report["paired"]["both - vanilla"]["dino"]["n"] == 4
    assert (out / "grids" / "scene000.png").is_file() and (out / "grids" / "scene001.png").is_file()
    images = sorted(p.name for p in (out / "images").iterdir())
    assert len(images) == 2 * (2 + 5) + 2 * (3 + 5)
    assert "scene001_seed1_ref2.png" in images and "scene000_seed0_both.png" in images
    assert "Paired differences" in (out / "irdiffusion_sd.md").read_text()


def test_cli_errors_name_the_key(folders, tmp_path):
    proc = run_cli("apps.irdiffusion.sd", f"hydra.run.dir={tmp_path / 'a'}", check=False)
    assert proc.returncode != 0 and "sd_path" in proc.stderr
    proc = run_cli(
        "apps.irdiffusion.sd",
        f"sd_path={folders['sd']}",
        "ir_layers=[no_such_block]",
        f"hydra.run.dir={tmp_path / 'c'}",
        check=False,
    )
    assert proc.returncode != 0 and "ir_layers" in proc.stderr
