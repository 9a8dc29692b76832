"""HuBERTopic through the real command line: smoke training (corpus → units → topics → pretraining
→ probes), evaluation of the checkpoint, and export with parity checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apps.common.io import load_checkpoint
from tests.apps.hubertopic.conftest import write_librispeech

TINY = [
    "app.data.labels.num_classes=8",
    "app.data.topics.num_topics=3",
    "app.data.topics.max_iter=10",
    "app.data.batch_size=4",
    "app.data.eval_batch_size=8",
    "app.data.max_seconds=0.5",
    "app.model.conv_channels=16",
    "app.model.embed_dim=32",
    "app.model.num_layers=2",
    "app.model.num_heads=2",
    "app.model.ff_dim=32",
    "app.model.pos_conv_kernel=8",
    "app.model.pos_conv_groups=2",
    "app.model.final_dim=16",
    "app.module.ctc_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=null",
]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, list[str]]:
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("hubertopic")
    corpus = write_librispeech(out / "LibriSpeech" / "train", {"11": "M", "22": "F", "33": "M", "44": "F"}, 3)
    common = [
        f"paths.data_dir={out / 'data'}",
        f"app.data.corpus_dir={corpus}",
        "app.data.valid_fraction=0.2",
    ]
    run_cli(
        "apps.train",
        "app=hubertopic",
        "trainer=smoke",
        "attention=softmax",
        # HuBERT's per-update warm-up + decay schedule (experiment=hubertopic_base uses it)
        "app.module.scheduler={_target_:apps.common.schedulers.WarmupPolynomialDecay,_partial_:true,"
        "warmup_steps:null,warmup_fraction:0.5}",
        f"paths.output_root={out}",
        f"hydra.run.dir={out / 'run'}",
        # a second topic model through its own head (experiment=hubertopic_long_two_topics)
        "app.data.topics.second={documents:speaker_residual,num_topics:2}",
        *common,
        *TINY,
    )
    return out, common


def test_smoke_train_writes_units_topics_checkpoint_and_probes(smoke_run):
    out, _ = smoke_run
    run = out / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["monitor"] == "val/mask_loss" and metrics["monitored"] is not None
    for key in (
        "test/speaker_acc",
        "test/gender_acc",
        "test/char_cer",
        "test/nmi_topic_speaker",
        "test/nmi_topic2_speaker",
    ):
        assert key in metrics["test"], key
    assert "train/topic2_loss" in metrics["fit"] and "val/topic2_loss" in metrics["fit"]
    assert list((out / "data" / "hubertopic" / "labels").glob("*/units.npz")) and list(
        (out / "data" / "hubertopic" / "labels").glob("*/topics_*.npz")
    )
    report = json.loads((run / "probes.json").read_text())
    assert len(report["per_layer_acc"]["speaker"]) == 2
    assert (run / "topic_contingency.png").stat().st_size > 0 and (
        run / "probe_scores.png"
    ).stat().st_size > 0
    checkpoint = load_checkpoint(run / "checkpoints" / "last.ckpt")
    # the schedule was sized from the trainer (1 epoch × 2 batches) and stepped per update
    (schedule,) = checkpoint["lr_schedulers"]
    assert (schedule["total_steps"], schedule["warmup_steps"], schedule["last_epoch"]) == (2, 1, 2)
    config = checkpoint["model_config"]
    assert config["_target_"] == "apps.hubertopic.model.HuBERTopic"
    assert config["num_classes"] == 8 and config["num_topics"] == 3 and config["num_topics2"] == 2
    assert config["attention"]["_target_"] == "shared_attention.MultiHeadAttention"


@pytest.mark.slow
def test_eval_runs_the_probes_on_the_checkpoint(smoke_run):
    from tests.conftest import run_cli

    out, common = smoke_run
    proc = run_cli(
        "apps.eval",
        "app=hubertopic",
        f"ckpt_path={out / 'run' / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={out / 'eval'}",
        "trainer.enable_progress_bar=false",
        *common,
        *[arg for arg in TINY if not arg.startswith("trainer.")],
        "app.module.ctc_epochs=0",  # after TINY's 2: no CTC probe at all
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0.0 <= report["test/gender_acc"] <= 1.0 and "test/nmi_topic_gender" in report
    assert not any("cer" in key for key in report)
    assert (out / "eval" / "probes.json").is_file()


def test_eval_can_reprobe_character_recognition_alone(smoke_run):
    """`utterance_probes=false` skips speaker / gender / theme and keeps the CTC probe (with the
    probe's training taken from the config) and the NMI."""
    from tests.conftest import run_cli

    out, common = smoke_run
    proc = run_cli(
        "apps.eval",
        "app=hubertopic",
        f"ckpt_path={out / 'run' / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={out / 'eval_ctc'}",
        "trainer.enable_progress_bar=false",
        "app.module.utterance_probes=false",
        "app.module.ctc_schedule=constant",
        "app.module.ctc_lr=0.002",
        *common,
        *[arg for arg in TINY if not arg.startswith("trainer.")],
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["test/char_cer"] >= 0.0 and "test/nmi_topic_gender" in report
    assert not any(key.endswith("_acc") for key in report)
    probes_json = json.loads((out / "eval_ctc" / "probes.json").read_text())
    assert probes_json["per_layer_acc"] == {}
    assert probes_json["ctc_training"] == {
        "epochs": 2,
        "lr": 0.002,
        "schedule": "constant",
        "layer_lr_scale": 1.0,
    }


def test_eval_cross_validated_probes_score_every_utterance(smoke_run):
    from tests.conftest import run_cli

    out, common = smoke_run
    proc = run_cli(
        "apps.eval",
        "app=hubertopic",
        f"ckpt_path={out / 'run' / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={out / 'eval_cv'}",
        "trainer.enable_progress_bar=false",
        "app.module.probe_folds=3",
        "app.module.probe_weighted=true",
        "app.module.probe_ctc_per_layer=true",
        "app.module.plots=false",
        *common,
        *[arg for arg in TINY if not arg.startswith("trainer.")],
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0.0 <= report["test/gender_acc"] <= 1.0
    probes_json = json.loads((out / "eval_cv" / "probes.json").read_text())
    assert probes_json["probe_folds"] == 3
    assert probes_json["ctc_training"] == {
        "epochs": 2,
        "lr": 0.01,
        "schedule": "cosine",
        "layer_lr_scale": 1.0,
    }
    assert (
        probes_json["probe_test_utterances"] == probes_json["utterances"] > probes_json["ctc_test_utterances"]
    )
    # SUPERB's form: every probe also on a learnt softmax-weighted sum of all layers
    layers = len(probes_json["per_layer_acc"]["gender"])
    assert 0.0 <= report["test/gender_acc_weighted"] <= 1.0 and report["test/char_cer_weighted"] >= 0.0
    assert set(probes_json["layer_weights"]) == {*probes_json["per_layer_acc"], "char"}
    assert len(probes_json["per_layer_cer"]) == layers and all(c >= 0 for c in probes_json["per_layer_cer"])
    # the headline layer's CTC probe is the same fit as its entry in the per-layer list
    assert probes_json["per_layer_cer"][probes_json["probe_layer"] - 1] == pytest.approx(
        report["test/char_cer"]
    )
    for name in probes_json["layer_weights"]:
        weights = probes_json["layer_weights"][name]
        assert len(weights) == layers and sum(weights) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
def test_export_cli_checks_parity(smoke_run):
    from tests.conftest import run_cli

    out, common = smoke_run
    run_cli(
        "apps.export",
        "app=hubertopic",
        f"ckpt_path={out / 'run' / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={out / 'export_run'}",
        "export.batch_size=2",
        *common,
        *[arg for arg in TINY if not arg.startswith("trainer.")],
    )
    report = json.loads((out / "run" / "export" / "export_report.json").read_text())
    assert report["ok"] and {g["format"] for g in report["graphs"]} == {"onnx", "torchscript"}


@pytest.mark.slow
def test_second_iteration_labels_from_the_first_model(smoke_run):
    from tests.conftest import run_cli

    out, common = smoke_run
    run_cli(
        "apps.train",
        "app=hubertopic",
        "trainer=smoke",
        "test=false",
        "app.data.labels.source=model",
        f"app.data.labels.checkpoint={out / 'run' / 'checkpoints' / 'last.ckpt'}",
        "app.data.labels.layer=1",
        f"paths.output_root={out}",
        f"hydra.run.dir={out / 'iter2'}",
        *common,
        *[arg.replace("num_classes=8", "num_classes=12") for arg in TINY],
    )
    hops = [
        json.loads(p.read_text())["hop"]
        for p in (out / "data" / "hubertopic" / "labels").glob("*/units.json")
    ]
    assert sorted(hops) == [160, 320]


@pytest.mark.parametrize(
    ("size", "width", "layers"), [("small", 128, 4), ("base", 768, 12), ("large", 1024, 24)]
)
def test_model_size_configs_compose(size, width, layers):
    from hydra import compose, initialize_config_dir

    from apps.common.config import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["app=hubertopic", f"hubert_model@app.model={size}"])
    assert cfg.app.model._target_ == "apps.hubertopic.model.HuBERTopic"
    assert (cfg.app.model.embed_dim, cfg.app.model.num_layers) == (width, layers)


def test_base_recipe_experiment_composes():
    from hydra import compose, initialize_config_dir

    from apps.common.config import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=hubertopic_base"])
    assert (cfg.app.model.embed_dim, cfg.app.model.num_layers) == (768, 12)
    assert cfg.app.module.scheduler._target_ == "apps.common.schedulers.WarmupPolynomialDecay"
    assert cfg.app.module.scheduler.warmup_fraction == 0.08
    assert list(cfg.app.module.optimizer.betas) == [0.9, 0.98]
