"""ABSA through the real command line: the PSSA pipeline (2 rounds + final), resume, eval, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apps.common.io import load_checkpoint

TINY = [
    "app.data.generator.n_train=400",
    "app.data.generator.n_test=100",
    "app.data.batch_size=16",
    "app.model.embed_dim=16",
    "app.model.hidden_dim=8",
]


@pytest.fixture(scope="module")
def pssa_run(tmp_path_factory) -> tuple[Path, list[str]]:
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("absa_pssa")
    common = [f"paths.data_dir={out / 'data'}", *TINY]
    args = [
        "apps.train",
        "app=absa",
        "trainer=smoke",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=6",
        "app.runner.rounds=2",
        "app.runner.entropy_threshold=10.0",
        f"paths.output_root={out}",
        f"hydra.run.dir={out / 'run'}",
        *common,
    ]
    run_cli(*args)
    return out / "run", common, args


def test_pssa_pipeline_rounds_state_final_and_plots(pssa_run):
    run, _, _ = pssa_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["monitor"] == "val/acc"
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    for stats in metrics["rounds"]:
        # entropy threshold above any sentence's entropy: every sentence gives one word
        assert stats["active"] + stats["misleading"] == stats["sentences"] - stats.get("no_candidate", 0)
    assert 0.0 <= metrics["base_test"]["test/acc"] <= 1.0
    for name in ("acc", "macro_f1", "kendall_tau", "weighted_tau", "pearson", "top1_agreement"):
        assert f"test/{name}" in metrics["test"], name
    assert 0.0 <= metrics["test"]["test/top1_agreement"] <= 1.0
    assert any(key.startswith("test/acc_") for key in metrics["test"])
    assert metrics["supervised_examples"] > 0
    state = json.loads((run / "pssa_state.json").read_text())
    assert len(state["extracted"]) == state["train_examples"]
    assert all(len(e["erased"]) <= 2 for e in state["extracted"])
    assert any(len(e["erased"]) == 2 for e in state["extracted"])
    for stage in ("round1", "round2", "final"):
        assert (run / stage / "checkpoints" / "last.ckpt").is_file(), stage
    assert list((run / "final" / "plots").glob("attention_epoch*.png"))
    assert (run / "attention_before_after_pssa.png").stat().st_size > 0
    config = load_checkpoint(run / "final" / "checkpoints" / "last.ckpt")["model_config"]
    assert config["_target_"] == "apps.absa.model.TNetATT" and config["vocab"][:3] == [
        "<pad>",
        "<unk>",
        "<mask>",
    ]


def test_rerun_resumes_finished_rounds(pssa_run):
    from tests.conftest import run_cli

    run, _, args = pssa_run
    before = (run / "round1" / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    state_before = json.loads((run / "pssa_state.json").read_text())
    run_cli(*args)
    assert (run / "round1" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == before
    assert json.loads((run / "pssa_state.json").read_text())["extracted"] == state_before["extracted"]


def test_eval_and_export_entries(pssa_run, cli):
    run, common, _ = pssa_run
    ckpt = run / "final" / "checkpoints" / "last.ckpt"
    out = run / "exported"
    cli(
        "apps.export",
        "app=absa",
        f"ckpt_path={ckpt}",
        f"export.out_dir={out}",
        "export.batch_size=4",
        *common,
    )
    report = json.loads((out / "export_report.json").read_text())
    assert report["ok"] and {g["format"] for g in report["graphs"]} == {"onnx", "torchscript"}
    result = cli("apps.eval", "app=absa", f"ckpt_path={ckpt}", f"paths.output_root={run}", *common)
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0.0 <= printed["test/acc"] <= 1.0 and "test/macro_f1" in printed


def test_pretrained_pssa_with_state_cache_resumes_an_interrupted_stage(tmp_path, tiny_encoder):
    """experiment=absa_pretrained (tiny local encoder): every stage caches the frozen encoder's word
    states; rerunning with more epochs skips the rounds and continues the final stage from its
    last.ckpt, rebuilding the cache (it is never saved in a checkpoint)."""
    from tests.conftest import run_cli

    args = [
        "apps.train",
        "app=absa",
        "experiment=absa_pretrained",
        "trainer=smoke",
        "trainer.max_epochs=1",
        "app.runner.rounds=2",
        "app.runner.entropy_threshold=10.0",
        f"app.model.encoder_path={tiny_encoder}",
        "app.data.generator.n_train=200",
        "app.data.generator.n_test=60",
        "app.data.batch_size=16",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.output_root={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    run_cli(*args)
    run = tmp_path / "run"
    log = (run / "train.log").read_text()
    assert log.count("state cache: encoded") == 3  # round1, round2, final
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert "test/kendall_tau" in metrics["test"] and "test/kendall_tau" in metrics["base_test"]
    header = (run / "final" / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert "val/acc" in header and "val/kendall_tau" not in header  # val_kendall_tau=false
    final = load_checkpoint(run / "final" / "checkpoints" / "last.ckpt")
    assert final["epoch"] == 0 and not any("cache" in key for key in final["state_dict"])
    round1 = (run / "round1" / "checkpoints" / "last.ckpt").stat().st_mtime_ns

    proc = run_cli(*args[:4], "trainer.max_epochs=2", *args[5:])
    assert "final/checkpoints/last.ckpt" in proc.stdout + proc.stderr  # restored from it
    assert (run / "round1" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == round1
    assert load_checkpoint(run / "final" / "checkpoints" / "last.ckpt")["epoch"] == 1
    assert (run / "train.log").read_text().count("state cache: encoded") == 4
