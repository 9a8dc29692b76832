"""IR-Diffusion through the real command line: smoke train (with the IR evaluation), eval, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY = [
    "app.data.generator.n_train=32",
    "app.data.generator.n_val=8",
    "app.data.generator.n_test=24",
    "app.data.generator.image_size=16",
    "app.data.generator.max_subjects=2",
    "app.data.generator.subject_probs=[0.3,0.7]",
    "app.data.generator.min_size=5",
    "app.data.generator.max_size=7",
    "app.data.batch_size=8",
    "app.data.eval_batch_size=2",
    "app.data.test_scenes=2",
    "app.model.image_size=16",
    "app.model.block_out_channels=[16,32]",
    "app.model.down_block_types=[CrossAttnDownBlock2D,CrossAttnDownBlock2D]",
    "app.model.up_block_types=[CrossAttnUpBlock2D,CrossAttnUpBlock2D]",
    "app.model.attention_heads=2",
    "app.model.text_dim=32",
    "app.model.text_layers=1",
    "app.model.classifier_width=8",
    "app.model.crop_size=8",
    "app.module.sample_steps=2",
    "app.module.grid_scenes=2",
]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, list[str]]:
    from tests.apps.irdiffusion.tiny_encoders import write_tiny_clip, write_tiny_dino
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("irdiffusion_smoke")
    common = [f"paths.data_dir={out / 'data'}", *TINY]
    scorers = [
        f"app.module.clip_path={write_tiny_clip(out / 'clip')}",
        f"app.module.dino_path={write_tiny_dino(out / 'dino')}",
    ]
    run_cli(
        "apps.train", "app=irdiffusion", "trainer=smoke", f"hydra.run.dir={out / 'run'}", *common, *scorers
    )
    return out / "run", common


def test_smoke_train_runs_the_ir_evaluation(smoke_run):
    run, _ = smoke_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["monitor"] == "val/loss" and metrics["fit"]["val/loss"] > 0
    for variant in ("vanilla", "mutual", "isolation", "reposition", "both"):
        for name in ("pattern_consistency", "caption_alignment", "leakage", "caption_alignment_fg"):
            assert f"test/{variant}/{name}" in metrics["test"]
    table = json.loads((run / "irdiffusion_table.json").read_text())
    assert table["scenes"] == 2 and "processor_overhead_both_vs_plain_groups" in table["timing"]
    # per-scene values and the paired comparisons of the target (both vs vanilla and vs each part)
    assert len(table["per_scene"]["both"]["pattern_consistency"]) == 2 and table["reference_noise"] == 1.0
    for pair in ("both - vanilla", "both - isolation", "both - reposition"):
        assert table["paired"][pair]["leakage"]["n"] == 2
    # the optional CLIP / DINO scores (tiny random local models)
    for name in ("clip_i", "clip_t", "dino", "dino_leakage"):
        assert f"test/both/{name}" in metrics["test"]
    markdown = (run / "irdiffusion_table.md").read_text()
    assert markdown.count("| variant |") == 3 and "reference_alignment_fg" in markdown
    assert "| both - vanilla | " in markdown and "| difference |" in markdown
    assert "| clip_i | clip_t | dino | dino_leakage |" in markdown
    assert (run / "plots" / "irdiffusion_grid.png").is_file()


@pytest.mark.slow
def test_eval_and_export_entries(smoke_run, cli):
    run, common = smoke_run
    ckpt = run / "checkpoints" / "last.ckpt"
    out = run / "exported"
    cli(
        "apps.export",
        "app=irdiffusion",
        f"ckpt_path={ckpt}",
        f"export.out_dir={out}",
        "export.batch_size=4",
        *common,
    )
    report = json.loads((out / "export_report.json").read_text())
    assert report["ok"] and {g["format"] for g in report["graphs"]} == {"onnx", "torchscript"}
    result = cli("apps.eval", "app=irdiffusion", f"ckpt_path={ckpt}", f"paths.output_root={run}", *common)
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert "test/both/pattern_consistency" in printed


def test_classifier_only_judge_training(smoke_run, tmp_path):
    from tests.conftest import run_cli

    run, common = smoke_run
    ckpt = run / "checkpoints" / "last.ckpt"
    out = tmp_path / "judge"
    run_cli(
        "apps.train",
        "experiment=irdiffusion_judge",
        f"app.module.init_weights={ckpt}",
        "trainer=smoke",
        "test=false",
        f"hydra.run.dir={out}",
        *common,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert "val/id_acc_loose" in metrics["fit"]


def test_reference_training_from_a_checkpoint_with_the_extended_variant(smoke_run, tmp_path):
    from tests.conftest import run_cli

    run, common = smoke_run
    out = tmp_path / "reftrain"
    run_cli(
        "apps.train",
        "experiment=irdiffusion_reference_training",
        f"app.module.init_weights={run / 'checkpoints' / 'last.ckpt'}",
        "app.module.variants=[vanilla,extended,both]",
        "trainer=smoke",
        f"hydra.run.dir={out}",
        *common,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fit"]["val/loss_multi_refs"] > 0 and metrics["fit"]["val/loss_multi_plain"] > 0
    assert "test/extended/pattern_consistency" in metrics["test"]
    assert "test/mutual/pattern_consistency" not in metrics["test"]
