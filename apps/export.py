"""Export entry: `python -m apps.export app=<app> ckpt_path=<ckpt> export.format=onnx|torchscript|both`.

Loads the checkpoint with `weights_only=True`, rebuilds the model from the config stored in it
(project classes only), exports ONNX (`dynamo=True`, dynamic batch and length) and TorchScript,
checks both against the eager model on a real batch, writes `export_report.json` beside the files,
and exits non-zero on a mismatch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from apps.common.config import check_trusted_targets, register_resolvers, to_container
from apps.common.export import ExportMismatchError, export_graphs
from apps.common.io import load_checkpoint, write_json
from apps.common.module import model_state_dict

log = logging.getLogger(__name__)
register_resolvers()


def load_model(ckpt_path: str | Path, fallback_config: Any = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the plain model stored in a training checkpoint, in eval mode."""
    checkpoint = load_checkpoint(ckpt_path)
    model_config = checkpoint.get("model_config")
    if model_config is None:
        if fallback_config is None:
            raise KeyError(f"{ckpt_path}: checkpoint has no `model_config`; pass the app's model config")
        model_config = to_container(fallback_config)
        log.warning("%s has no stored model config; using the current app.model config", ckpt_path)
    check_trusted_targets(model_config, where=f"{ckpt_path}: model_config")
    model = instantiate(model_config)
    state = model_state_dict(checkpoint)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"{ckpt_path}: weights do not fit the model: missing {missing}, unexpected {unexpected}"
        )
    return model.eval(), checkpoint


def example_batch(cfg: DictConfig, model_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """A real batch from the app's validation split (`export.batch_size` examples)."""
    datamodule = instantiate(
        cfg.app.data, batch_size=cfg.export.batch_size, eval_batch_size=cfg.export.batch_size
    )
    if model_config is not None and hasattr(datamodule, "use_model_config"):
        datamodule.use_model_config(model_config)
    datamodule.prepare_data()
    datamodule.setup("validate")
    return next(iter(datamodule.val_dataloader()))


def run_export(cfg: DictConfig) -> dict[str, Any]:
    ckpt_path = Path(cfg.ckpt_path).expanduser()
    model, checkpoint = load_model(ckpt_path, cfg.app.model)
    formats = ["onnx", "torchscript"] if cfg.export.format == "both" else [cfg.export.format]
    out_dir = Path(cfg.export.out_dir) if cfg.export.out_dir else ckpt_path.parent.parent / "export"
    graphs = model.export_graphs(example_batch(cfg, checkpoint.get("model_config")))
    try:
        report = export_graphs(
            graphs, out_dir, formats, opset=cfg.export.opset, atol=cfg.export.atol, rtol=cfg.export.rtol
        )
    except ExportMismatchError as err:
        write_json(out_dir / "export_report.json", {"checkpoint": str(ckpt_path), **err.report})
        raise
    report = {"checkpoint": str(ckpt_path), **report}
    write_json(out_dir / "export_report.json", report)
    log.info("exported %d graph(s) as %s into %s", len(graphs), "+".join(formats), out_dir)
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        run_export(cfg)
    except ExportMismatchError as err:
        raise SystemExit(f"error: {err}") from err


if __name__ == "__main__":
    main()
