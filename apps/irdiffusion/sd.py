"""IR-Diffusion on a local Stable Diffusion / SDXL folder: `python -m apps.irdiffusion.sd sd_path=... [scenes_file=...]`.

For every scene (a target prompt naming its subjects) and seed, the pipeline generates each
subject's reference, the vanilla scene and the final pass of each IR variant (`variants`), all from
the seed's noise. The run folder gets:

- `grids/scene<k>.png`: one row per seed: references, vanilla, mutual, isolation, reposition, both;
- `images/scene<k>_seed<s>_<variant>.png` (and `_ref<i>`) when `save_images`;
- `irdiffusion_sd.json`: per scene and seed the subject boxes, timings, and the CLIP / DINO scores
  when `clip_path` / `dino_path` are given, with their mean ± std per variant and the paired
  differences between variants over the same scenes and seeds; `irdiffusion_sd.md`: the tables.

Scenes file (YAML or JSON), a list of:

    - prompt: a photo of a cat and a dog on a sofa
      subjects:
        - word: cat                      # must occur in the prompt
          reference: a photo of a cat    # optional; default reference_template with the word

Nothing is downloaded: every path is a local folder, and a missing or wrong one fails with its key.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from apps.common.config import register_resolvers
from apps.common.io import write_json
from apps.irdiffusion.metrics import markdown_table, paired_differences, paired_markdown, summarise
from apps.irdiffusion.pipeline import VARIANTS, IRDiffusionPipeline, load_diffusers_backend
from apps.irdiffusion.plots import save_comparison_grid

log = logging.getLogger(__name__)
register_resolvers()

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Subject:
    word: str
    reference: str


@dataclass
class Scene:
    prompt: str
    subjects: list[Subject]


def parse_scenes(raw: Any, source: str, reference_template: str = "a photo of a {word}") -> list[Scene]:
    """Scenes from a list of `{prompt, subjects: [{word, reference?}]}`; errors name `source` and the entry."""
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{source}: expected a non-empty list of scenes, got {type(raw).__name__}")
    scenes = []
    for k, entry in enumerate(raw):
        where = f"{source}: scene {k}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping with 'prompt' and 'subjects'")
        unknown = set(entry) - {"prompt", "subjects"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)} (expected 'prompt', 'subjects')")
        prompt = entry.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: 'prompt' must be a non-empty string")
        subjects_raw = entry.get("subjects")
        if not isinstance(subjects_raw, list) or not subjects_raw:
            raise ValueError(f"{where}: 'subjects' must be a non-empty list")
        subjects = []
        for i, subject in enumerate(subjects_raw):
            if isinstance(subject, str):
                subject = {"word": subject}
            if not isinstance(subject, dict) or not isinstance(subject.get("word"), str):
                raise ValueError(f"{where}, subject {i}: expected a word or a mapping with 'word'")
            unknown = set(subject) - {"word", "reference"}
            if unknown:
                raise ValueError(f"{where}, subject {i}: unknown keys {sorted(unknown)}")
            word = subject["word"]
            reference = subject.get("reference") or reference_template.format(word=word)
            subjects.append(Subject(word, reference))
        scenes.append(Scene(prompt, subjects))
    return scenes


def load_scenes(path: str | Path, reference_template: str = "a photo of a {word}") -> list[Scene]:
    """Scenes from a YAML or JSON file (see the module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"scenes_file: no file at {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML/JSON ({err})") from err
    return parse_scenes(raw, str(path), reference_template)


