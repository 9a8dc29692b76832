"""Every attention mechanism drops into the Pointer Networks Transformer encoder via `attention=<name>`
and trains a few steps through the real CLI (one multirun over all of them)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import ROOT

MECHANISMS = [
    "linear",
    "mala",
    "sigmoid",
    "rcmha",
    "ntk",
    "deconstruct_no_mixing",
    "deconstruct_fixed",
    "deconstruct_similarity",
    "deconstruct_static",
    "deconstruct_hybrid",
    "window",
    "sink_window",
    "power",
]

TINY = [
    "app.data.train_size=64",
    "app.data.val_size=32",
    "app.data.test_size=32",
    "app.data.batch_size=32",
    "app.data.generation_workers=1",
    "app.model.embed_dim=32",
    "app.model.encoder.embed_dim=32",
    "app.model.encoder.ff_dim=64",
    "app.model.encoder.num_heads=4",
    "app.model.encoder.num_layers=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "app.module.plot_examples=0",
]


def test_every_mechanism_trains_in_the_pointer_network(tmp_path: Path, cli):
    sweep = tmp_path / "sweep"
    cli(
        "apps.train",
        "--multirun",
        "hydra.launcher.n_jobs=1",
        "app=ptrnet",
        "trainer=smoke",
        "test=false",
        "attention=" + ",".join(MECHANISMS),
        f"hydra.sweep.dir={sweep}",
        f"paths.output_root={tmp_path}",
        f"paths.data_dir={tmp_path / 'data'}",
        "logger=csv",
        *TINY,
    )
    for job, name in enumerate(MECHANISMS):
        folder = sweep / str(job)
        config = yaml.safe_load((folder / "config.yaml").read_text())
        attention = config["app"]["model"]["encoder"]["attention"]
        expected = yaml.safe_load((ROOT / "conf" / "attention" / f"{name}.yaml").read_text())["_target_"]
        assert attention["_target_"] == expected, name
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["monitored"] is not None and 0.0 <= metrics["monitored"] <= 1.0, name
        assert (folder / "checkpoints" / "last.ckpt").is_file(), name
