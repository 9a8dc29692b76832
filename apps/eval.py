"""Evaluation entry: `python -m apps.eval app=<app> ckpt_path=<ckpt> [app.data.test_file=...]`.

Rebuilds the model from the checkpoint (weights only), runs the app's test loop on the test split
(generated, or the file given in config) and writes `eval_metrics.json` into the run folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from apps.common.config import register_resolvers
from apps.common.io import write_json
from apps.export import load_model

log = logging.getLogger(__name__)
register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> dict[str, float]:
    model, checkpoint = load_model(cfg.ckpt_path, cfg.app.model)
    module = instantiate(cfg.app.module, model=model)
    module.model_config = checkpoint.get("model_config")
    datamodule = instantiate(cfg.app.data)
    trainer = instantiate(cfg.trainer)
    results = trainer.test(module, datamodule=datamodule)
    metrics = results[0] if results else {}
    write_json(
        Path(cfg.paths.output_dir) / "eval_metrics.json", {"checkpoint": str(cfg.ckpt_path), **metrics}
    )
    return metrics


if __name__ == "__main__":
    main()
