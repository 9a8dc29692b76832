"""Training entry shared by every app: `python -m apps.train app=<app> [overrides]` (`make train`).

Composes `conf/train.yaml`, builds the app's datamodule, model and LightningModule from their
`_target_`s, trains with checkpoints written atomically, optionally tests the best checkpoint, and
returns the monitored metric so Hydra sweepers (joblib multirun, Optuna) can optimise it.
The run folder keeps the resolved config, the git revision and the final metrics as JSON.
"""

from __future__ import annotations

import logging
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from apps.common.callbacks import NonFiniteLossError
from apps.common.config import git_revision, register_resolvers, to_container
from apps.common.io import AtomicCheckpointIO, atomic_write, write_json

log = logging.getLogger(__name__)
register_resolvers()


def build_app(
    cfg: DictConfig, datamodule: pl.LightningDataModule | None = None, **module_overrides: Any
) -> tuple[pl.LightningDataModule, pl.LightningModule]:
    """Instantiate the app's datamodule and LightningModule (with its plain model inside).

    A datamodule with `model_overrides()` supplies model arguments that come from the data (a
    vocabulary, say); they are stored with the model config in checkpoints.
    """
    if datamodule is None:
        datamodule = instantiate(cfg.app.data)
    overrides = datamodule.model_overrides() if hasattr(datamodule, "model_overrides") else {}
    model = instantiate(cfg.app.model, **overrides)
    module = instantiate(cfg.app.module, model=model, **module_overrides)
    # set after instantiation: passed as an argument, Hydra would instantiate this config too
    module.model_config = {**to_container(cfg.app.model), **overrides}
    return datamodule, module


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    return [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node is not None]


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate(node) for node in (cfg.get("logger") or {}).values() if node is not None]


def write_run_info(cfg: DictConfig, output_dir: Path) -> None:
    """Save the resolved config and where the code came from into the run folder."""
    output_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_yaml(cfg, resolve=True).encode()
    atomic_write(output_dir / "config.yaml", lambda handle: handle.write(resolved))
    write_json(
        output_dir / "run_info.json",
        {
            "git": git_revision(),
            "command": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": pl.__version__,
            "host": platform.node(),
        },
    )


def fit_and_test(
    cfg: DictConfig, datamodule: pl.LightningDataModule, module: pl.LightningModule
) -> dict[str, Any]:
    """Fit (if `cfg.train`) and test the best checkpoint (if `cfg.test`) into `cfg.paths.output_dir`."""
    output_dir = Path(cfg.paths.output_dir)
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=build_callbacks(cfg),
        logger=build_loggers(cfg) or False,
        plugins=[AtomicCheckpointIO()],
    )
    if cfg.ckpt_path is not None and not Path(cfg.ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path: no such checkpoint: {cfg.ckpt_path}")

    results: dict[str, Any] = {"monitor": cfg.app.monitor}
    if cfg.train:
        started, first_step = time.perf_counter(), trainer.global_step
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
        fit_seconds = time.perf_counter() - started
        steps = trainer.global_step - first_step
        # wall time of fit (validation and start-up included) per optimiser step: the speed column of sweeps
        results["timing"] = {
            "fit_seconds": fit_seconds,
            "train_steps": steps,
            "ms_per_step": 1e3 * fit_seconds / steps if steps else None,
        }
        results["fit"] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        checkpoint = trainer.checkpoint_callback
        best_score = getattr(checkpoint, "best_model_score", None)
        results["best_checkpoint"] = getattr(checkpoint, "best_model_path", "") or None
        last = output_dir / "checkpoints" / "last.ckpt"
        results["last_checkpoint"] = str(last) if last.is_file() else None
        monitored = best_score if best_score is not None else trainer.callback_metrics.get(cfg.app.monitor)
        results["monitored"] = None if monitored is None else float(monitored)
    if cfg.test:
        best = results.get("best_checkpoint")
        tested = trainer.test(
            module, datamodule=datamodule, ckpt_path=best if best else None, weights_only=True
        )
        results["test"] = tested[0] if tested else {}
    write_json(output_dir / "metrics.json", results)
    return results


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns the final metrics (also written to `metrics.json`).

    An app whose config has a `runner` (a multi-stage protocol such as PSSA's rounds) is run by it;
    the runner calls `build_app` and `fit_and_test` per stage.
    """
    output_dir = Path(cfg.paths.output_dir)
    write_run_info(cfg, output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    if cfg.app.get("runner") is not None:
        results = instantiate(cfg.app.runner).run(cfg)
    else:
        datamodule, module = build_app(cfg)
        results = fit_and_test(cfg, datamodule, module)
    log.info("run folder: %s", output_dir)
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        results = train(cfg)
    except NonFiniteLossError as err:
        log.error("%s", err)
        raise SystemExit(f"error: {err}") from err
    monitored = results.get("monitored")
    if monitored is None:
        return None
    return monitored if math.isfinite(monitored) else float("nan")


if __name__ == "__main__":
    main()
