"""LightningModule for Pointer Networks: supervised or REINFORCE training, constrained decoding
(greedy, beam, sampling), task metrics and plots of predictions."""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from apps.common.module import BaseModule
from apps.ptrnet import metrics as task_metrics
from apps.ptrnet.data import IGNORE_INDEX
from apps.ptrnet.decoding import (
    STRATEGIES,
    decode,
    decoding_task,
    greedy_decode,
    positions_to_indices,
    sample_rollout,
    tour_lengths,
)
from apps.ptrnet.formats import normalize_task

log = logging.getLogger(__name__)

OBJECTIVES = ("supervised", "reinforce")
DECODE_DEFAULTS: dict[str, Any] = {
    "strategy": "greedy",
    "beam_width": 5,
    "length_penalty": 0.0,
    "num_samples": 16,
    "temperature": 1.0,
    "seed": 0,
}
REINFORCE_DEFAULTS: dict[str, Any] = {
    "baseline_size": 1000,
    "baseline_batch_size": 500,
    "significance": 0.05,
    "temperature": 1.0,
    "n": None,
    "seed": 0,
}


def _options(given: Mapping[str, Any] | None, defaults: dict[str, Any], key: str) -> dict[str, Any]:
    options = dict(defaults)
    for name, value in dict(given or {}).items():
        if name not in defaults:
            raise ValueError(f"{key}.{name}: unknown option; expected one of {sorted(defaults)}")
        options[name] = value
    return options


