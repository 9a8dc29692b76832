"""The training, sweep, resume, export and eval entries, driven through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from apps.common.io import load_checkpoint

SMALL = [
    "app.data.train_size=192",
    "app.data.val_size=48",
    "app.data.test_size=48",
    "app.data.batch_size=32",
    "app.data.generation_workers=1",
    "app.model.embed_dim=32",
    "app.model.encoder.embed_dim=32",
    "app.model.encoder.ff_dim=64",
    "app.model.encoder.num_heads=4",
    "app.model.encoder.num_layers=1",
]


def base_args(tmp: Path, data: Path) -> list[str]:
    return [f"paths.output_root={tmp}", f"paths.data_dir={data}", "logger=csv", *SMALL]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_dir) -> Path:
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("smoke")
    run_cli(
        "apps.train",
        "app=ptrnet",
        "trainer=smoke",
        "hydra.run.dir=" + str(out / "run"),
        *base_args(out, data_dir),
    )
    return out / "run"


def test_smoke_run_writes_config_revision_metrics_and_checkpoint(smoke_run: Path):
    assert (smoke_run / "config.yaml").is_file()
    info = json.loads((smoke_run / "run_info.json").read_text())
    assert "commit" in info["git"]
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    assert metrics["monitor"] == "val/exact"
    assert 0.0 <= metrics["monitored"] <= 1.0
    assert "test/exact" in metrics["test"]
    timing = metrics["timing"]
    assert timing["train_steps"] > 0 and timing["fit_seconds"] > 0
    assert timing["ms_per_step"] == pytest.approx(1e3 * timing["fit_seconds"] / timing["train_steps"])
    assert (smoke_run / "checkpoints" / "last.ckpt").is_file()
    checkpoint = load_checkpoint(smoke_run / "checkpoints" / "last.ckpt")
    assert checkpoint["model_config"]["_target_"] == "apps.ptrnet.model.PointerNet"
    assert not list((smoke_run / "checkpoints").glob("*.tmp"))


def test_export_both_formats_match_eager(smoke_run: Path, data_dir: Path, cli):
    out = smoke_run / "exported"
    cli(
        "apps.export",
        "app=ptrnet",
        f"ckpt_path={smoke_run / 'checkpoints' / 'last.ckpt'}",
        "export.format=both",
        f"export.out_dir={out}",
        f"paths.data_dir={data_dir}",
        f"paths.output_root={smoke_run}",
        *SMALL,
    )
    report = json.loads((out / "export_report.json").read_text())
    assert report["ok"]
    done = {(g["graph"], g["format"]) for g in report["graphs"]}
    assert done == {(g, f) for g in ("encoder", "decoder_step") for f in ("onnx", "torchscript")}
    for entry in report["graphs"]:
        assert Path(entry["file"]).is_file()
        assert len(entry["input_shapes"]) == 2  # the batch and a smaller, longer one
        assert max(entry["max_abs_error"]) <= 1e-3


def test_eval_entry_on_checkpoint(smoke_run: Path, data_dir: Path, cli):
    cli(
        "apps.eval",
        "app=ptrnet",
        f"ckpt_path={smoke_run / 'checkpoints' / 'last.ckpt'}",
        "hydra.run.dir=" + str(smoke_run / "eval"),
        f"paths.data_dir={data_dir}",
        "+trainer.limit_test_batches=1",
        *SMALL,
    )
    metrics = json.loads((smoke_run / "eval" / "eval_metrics.json").read_text())
    assert 0.0 <= metrics["test/exact"] <= 1.0


def test_multirun_two_jobs(tmp_path: Path, data_dir: Path, cli):
    sweep = tmp_path / "sweep"
    cli(
        "apps.train",
        "--multirun",
        "app=ptrnet",
        "trainer=smoke",
        "attention=softmax,softmax_rope",
        "test=false",
        f"hydra.sweep.dir={sweep}",
        *base_args(tmp_path, data_dir),
    )
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    rotary = []
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["monitored"] is not None
        rotary.append("rotary: true" in (job / "config.yaml").read_text())
    assert rotary == [False, True]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def test_resume_continues_exactly(tmp_path: Path, data_dir: Path, cli):
    common = [
        "app=ptrnet",
        "trainer=smoke",
        "test=false",
        "app.model.encoder.dropout=0.2",
        "trainer.limit_val_batches=1",
        *base_args(tmp_path, data_dir),
    ]
    cli("apps.train", "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'straight'}", *common)
    cli("apps.train", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'first'}", *common)
    first_last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    cli(
        "apps.train",
        "trainer.max_epochs=2",
        f"ckpt_path={first_last}",
        f"hydra.run.dir={tmp_path / 'resumed'}",
        *common,
    )
    straight = _weights(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    resumed = _weights(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    interrupted = _weights(first_last)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert any(not torch.equal(straight[k], interrupted[k]) for k in straight)


def test_unknown_attention_is_a_clear_error(tmp_path: Path, cli):
    proc = cli(
        "apps.train",
        "app=ptrnet",
        "attention=no_such_mechanism",
        f"paths.output_root={tmp_path}",
        check=False,
    )
    assert proc.returncode != 0
    assert "no_such_mechanism" in proc.stderr


def test_missing_resume_checkpoint_is_a_clear_error(tmp_path: Path, data_dir: Path, cli):
    proc = cli(
        "apps.train",
        "app=ptrnet",
        "trainer=smoke",
        f"ckpt_path={tmp_path / 'nope.ckpt'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *base_args(tmp_path, data_dir),
        check=False,
    )
    assert proc.returncode != 0
    assert "nope.ckpt" in proc.stderr


def test_optuna_search_runs_trials_and_reports_best(tmp_path: Path, data_dir: Path, cli):
    sweep = tmp_path / "optuna"
    cli(
        "apps.train",
        "app=ptrnet",
        "hparams_search=ptrnet_optuna",
        "trainer=smoke",
        "test=false",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"hydra.sweep.dir={sweep}",
        *base_args(tmp_path, data_dir),
    )
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in results and "best_value" in results
    assert len([p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()]) == 2
