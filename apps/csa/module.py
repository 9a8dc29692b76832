"""LightningModule for BMN(+SE/CSA): mmaction2's BMN loss, proposals through mmaction2's soft-NMS
post-processing, AR@AN / AUC and detection mAP, and plots of proposals with CSA's temporal attention.

Every variant goes through identical post-processing and the same video-level classifier (fitted
once per run on the training videos), so differences come from the localiser only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from apps.common.module import BaseModule
from apps.csa.metrics import VideoClassifier, detection_metrics, proposal_metrics
from apps.csa.model import BMNCSA

log = logging.getLogger(__name__)


class CSAModule(BaseModule):
    """Training and evaluation of ``BMNCSA``.

    Args:
        plot_videos: validation videos drawn per epoch (ground truth vs top proposals, CSA's temporal
            attention under them) into ``<run>/plots/``; 0 disables.
        plot_proposals: proposals drawn per video.
        attention_lr_scale: learning rate of the attention parameters (CSA's and SE's) as a multiple
            of the optimiser's ``lr`` (the scheduler scales both groups alike).
        attention_weight_decay: weight decay of the attention parameters; None keeps the optimiser's.
            With Adam's coupled L2 decay, a parameter whose loss gradient is far below its decay term
            is driven to zero at about ``lr`` per step (see ``apps.csa.model``).
    """

    def __init__(
        self,
        model: BMNCSA,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        plot_videos: int = 3,
        plot_proposals: int = 5,
        model_config: dict[str, Any] | None = None,
        attention_lr_scale: float = 1.0,
        attention_weight_decay: float | None = None,
    ) -> None:
        super().__init__(model, optimizer, scheduler, model_config)
        if attention_lr_scale <= 0:
            raise ValueError(f"app.module.attention_lr_scale must be > 0, got {attention_lr_scale}")
        if attention_weight_decay is not None and attention_weight_decay < 0:
            raise ValueError(
                f"app.module.attention_weight_decay must be >= 0 or null, got {attention_weight_decay}"
            )
        self.plot_videos = plot_videos
        self.plot_proposals = plot_proposals
        self.attention_lr_scale = attention_lr_scale
        self.attention_weight_decay = attention_weight_decay
        self.classifier: VideoClassifier | None = None
        self._outputs: dict[str, list[tuple[int, list[dict[str, Any]], Tensor | None]]] = {
            "val": [],
            "test": [],
        }

    def optimizer_params(self) -> Any:
        """One group, or two when the attention parameters (CSA, SE) get their own lr / decay."""
        params = super().optimizer_params()
        if self.attention_lr_scale == 1.0 and self.attention_weight_decay is None:
            return params
        attention = [
            p
            for name, p in self.model.named_parameters()
            if p.requires_grad and name.split(".", 1)[0] in ("csa", "se")
        ]
        if not attention:
            return params
        chosen = {id(p) for p in attention}
        group: dict[str, Any] = {"params": attention}
        if self.attention_lr_scale != 1.0:
            lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
            if lr is None:
                raise ValueError("app.module.attention_lr_scale needs the optimiser's lr in its config")
            group["lr"] = lr * self.attention_lr_scale
        if self.attention_weight_decay is not None:
            group["weight_decay"] = self.attention_weight_decay
        return [{"params": [p for p in params if id(p) not in chosen]}, group]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        outputs = self.model(batch["features"])
        losses = self.model.loss(outputs, batch["gt_bbox"])
        size = batch["features"].shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=size)
        return losses["loss"]

    # ------------------------------------------------------------------ evaluation
    def _datamodule(self) -> Any:
        return self.trainer.datamodule

    def _ensure_classifier(self) -> VideoClassifier:
        if self.classifier is None:
            features, labels = self._datamodule().video_level_training_set()
            self.classifier = VideoClassifier(seed=0).fit(features, labels)
        return self.classifier

    def _eval_step(self, stage: str, batch: dict[str, Any]) -> None:
        dm = self._datamodule()
        outputs = self.model.forward_with_attention(batch["features"])
        videos = [dm.splits[stage].videos[i] for i in batch["index"].tolist()]
        has_boxes = [len(b) > 0 for b in batch["gt_bbox"]]
        if all(has_boxes):
            losses = self.model.loss(outputs, batch["gt_bbox"])
            self.log(f"{stage}/loss", losses["loss"], batch_size=len(videos))
        infos = [{"duration_frame": v.duration_frame, "duration_second": v.duration_second} for v in videos]
        proposals = self.model.proposals(outputs.confidence_map, outputs.start, outputs.end, infos)
        temporal = outputs.temporal_weights
        for row, (index, props) in enumerate(zip(batch["index"].tolist(), proposals)):
            self._outputs[stage].append((index, props, None if temporal is None else temporal[row].cpu()))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _finish(self, stage: str) -> dict[str, float]:
        collected = self._outputs[stage]
        self._outputs[stage] = []
        if not collected or self.trainer.sanity_checking:
            return {}
        dm = self._datamodule()
        split = dm.splits[stage]
        ground_truth, labelled, proposals, features = {}, {}, {}, []
        for index, props, _ in collected:
            video = split.videos[index]
            ground_truth[video.name] = np.array([[s.start, s.end] for s in video.segments]).reshape(-1, 2)
            labelled[video.name] = [(s.start, s.end, dm.classes.index(s.label)) for s in video.segments]
            proposals[video.name] = props
            features.append(split.features[index])
        probs = self._ensure_classifier().predict_proba(np.stack(features))
        classes_seen = self.classifier.model.classes_
        video_probs = {}
        for row, (index, _, _) in enumerate(collected):
            full = np.zeros(len(dm.classes))
            full[classes_seen] = probs[row]
            video_probs[split.videos[index].name] = full
        report = proposal_metrics(ground_truth, proposals)
        report.update(detection_metrics(labelled, proposals, video_probs, len(dm.classes)))
        report["video_acc"] = float(
            np.mean(
                [
                    np.argmax(video_probs[n]) == (lab[0][2] if lab else -1)
                    for n, lab in labelled.items()
                    if lab
                ]
            )
        )
        for name, value in report.items():
            self.log(f"{stage}/{name}", value, prog_bar=name in ("AUC", "avg_mAP_anet"))
        if self.plot_videos and stage == "val":
            self._plot(collected, split)
        return report

    def _plot(self, collected: list, split: Any) -> None:
        from apps.csa.plots import plot_proposals

        folder = Path(self.trainer.default_root_dir) / "plots"
        items = []
        for index, props, temporal in collected[: self.plot_videos]:
            items.append((split.videos[index], props[: self.plot_proposals], temporal))
        path = plot_proposals(items, folder / f"proposals_epoch{self.current_epoch:03d}.png")
        log.info("wrote %s", path)

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_end(self) -> None:
        self._finish("test")
