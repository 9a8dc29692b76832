"""LightningModule for KeNet: BCE training, validation-chosen threshold, metrics, report and plots."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from apps.common.io import atomic_write, write_json
from apps.common.module import BaseModule
from apps.kenet import metrics as mlc
from apps.kenet.plots import plot_attention_heatmap, plot_f1_vs_frequency

log = logging.getLogger(__name__)


class KeNetModule(BaseModule):
    """Trains `KeNet` with binary cross-entropy over all labels.

    Each validation epoch picks the global probability threshold that maximises micro-F1 on the
    validation set and stores it in the model (`model.threshold`, saved with the weights); test
    uses that threshold. Logged per stage: `p@1/3/5`, `ndcg@3/5`, `micro_f1`, `macro_f1`,
    `hamming`, `loss` (and `threshold` on validation). After testing, the per-label report
    (`per_label_report.csv/.json`), `test_metrics.json` and two plots (doc→label attention
    heatmaps of validation documents, F1 against training label frequency) go into the run folder.

    Args:
        pos_weight: weight of positive labels in the BCE (1.0 = plain BCE).
        threshold: `global` (one probability threshold maximising validation micro-F1),
            `per_label_micro` (per-label thresholds that raise validation micro-F1, see
            `metrics.micro_f1_thresholds`) or `per_label` (each label's own F1-maximising
            threshold on validation); labels with fewer than `threshold_min_support` validation
            positives keep the global one.
        threshold_min_support: see `threshold`.
        heatmap_docs: validation documents drawn in the attention heatmap plot (0: no plots).
        heatmap_labels: top-scored labels per heatmap.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        model_config: dict[str, Any] | None = None,
        pos_weight: float = 1.0,
        heatmap_docs: int = 3,
        heatmap_labels: int = 8,
        threshold: str = "global",
        threshold_min_support: int = 2,
    ) -> None:
        super().__init__(model, optimizer, scheduler, model_config)
        if threshold not in mlc.THRESHOLD_MODES:
            raise ValueError(
                f"app.module.threshold: unknown value {threshold!r}; expected one of {mlc.THRESHOLD_MODES}"
            )
        self.threshold_mode = threshold
        self.threshold_min_support = threshold_min_support
        self.pos_weight = pos_weight
        self.heatmap_docs = heatmap_docs
        self.heatmap_labels = heatmap_labels
        self._scores: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []

    # ------------------------------------------------------------- lifecycle
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        datamodule.setup(stage)
        labels = list(datamodule.labels)
        if not self.model.built:
            self.model.build(labels)
            log.info("KeNet head built for %d labels", len(labels))
        elif list(self.model.labels) != labels:
            raise ValueError(
                f"the checkpoint's model has {len(self.model.labels)} labels but the data has {len(labels)} "
                "(or a different order); use the same corpus and app.data.min_label_freq as in training"
            )
        if self.model_config is not None:
            self.model_config = {**self.model_config, "labels": labels}

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model(
            batch["doc_ids"],
            batch["doc_mask"],
            batch.get("know_ids"),
            batch.get("know_mask"),
            doc_states=batch.get("doc_states"),
            know_states=batch.get("know_states"),
            know_index=batch.get("know_index"),
        )

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = None
        if self.pos_weight != 1.0:
            weight = torch.full((targets.shape[1],), self.pos_weight, device=targets.device)
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        loss = self._loss(logits, batch["targets"])
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        logits = self(batch)
        self.log(f"{stage}/loss", self._loss(logits, batch["targets"]), batch_size=logits.shape[0])
        self._scores.append(torch.sigmoid(logits).float().cpu().numpy())
        self._targets.append(batch["targets"].cpu().numpy())

    def on_validation_epoch_start(self) -> None:
        self._scores, self._targets = [], []

    on_test_epoch_start = on_validation_epoch_start

    def _collected(self) -> tuple[np.ndarray, np.ndarray]:
        scores, targets = np.concatenate(self._scores), np.concatenate(self._targets)
        self._scores, self._targets = [], []
        return scores, targets

    def on_validation_epoch_end(self) -> None:
        if not self._scores:
            return
        scores, targets = self._collected()
        threshold, thresholds = mlc.choose_thresholds(
            scores, targets, self.threshold_mode, self.threshold_min_support
        )
        if not self.trainer.sanity_checking:
            self.model.threshold.copy_(torch.as_tensor(thresholds, dtype=self.model.threshold.dtype))
            self.model.global_threshold.fill_(threshold)
        values = mlc.all_metrics(scores, targets, thresholds)
        values["threshold"] = threshold
        for name, value in values.items():
            self.log(f"val/{name}", value, prog_bar=name in ("micro_f1", "p@1"))

    def on_test_epoch_end(self) -> None:
        if not self._scores:
            return
        scores, targets = self._collected()
        threshold = self.model.threshold.detach().cpu().double().numpy()
        values = mlc.all_metrics(scores, targets, threshold)
        for name, value in values.items():
            self.log(f"test/{name}", value)
        self._write_test_artifacts(scores, targets, threshold, values)

    # ------------------------------------------------------------ artifacts
    def _run_dir(self) -> Path:
        return Path(self.trainer.default_root_dir)

    def _write_test_artifacts(
        self, scores: np.ndarray, targets: np.ndarray, threshold: np.ndarray, values: dict[str, float]
    ) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return
        run_dir = self._run_dir()
        labels = list(datamodule.labels)
        counts = [datamodule.label_counts.get(label, 0) for label in labels]
        rows = mlc.per_label_report(scores, targets, threshold, labels, counts)
        write_json(run_dir / "per_label_report.json", rows)

        def write_csv(handle: Any) -> None:
            import io

            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            handle.write(text.getvalue().encode())

        atomic_write(run_dir / "per_label_report.csv", write_csv)
        global_threshold = float(self.model.global_threshold)
        summary = {
            "threshold_mode": self.threshold_mode,
            "threshold": float(np.median(threshold)),
            "threshold_range": [float(threshold.min()), float(threshold.max())],
            "global_threshold": global_threshold,
            "at_global_threshold": mlc.all_metrics(scores, targets, global_threshold),
        }
        write_json(run_dir / "test_metrics.json", {**values, **summary})
        try:
            plot_f1_vs_frequency(rows, run_dir / "f1_vs_label_frequency.png")
            if self.heatmap_docs > 0 and getattr(self.model, "head", "") == "kenet":
                self._attention_plots(datamodule, run_dir)
        except (ImportError, RuntimeError, ValueError) as err:
            log.warning("plots skipped: %s", err)

    @torch.no_grad()
    def _attention_plots(self, datamodule: Any, run_dir: Path) -> None:
        from apps.kenet.encoders import load_tokenizer
        from shared_attention import capture_attention

        dataset = datamodule.datasets["val"]
        count = min(self.heatmap_docs, len(dataset))
        loader = datamodule.val_dataloader()
        batch = loader.collate_fn(list(range(count)))
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        was_training = self.model.training
        self.model.eval()
        with capture_attention(self.model) as maps:
            probabilities = torch.sigmoid(self(batch))
        self.model.train(was_training)
        weights = maps.last("doc_attention").mean(dim=1)  # (B, C, L)
        tokenizer = load_tokenizer(datamodule.encoder_path)
        labels = list(datamodule.labels)
        for row in range(count):
            length = int(batch["doc_mask"][row].sum())
            tokens = tokenizer.convert_ids_to_tokens(batch["doc_ids"][row, :length].tolist())
            top = torch.topk(probabilities[row], min(self.heatmap_labels, len(labels))).indices.tolist()
            truth = set(dataset.targets[row])
            names = [("* " if i in truth else "") + labels[i] for i in top]
            plot_attention_heatmap(
                weights[row][top][:, :length].cpu().numpy(),
                tokens,
                names,
                run_dir / f"attention_doc{row}.png",
                title=f"doc→label attention, validation document {row} (* = true label)",
            )
