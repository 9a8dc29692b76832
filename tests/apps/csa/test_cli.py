"""CSA through the real command line: train (smoke) on a tiny generated set, evaluate, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY = [
    "app.data.generator.n_train=24",
    "app.data.generator.n_val=8",
    "app.data.generator.n_test=8",
    "app.data.generator.num_classes=4",
    "app.model.temporal_dim=16",
    "app.model.num_samples=8",
    "app.model.hidden_dim_1d=32",
    "app.model.hidden_dim_2d=16",
    "app.model.hidden_dim_3d=32",
    "app.data.batch_size=4",
]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, list[str]]:
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("csa_smoke")
    common = [f"paths.data_dir={out / 'data'}", *TINY]
    run_cli("apps.train", "app=csa", "trainer=smoke", f"hydra.run.dir={out / 'run'}", *common)
    return out / "run", common


def test_smoke_run_reports_ar_an_and_map_and_plots(smoke_run):
    run, _ = smoke_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["monitor"] == "val/AUC"
    test = metrics["test"]
    for name in (
        "AR@1",
        "AR@5",
        "AR@10",
        "AR@100",
        "AUC",
        "avg_mAP_anet",
        "avg_mAP_thumos",
        "mAP@0.50",
        "mAP@0.30",
    ):
        assert f"test/{name}" in test, name
    assert 0.0 <= test["test/AR@100"] <= 1.0 and 0.0 <= test["test/AUC"] <= 100.0
    assert list((run / "plots").glob("proposals_epoch*.png"))


def test_eval_and_export_entries(smoke_run, cli):
    run, common = smoke_run
    ckpt = run / "checkpoints" / "last.ckpt"
    out = run / "exported"
    cli(
        "apps.export", "app=csa", f"ckpt_path={ckpt}", f"export.out_dir={out}", "export.batch_size=2", *common
    )
    report = json.loads((out / "export_report.json").read_text())
    assert report["ok"] and {g["format"] for g in report["graphs"]} == {"onnx", "torchscript"}
    result = cli("apps.eval", "app=csa", f"ckpt_path={ckpt}", f"paths.output_root={run}", *common)
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert "test/AUC" in printed and "test/avg_mAP_anet" in printed


@pytest.mark.parametrize(
    ("experiment", "attention", "branches"),
    [
        ("csa_bmn", "none", None),
        ("csa_se", "se", None),
        ("csa_csa_se", "csa_se", "both"),
        ("csa_se_temporal", "csa_se", "temporal"),  # also centered, no decay on the attention
    ],
)
def test_ablation_configs_compose_and_build(experiment, attention, branches):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from apps.common.config import register_resolvers

    register_resolvers()
    conf = Path(__file__).resolve().parents[3] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}", *TINY])
    model = instantiate(cfg.app.model)
    assert model.attention == attention
    assert (model.csa.branches if model.csa is not None else None) == branches
    if experiment == "csa_se_temporal":
        assert model.csa.centered and model.csa.channel_mlp is None
        assert model.csa.temporal_context == "none"  # the variant measured on the weak set
        assert cfg.app.module.attention_weight_decay == 0
    elif model.csa is not None:
        assert model.csa.temporal_context == "video"  # the default CSA


def test_default_and_weak_set_configs():
    """The default: strong distractors, video-context CSA; experiment=csa_weak: the sessions-1-25 set."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from apps.common.config import register_resolvers
    from apps.csa.generate import GeneratorConfig

    register_resolvers()
    conf = Path(__file__).resolve().parents[3] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        default = compose(config_name="train", overrides=["app=csa"])
        weak = compose(config_name="train", overrides=["experiment=csa_weak"])
    strong = GeneratorConfig(**default.app.data.generator)
    assert strong == GeneratorConfig()  # the app's default set is the generator's default
    assert (strong.n_train, strong.distractor_amplitude, strong.distractors_range) == (1200, 1.0, (1, 3))
    assert default.app.max_epochs == 8 and default.app.module.attention_weight_decay == 0
    model = instantiate(default.app.model)
    assert model.attention == "csa" and model.csa.centered and model.csa.temporal_context == "video"

    old = GeneratorConfig(**weak.app.data.generator)
    assert (old.n_train, old.distractor_amplitude, old.distractors_range) == (400, 0.3, (0, 2))
    assert weak.app.data.data_dir != default.app.data.data_dir
    assert weak.app.max_epochs == 10 and weak.app.module.attention_weight_decay is None
    model = instantiate(weak.app.model)
    assert not model.csa.centered and model.csa.temporal_context == "none"


def test_attention_parameter_group_lr_and_weight_decay():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from apps.common.config import register_resolvers

    register_resolvers()
    conf = Path(__file__).resolve().parents[3] / "conf"
    extra = ["app.module.attention_lr_scale=2.0", "app.model.centered=false"]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        default = compose(config_name="train", overrides=["app=csa", *TINY])
        single = compose(
            config_name="train", overrides=["app=csa", *TINY, "app.module.attention_weight_decay=null"]
        )
        grouped = compose(config_name="train", overrides=["app=csa", *TINY, *extra])
    module = instantiate(single.app.module, model=instantiate(single.app.model))
    assert len(module.configure_optimizers()["optimizer"].param_groups) == 1
    # the default: no weight decay on the attention parameters, the optimiser's on the rest
    model = instantiate(default.app.model)
    rest, attention = (
        instantiate(default.app.module, model=model).configure_optimizers()["optimizer"].param_groups
    )
    assert {id(p) for p in attention["params"]} == {id(p) for p in model.csa.parameters()}
    assert (
        attention["weight_decay"] == 0 and rest["weight_decay"] == default.app.module.optimizer.weight_decay
    )
    assert attention["lr"] == rest["lr"]
    model = instantiate(grouped.app.model)
    assert not model.csa.centered
    optimizer = instantiate(grouped.app.module, model=model).configure_optimizers()["optimizer"]
    rest, attention = optimizer.param_groups
    assert {id(p) for p in attention["params"]} == {id(p) for p in model.csa.parameters()}
    assert attention["lr"] == 2 * rest["lr"] == 2 * grouped.app.module.optimizer.lr
    assert (
        attention["weight_decay"] == 0 and rest["weight_decay"] == grouped.app.module.optimizer.weight_decay
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(rest["params"]) + len(attention["params"]) == len(trainable)