class PointerNetModule(BaseModule):
    """Trains a `PointerNet` and evaluates it with the paper's metrics.

    Objectives (`objective`):

    - `supervised` (the paper's protocol): cross-entropy on the target pointer sequences.
    - `reinforce` (TSP only; Kool et al., 2019, Alg. 1): policy gradient
      `∇L = E[(L(π) - b(s)) ∇ log p(π|s)]` with a sampled tour `π` and the greedy tour length of a
      frozen baseline policy `b(s)`. After every epoch the policy and the baseline decode a held-out
      set greedily; when the policy is better with a one-sided paired t-test at `significance`, the
      baseline takes its weights and a fresh held-out set is drawn.

    Validation and test decode with `decode.strategy` (`greedy`, `beam` with `beam_width` and
    `length_penalty`, `sample` with `num_samples` and `temperature`, best-of-k by tour length for
    TSP) under the task's constraints and log: convex hull — exact-match accuracy (`exact`), area
    coverage, failure rate; Delaunay — exact and triangle coverage; TSP — mean tour length, gap to
    the reference tours, validity. With `plot_examples > 0` a PNG of predicted vs reference
    structures is written to `<run>/plots/` after every validation epoch.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        task: str = "convex_hull",
        scheduler: Callable[..., Any] | None = None,
        model_config: dict[str, Any] | None = None,
        decode: Mapping[str, Any] | None = None,
        objective: str = "supervised",
        reinforce: Mapping[str, Any] | None = None,
        plot_examples: int = 4,
    ) -> None:
        super().__init__(model, optimizer, scheduler, model_config)
        self.task = normalize_task(task)
        self.decoding = decoding_task(self.task)
        self.decode_options = _options(decode, DECODE_DEFAULTS, "app.module.decode")
        if self.decode_options["strategy"] not in STRATEGIES:
            raise ValueError(
                f"app.module.decode.strategy: unknown strategy {self.decode_options['strategy']!r}; "
                f"expected one of {STRATEGIES}"
            )
        if objective not in OBJECTIVES:
            raise ValueError(
                f"app.module.objective: unknown objective {objective!r}; expected one of {OBJECTIVES}"
            )
        if objective == "reinforce" and self.task != "tsp":
            raise ValueError(
                f"app.module.objective=reinforce needs app.data.task=tsp (the tour length is the reward), "
                f"got {self.task!r}"
            )
        if (
            self.task == "delaunay"
            and getattr(model, "decoder_kind", None) == "attention"
            and model.mask_visited
        ):
            raise ValueError(
                "app.model.mask_visited must be false for Delaunay with the attention decoder: "
                "triangles reuse points, so visited points must stay selectable"
            )
        self.objective = objective
        self.reinforce_options = _options(reinforce, REINFORCE_DEFAULTS, "app.module.reinforce")
        self.plot_examples = int(plot_examples)
        self.baseline: nn.Module | None = None
        if objective == "reinforce":
            self.baseline = copy.deepcopy(model).requires_grad_(False).eval()
        self._holdout: torch.Tensor | None = None
        self._holdout_round = 0
        self._plot_batch: dict[str, list] = {}

    def forward(self, points: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.model(points, lengths, target)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.model.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["points"], batch["lengths"], batch["target"])
        loss = F.cross_entropy(logits.flatten(0, 1), batch["target"].flatten(), ignore_index=IGNORE_INDEX)
        return loss, logits

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.objective == "reinforce":
            return self._reinforce_step(batch)
        loss, logits = self._loss(batch)
        batch_size = batch["points"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        keep = batch["target"] != IGNORE_INDEX
        token_accuracy = (logits.argmax(-1)[keep] == batch["target"][keep]).float().mean()
        self.log("train/token_acc", token_accuracy, prog_bar=True, batch_size=batch_size)
        return loss

    # ---------------------------------------------------------------------------------------- REINFORCE

    def _reinforce_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """One policy-gradient step with the greedy-rollout baseline (Kool et al., 2019, Alg. 1)."""
        points, lengths = batch["points"], batch["lengths"]
        positions, log_likelihood = sample_rollout(
            self.model, points, lengths, "tsp", temperature=self.reinforce_options["temperature"]
        )
        cost = tour_lengths(points, positions)
        assert self.baseline is not None
        self.baseline.eval()
        with torch.no_grad():
            baseline_cost = tour_lengths(points, greedy_decode(self.baseline, points, lengths, "tsp"))
        advantage = (cost - baseline_cost).detach()
        loss = (advantage * log_likelihood).mean()
        batch_size = points.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/cost", cost.mean(), prog_bar=True, batch_size=batch_size)
        self.log("train/baseline_cost", baseline_cost.mean(), batch_size=batch_size)
        if self.reinforce_options["n"] is None:
            self.reinforce_options["n"] = int(points.shape[1])
        return loss

    def _draw_holdout(self) -> torch.Tensor:
        n = self.reinforce_options["n"]
        generator = torch.Generator().manual_seed(
            int(self.reinforce_options["seed"]) * 7919 + self._holdout_round
        )
        self._holdout_round += 1
        return torch.rand(int(self.reinforce_options["baseline_size"]), int(n), 2, generator=generator)

    @torch.no_grad()
    def _greedy_costs(self, model: nn.Module, points: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        costs = []
        size = int(self.reinforce_options["baseline_batch_size"])
        for chunk in points.split(size):
            chunk = chunk.to(self.device)
            lengths = torch.full((chunk.shape[0],), chunk.shape[1], dtype=torch.long, device=self.device)
            costs.append(tour_lengths(chunk, greedy_decode(model, chunk, lengths, "tsp")).cpu())
        model.train(was_training)
        return torch.cat(costs)

    def on_train_epoch_end(self) -> None:
        if self.objective != "reinforce" or self.reinforce_options["n"] is None:
            return
        assert self.baseline is not None
        if self._holdout is None:
            self._holdout = self._draw_holdout()
        policy = self._greedy_costs(self.model, self._holdout).double().numpy()
        baseline = self._greedy_costs(self.baseline, self._holdout).double().numpy()
        better = policy.mean() < baseline.mean()
        p_value = float(stats.ttest_rel(policy, baseline).pvalue) / 2 if better else 1.0
        updated = better and p_value < float(self.reinforce_options["significance"])
        if updated:
            self.baseline.load_state_dict(self.model.state_dict())
            self._holdout = self._draw_holdout()
        log.info(
            "epoch %d: hold-out greedy cost policy %.4f, baseline %.4f, one-sided p = %.3g -> baseline %s",
            self.current_epoch,
            policy.mean(),
            baseline.mean(),
            p_value,
            "updated" if updated else "kept",
        )
        self.log("train/holdout_policy_cost", float(policy.mean()))
        self.log("train/holdout_baseline_cost", float(baseline.mean()))
        self.log("train/baseline_updated", float(updated))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.objective == "reinforce":
            n = self.reinforce_options["n"]
            checkpoint["ptrnet_reinforce"] = {
                "holdout_round": self._holdout_round,
                "n": -1 if n is None else n,
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("ptrnet_reinforce")
        if self.objective != "reinforce" or saved is None:
            return
        if int(saved["n"]) > 0:
            self.reinforce_options["n"] = int(saved["n"])
            self._holdout_round = max(int(saved["holdout_round"]) - 1, 0)
            self._holdout = self._draw_holdout() if saved["holdout_round"] > 0 else None

    # ---------------------------------------------------------------------------------------- evaluation

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def predict_positions(
        self, points: torch.Tensor, lengths: torch.Tensor, batch_idx: int = 0
    ) -> torch.Tensor:
        """Decode `points (B, N, 2)` with the configured strategy → `(B, T)` pointer positions."""
        options = dict(self.decode_options)
        options["seed"] = int(options["seed"]) * 100_003 + batch_idx
        return decode(self.model, points, lengths, self.decoding, **options)

    def _evaluate(self, batch: dict[str, Any], batch_idx: int, stage: str) -> None:
        loss, _ = self._loss(batch)
        batch_size = batch["points"].shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=batch_size)
        positions = self.predict_positions(batch["points"], batch["lengths"], batch_idx)
        predictions = positions_to_indices(positions.cpu())
        for name, value in self.sequence_metrics(batch["examples"], predictions).items():
            self.log(f"{stage}/{name}", value, prog_bar=name in ("exact", "gap"), batch_size=batch_size)
        if batch_idx == 0 and self.plot_examples > 0:
            keep = min(self.plot_examples, batch_size)
            self._plot_batch[stage] = [batch["examples"][:keep], predictions[:keep]]

    def _write_plot(self, stage: str, name: str) -> None:
        if stage not in self._plot_batch or self.trainer.sanity_checking:
            return
        from apps.ptrnet.plots import plot_predictions

        examples, predictions = self._plot_batch.pop(stage)
        path = Path(self.trainer.default_root_dir) / "plots" / name
        plot_predictions(
            path,
            self.task,
            [ex.points for ex in examples],
            predictions,
            [list(ex.target) for ex in examples],
            title=f"{self.task} {stage}, epoch {self.current_epoch} ({self.decode_options['strategy']})",
        )
        log.info("wrote %s", path)

    def on_validation_epoch_end(self) -> None:
        self._write_plot("val", f"val_epoch{self.current_epoch:03d}.png")

    def on_test_epoch_end(self) -> None:
        self._write_plot("test", "test.png")

    def on_test_end(self) -> None:
        metrics = {
            name: float(value)
            for name, value in self.trainer.callback_metrics.items()
            if name.startswith("test/")
        }
        log.info("test metrics: %s", json.dumps(metrics, sort_keys=True))

    def sequence_metrics(self, examples: list, predictions: list[list[int]]) -> dict[str, float]:
        """Mean task metrics of decoded `predictions` against the examples' targets."""
        points = [ex.points for ex in examples]
        targets = [list(ex.target) for ex in examples]
        if self.task == "convex_hull":
            scores = task_metrics.batch_hull_metrics(points, predictions, targets)
            return {k: float(v) for k, v in scores.items() if k != "count"}
        if self.task == "tsp":
            scores = task_metrics.batch_tsp_metrics(points, predictions, targets)
            return {k: float(v) for k, v in scores.items() if k != "count"}
        rows = [task_metrics.delaunay_metrics(p, y, t) for p, y, t in zip(points, predictions, targets)]
        out = {}
        for key in rows[0]:
            values = np.array([row[key] for row in rows], dtype=np.float64)
            finite = values[np.isfinite(values)]
            out[key] = float(finite.mean()) if finite.size else math.nan
        return out
