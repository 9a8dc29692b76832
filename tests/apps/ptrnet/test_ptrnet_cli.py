"""TSP and Delaunay through the real command line: train, evaluate on a released-format file, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apps.common.io import load_checkpoint
from apps.ptrnet.formats import read_examples, write_examples
from apps.ptrnet.generate import generate_examples

TRAINER = [
    "trainer=smoke",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]
SIZES = [
    "app.data.train_size=64",
    "app.data.val_size=32",
    "app.data.test_size=32",
    "app.data.batch_size=32",
    "app.data.generation_workers=1",
    "app.model.embed_dim=16",
    "app.model.encoder.embed_dim=16",
    "app.model.encoder.ff_dim=32",
    "app.model.encoder.num_heads=4",
    "app.model.encoder.num_layers=1",
    "app.model.decoder_heads=4",
    "app.module.plot_examples=2",
]
TINY = [*TRAINER, *SIZES]
TSP = [
    "app.data.task=tsp",
    "app.data.n_train=[5,8]",
    "app.data.n_val=8",
    "app.monitor=val/length",
    "app.monitor_mode=min",
]


@pytest.fixture(scope="module")
def tsp_run(tmp_path_factory) -> Path:
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("tsp")
    run_cli(
        "apps.train",
        "app=ptrnet",
        "ptrnet_decoder@app.model=attention",
        "app.module.objective=reinforce",
        "app.module.reinforce.baseline_size=32",
        "app.module.decode.strategy=beam",
        "app.module.decode.beam_width=3",
        f"paths.output_root={out}",
        f"paths.data_dir={out / 'data'}",
        f"hydra.run.dir={out / 'run'}",
        *TSP,
        *TINY,
    )
    return out


def test_tsp_reinforce_attention_decoder_trains_and_plots(tsp_run: Path):
    run = tsp_run / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["monitor"] == "val/length"
    assert metrics["test"]["test/valid"] == 1.0
    assert metrics["test"]["test/gap"] >= 0.0
    assert (run / "plots" / "val_epoch000.png").is_file() and (run / "plots" / "test.png").is_file()
    checkpoint = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert checkpoint["model_config"]["decoder"] == "attention"
    assert any(key.startswith("baseline.") for key in checkpoint["state_dict"])


def test_eval_on_released_format_file(tsp_run: Path, cli):
    released = tsp_run / "tsp_7_test.txt"
    write_examples(released, generate_examples("tsp", 7, 20, seed=9, workers=1, progress=False), "tsp")
    first = released.read_text().splitlines()[0].split()
    assert first[14] == "output" and first[15] == first[-1]  # 1-based tour closed by its first index
    proc = cli(
        "apps.eval",
        "app=ptrnet",
        f"ckpt_path={tsp_run / 'run' / 'checkpoints' / 'last.ckpt'}",
        f"app.data.test_file={released}",
        "app.module.decode.strategy=sample",
        "app.module.decode.num_samples=4",
        f"hydra.run.dir={tsp_run / 'eval'}",
        f"paths.data_dir={tsp_run / 'eval_data'}",
        *TSP,
        *TINY,
    )
    metrics = json.loads((tsp_run / "eval" / "eval_metrics.json").read_text())
    assert metrics["test/valid"] == 1.0
    assert metrics["test/optimal_length"] == pytest.approx(
        sum(_tour(ex) for ex in read_examples(released, "tsp")) / 20, rel=1e-4
    )
    assert "test metrics: {" in proc.stderr + proc.stdout
    assert not (tsp_run / "eval_data").exists()  # evaluating a file generates no training data


def _tour(example) -> float:
    from apps.ptrnet.metrics import tour_length

    return tour_length(example.points, list(example.target))


def test_delaunay_trains_with_lstm_and_sampling(tmp_path: Path, cli):
    cli(
        "apps.train",
        "app=ptrnet",
        "ptrnet_encoder@app.model.encoder=lstm",
        "app.data.task=delaunay",
        "app.data.n_train=6",
        "app.model.encoder.hidden_dim=16",
        "app.module.decode.strategy=sample",
        "app.module.decode.num_samples=3",
        f"paths.output_root={tmp_path}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *[arg for arg in TINY if "encoder.ff_dim" not in arg and "encoder.num_" not in arg],
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["monitor"] == "val/exact"
    assert 0.0 <= metrics["test"]["test/triangle_coverage"] <= 1.0
    assert (tmp_path / "run" / "plots" / "val_epoch000.png").is_file()


@pytest.mark.slow
def test_attention_decoder_exports_through_the_cli(tsp_run: Path, cli):
    out = tsp_run / "exported"
    cli(
        "apps.export",
        "app=ptrnet",
        f"ckpt_path={tsp_run / 'run' / 'checkpoints' / 'last.ckpt'}",
        "export.format=both",
        f"export.out_dir={out}",
        f"paths.data_dir={tsp_run / 'data'}",
        f"paths.output_root={tsp_run}",
        *TSP,
        *SIZES,
    )
    report = json.loads((out / "export_report.json").read_text())
    assert report["ok"] and len(report["graphs"]) == 4
