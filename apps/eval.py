"""Evaluation entry: `python -m apps.eval app=<app> ckpt_path=<ckpt> [app.data.test_file=...]`.

Rebuilds the model from the checkpoint (weights only), runs the app's test loop on the test split
(generated, or the file given in config), writes `eval_metrics.json` into the run folder and prints
the metrics as one JSON object on stdout.
"""

from __future__ import annotations

import json
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
    if hasattr(datamodule, "use_model_config"):
        datamodule.use_model_config(checkpoint.get("model_config") or {})
    trainer = instantiate(cfg.trainer)
    results = trainer.test(module, datamodule=datamodule)
    metrics = results[0] if results else {}
    report = {"checkpoint": str(cfg.ckpt_path), **metrics}
    write_json(Path(cfg.paths.output_dir) / "eval_metrics.json", report)
    # the command's result, for scripts: one JSON object on stdout
    print(json.dumps(report, sort_keys=True))
    return metrics


if __name__ == "__main__":
    main()