def subject_positions(backend: Any, scene: Scene, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token positions `(S, T)` of the subjects in the target prompt and `(S, T)` in their references."""
    target, refs = [], []
    for subject in scene.subjects:
        for prompt, rows in ((scene.prompt, target), (subject.reference, refs)):
            try:
                rows.append(backend.token_positions(prompt, subject.word))
            except ValueError as err:
                raise ValueError(f"{source}: {err}") from None
    width = max(len(row) for row in target + refs)

    def pad(rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor([row + [-1] * (width - len(row)) for row in rows])

    return pad(target), pad(refs)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for, but CUDA is not available here")
    return device


def _scores(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    from apps.irdiffusion.external import ClipScorer, DinoScorer

    scorers: dict[str, Any] = {"clip": None, "dino": None}
    if cfg.clip_path:
        scorers["clip"] = ClipScorer(cfg.clip_path).to(device)
    if cfg.dino_path:
        scorers["dino"] = DinoScorer(cfg.dino_path).to(device)
    return scorers


def _save_png(image: torch.Tensor, path: Path) -> None:
    from torchvision.utils import save_image

    save_image(image.float().cpu(), str(path))


def run_scenes(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run every scene and seed of `cfg` (see `conf/irdiffusion_sd.yaml`); write and return the report."""
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"variants: unknown {unknown}; choose from {list(VARIANTS)}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"dtype: {cfg.dtype!r} is not one of {sorted(DTYPES)}")
    if int(cfg.seeds_per_batch) < 1 or not cfg.seeds:
        raise ValueError("seeds must be a non-empty list and seeds_per_batch at least 1")
    template = str(cfg.reference_template)
    if cfg.scenes_file:
        scenes, source = load_scenes(cfg.scenes_file, template), str(cfg.scenes_file)
    else:
        raw = OmegaConf.to_container(cfg.scenes, resolve=True) if cfg.scenes is not None else None
        scenes, source = parse_scenes(raw, "scenes", template), "scenes"
    device = resolve_device(str(cfg.device))
    scorers = _scores(cfg, device)  # before loading SD: a wrong folder fails first
    backend = load_diffusers_backend(
        cfg.sd_path, device=device, dtype=DTYPES[cfg.dtype], height=cfg.height, width=cfg.width
    )
    positions = [subject_positions(backend, scene, f"{source}: scene {k}") for k, scene in enumerate(scenes)]
    layers = cfg.ir_layers if isinstance(cfg.ir_layers, str) else list(cfg.ir_layers)
    pipe = IRDiffusionPipeline(
        backend,
        steps=int(cfg.steps),
        guidance_scale=float(cfg.guidance_scale),
        mask_threshold=float(cfg.mask_threshold),
        cross_blend=float(cfg.cross_blend),
        layers=layers,
        attention_backend=str(cfg.attention_backend),
        reference_noise=float(cfg.reference_noise),
        ir_start=float(cfg.ir_start),
    )
    if not any(p.enabled for p in backend.unet.attn_processors.values()):
        raise ValueError(f"ir_layers: {layers} match none of the UNet's attention layers")
    variants = list(cfg.variants)
    seeds = [int(s) for s in cfg.seeds]
    per_batch = int(cfg.seeds_per_batch)
    values: dict[str, dict[str, list[float]]] = {v: defaultdict(list) for v in variants}
    seconds: dict[str, float] = defaultdict(float)
    records = []
    (out_dir / "grids").mkdir(parents=True, exist_ok=True)
    if cfg.save_images:
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for k, scene in enumerate(scenes):
        target_pos, ref_pos = positions[k]
        s = len(scene.subjects)
        columns: dict[str, list[torch.Tensor]] = defaultdict(list)
        for start in range(0, len(seeds), per_batch):
            batch_seeds = seeds[start : start + per_batch]
            p = len(batch_seeds)
            generation = pipe.run(
                [scene.prompt] * p,
                [subject.reference for subject in scene.subjects] * p,
                target_positions=target_pos[None].expand(p, -1, -1),
                ref_positions=ref_pos.repeat(p, 1),
                seeds=batch_seeds,
                variants=variants,
            )
            for name, value in generation.seconds.items():
                seconds[name] += value
            seconds["scenes"] += p
            if not seconds.get("plain_groups"):
                seconds["plain_groups"] = pipe.time_plain_groups(
                    [subject.reference for subject in scene.subjects] * p, [scene.prompt] * p, p, s
                )
                seconds["both_first"] = generation.seconds.get("both", 0.0)
                seconds["vanilla_first"] = generation.seconds.get("vanilla", 0.0)
            columns["references"].append(generation.references.cpu())
            for variant in variants:
                images = generation.images[variant]
                columns[variant].append(images.cpu())
                if scorers["clip"] is not None or scorers["dino"] is not None:
                    from apps.irdiffusion.external import external_metrics

                    scores = external_metrics(
                        generation.references,
                        generation.ref_boxes,
                        images,
                        generation.target_boxes,
                        [scene.prompt] * p,
                        clip=scorers["clip"],
                        dino=scorers["dino"],
                    )
                    for name, value in scores.items():
                        values[variant][name].extend(value.tolist())
            for j, seed in enumerate(batch_seeds):
                records.append(
                    {
                        "scene": k,
                        "seed": seed,
                        "prompt": scene.prompt,
                        "subjects": [subject.word for subject in scene.subjects],
                        "references": [subject.reference for subject in scene.subjects],
                        "ref_boxes": generation.ref_boxes[j].tolist(),
                        "target_boxes": generation.target_boxes[j].tolist(),
                    }
                )
                if cfg.save_images:
                    stem = out_dir / "images" / f"scene{k:03d}_seed{seed}"
                    for i in range(s):
                        _save_png(generation.references[j, i], Path(f"{stem}_ref{i}.png"))
                    for variant in variants:
                        _save_png(generation.images[variant][j], Path(f"{stem}_{variant}.png"))
        save_comparison_grid(
            {name: torch.cat(parts) for name, parts in columns.items()},
            out_dir / "grids" / f"scene{k:03d}.png",
        )
        log.info("scene %d/%d done: %s", k + 1, len(scenes), scene.prompt)
    return _report(cfg, out_dir, values, seconds, records)


def _report(
    cfg: DictConfig,
    out_dir: Path,
    values: dict[str, dict[str, list[float]]],
    seconds: dict[str, float],
    records: list[dict[str, Any]],
) -> dict[str, Any]:
    generations = max(seconds.pop("scenes", 1.0), 1.0)
    plain, both, vanilla = (seconds.pop(k, 0.0) for k in ("plain_groups", "both_first", "vanilla_first"))
    timing = {f"{name}_per_generation_s": value / generations for name, value in seconds.items()}
    if plain and both:
        timing["processor_overhead_both_vs_plain_groups"] = both / plain
    if vanilla and both:
        timing["final_pass_vs_vanilla_scene"] = both / vanilla
    scored = {v: dict(m) for v, m in values.items() if m}
    table = summarise(scored) if scored else {}
    paired = paired_differences(scored) if scored else {}
    report = {
        "sd_path": str(cfg.sd_path),
        "generations": int(generations),
        "steps": int(cfg.steps),
        "guidance_scale": float(cfg.guidance_scale),
        "reference_noise": float(cfg.reference_noise),
        "ir_start": float(cfg.ir_start),
        "ir_layers": cfg.ir_layers if isinstance(cfg.ir_layers, str) else list(cfg.ir_layers),
        "timing": timing,
        "table": {v: {n: {"mean": m, "std": sd} for n, (m, sd) in ms.items()} for v, ms in table.items()},
        "paired": paired,
        "per_generation": records,
        "per_scene_scores": scored,
    }
    write_json(out_dir / "irdiffusion_sd.json", report)
    lines = [f"IR-Diffusion on {cfg.sd_path}: {int(generations)} generations (scenes x seeds)", ""]
    if table:
        names = tuple(sorted({n for ms in table.values() for n in ms}))
        lines += ["Scores (mean ± std over generations):", "", markdown_table(table, names)]
        if paired:
            lines += [
                "Paired differences (mean ± standard error; generations where the first is better / worse):",
                "",
                paired_markdown(paired, names),
            ]
    else:
        lines += ["No scores: pass clip_path and/or dino_path (local folders) to score the images.", ""]
    lines += [f"- {name}: {value:.4f}" for name, value in timing.items()]
    (out_dir / "irdiffusion_sd.md").write_text("\n".join(lines) + "\n")
    log.info("%s", "\n".join(lines))
    return report


@hydra.main(version_base="1.3", config_path="../../conf", config_name="irdiffusion_sd")
def main(cfg: DictConfig) -> None:
    out_dir = Path(cfg.paths.output_dir)
    report = run_scenes(cfg, out_dir)
    print(json.dumps({"out_dir": str(out_dir), "generations": report["generations"], **report["timing"]}))


if __name__ == "__main__":
    main()
