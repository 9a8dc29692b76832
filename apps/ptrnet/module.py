"""LightningModule for Pointer Networks: supervised training, constrained decoding, task metrics."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from apps.common.module import BaseModule
from apps.ptrnet import metrics as task_metrics
from apps.ptrnet.data import IGNORE_INDEX
from apps.ptrnet.decoding import decoding_task, greedy_decode, positions_to_indices
from apps.ptrnet.formats import normalize_task


class PointerNetModule(BaseModule):
    """Trains a `PointerNet` with cross-entropy on the pointer targets (the paper's protocol).

    Validation and test decode greedily under the task's constraints and log the paper's metrics:
    convex hull — exact-match accuracy (`exact`), area coverage, failure rate; Delaunay — exact and
    triangle coverage; TSP — mean tour length, gap to the reference tours, validity.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        task: str = "convex_hull",
        scheduler: Callable[..., Any] | None = None,
        model_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model, optimizer, scheduler, model_config)
        self.task = normalize_task(task)
        self.decoding = decoding_task(self.task)

    def forward(self, points: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.model(points, lengths, target)

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["points"], batch["lengths"], batch["target"])
        loss = F.cross_entropy(logits.flatten(0, 1), batch["target"].flatten(), ignore_index=IGNORE_INDEX)
        return loss, logits

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, logits = self._loss(batch)
        batch_size = batch["points"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        keep = batch["target"] != IGNORE_INDEX
        token_accuracy = (logits.argmax(-1)[keep] == batch["target"][keep]).float().mean()
        self.log("train/token_acc", token_accuracy, prog_bar=True, batch_size=batch_size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        loss, _ = self._loss(batch)
        batch_size = batch["points"].shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=batch_size)
        positions = greedy_decode(self.model, batch["points"], batch["lengths"], self.decoding)
        predictions = positions_to_indices(positions.cpu())
        for name, value in self.sequence_metrics(batch["examples"], predictions).items():
            self.log(f"{stage}/{name}", value, prog_bar=name in ("exact", "gap"), batch_size=batch_size)

    def sequence_metrics(self, examples: list, predictions: list[list[int]]) -> dict[str, float]:
        """Mean task metrics of decoded `predictions` against the examples' targets."""
        points = [ex.points for ex in examples]
        targets = [list(ex.target) for ex in examples]
        if self.task == "convex_hull":
            scores = task_metrics.batch_hull_metrics(points, predictions, targets)
            return {k: float(v) for k, v in scores.items() if k != "count"}
        rows: list[dict[str, float]] = []
        for pts, pred, tgt in zip(points, predictions, targets):
            if self.task == "tsp":
                rows.append(task_metrics.tsp_metrics(pts, pred, tgt))
            else:
                rows.append(task_metrics.delaunay_metrics(pts, pred, tgt))
        keys = rows[0].keys()
        out = {}
        for key in keys:
            values = np.array([row[key] for row in rows], dtype=np.float64)
            finite = values[np.isfinite(values)]
            out[key] = float(finite.mean()) if finite.size else math.nan
        return out
