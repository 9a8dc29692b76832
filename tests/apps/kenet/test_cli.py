"""KeNet through the real command line: train (smoke), evaluate and export a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apps.common.io import load_checkpoint

TINY = [
    "app.data.max_train_docs=48",
    "app.data.max_val_docs=16",
    "app.data.max_test_docs=16",
    "app.data.batch_size=16",
    "app.data.max_doc_tokens=48",
    "app.data.max_knowledge_tokens=16",
    "app.data.knowledge.max_entries=3",
    "app.model.hidden_dim=16",
    "app.model.num_heads=2",
    "app.model.classifier_dim=16",
    "app.module.heatmap_docs=1",
]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, tiny_encoder: str) -> tuple[Path, list[str]]:
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("kenet_smoke")
    common = [f"paths.data_dir={out / 'data'}", f"app.model.encoder_path={tiny_encoder}", *TINY]
    run_cli(
        "apps.train",
        "app=kenet",
        "trainer=smoke",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        f"paths.output_root={out}",
        f"hydra.run.dir={out / 'run'}",
        *common,
    )
    return out / "run", common


def test_smoke_run_writes_metrics_report_plots_and_small_checkpoint(smoke_run):
    run, _ = smoke_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["monitor"] == "val/micro_f1"
    assert 0.0 <= metrics["monitored"] <= 1.0
    for name in ("p@1", "p@3", "p@5", "ndcg@3", "ndcg@5", "micro_f1", "macro_f1", "hamming"):
        assert 0.0 <= metrics["test"][f"test/{name}"] <= 1.0, name
    report = json.loads((run / "per_label_report.json").read_text())
    assert {"label", "train_count", "support", "precision", "recall", "f1"} <= set(report[0])
    assert (run / "per_label_report.csv").is_file()
    assert (run / "f1_vs_label_frequency.png").stat().st_size > 0
    assert (run / "attention_doc0.png").stat().st_size > 0
    checkpoint = load_checkpoint(run / "checkpoints" / "last.ckpt")
    config = checkpoint["model_config"]
    assert config["_target_"] == "apps.kenet.model.KeNet" and len(config["labels"]) > 10
    assert not any(key.startswith("model.encoder.") for key in checkpoint["state_dict"])


@pytest.mark.slow
def test_export_and_eval_entries_on_the_checkpoint(smoke_run, cli):
    run, common = smoke_run
    ckpt = run / "checkpoints" / "last.ckpt"
    out = run / "exported"
    cli(
        "apps.export",
        "app=kenet",
        f"ckpt_path={ckpt}",
        f"export.out_dir={out}",
        "export.batch_size=4",
        *common,
    )
    report = json.loads((out / "export_report.json").read_text())
    assert report["ok"]
    assert {g["format"] for g in report["graphs"]} == {"onnx", "torchscript"}
    cli(
        "apps.eval",
        "app=kenet",
        f"ckpt_path={ckpt}",
        f"hydra.run.dir={run / 'eval'}",
        "trainer=smoke",
        *common,
    )
    metrics = json.loads((run / "eval" / "eval_metrics.json").read_text())
    assert 0.0 <= metrics["test/micro_f1"] <= 1.0


def test_unknown_head_is_a_clear_error(tmp_path: Path, cli, tiny_encoder: str):
    proc = cli(
        "apps.train",
        "app=kenet",
        "trainer=smoke",
        "app.model.head=transformer",
        f"app.model.encoder_path={tiny_encoder}",
        f"paths.output_root={tmp_path}",
        f"paths.data_dir={tmp_path / 'data'}",
        *TINY,
        check=False,
    )
    assert proc.returncode != 0
    assert "app.model.head" in proc.stderr
