"""LightningModule of HuBERT / HuBERTopic pretraining, with frozen-feature probes as its test loop.

Loss (every term a mean, so λ weighs comparable scales):

    L = L_mask + w_u · L_unmask + w_f · feature_penalty + λ · L_topic + λ₂ · L_topic2

- `L_mask`: HuBERT's masked prediction, cross-entropy over the cosine-similarity logits of
  torchaudio's logit generator, mean over masked frames of the batch;
- `L_unmask`: the same over unmasked frames (`unmasked_weight`, 0 in HuBERT);
- `feature_penalty`: mean square of the conv features (`feature_penalty_weight`, 10 in fairseq);
- `L_topic`: HuBERTopic's topic classification, mean over utterances: cross-entropy with the hard
  topic label, or with the soft LDA distribution θ_u (`−Σ_t θ_u,t log p_t`); `λ = topic_weight`
  (0: plain HuBERT). With `topic_ramp_epochs = r > 0`, λ rises linearly from 0 to its value over
  the first r epochs of training (per step), so masked prediction learns first; with
  `topic_decay_epochs = d > 0` it falls linearly to 0 over the last d epochs.
- `L_topic2`: the same for the labels of a second topic model (`app.data.topics.second`), through
  its own head; `λ₂ = second_topic_weight` (null: λ), ramped alike.

Test = the probes of `probes.py` on the test split (every utterance with speaker / gender / theme /
transcript): utterance probes on mean-pooled features of every layer (headline: `probe_layer`),
the CTC probe on `probe_layer`'s frames, and NMI between topic labels and the facts; with
`probe_weighted`, also SUPERB's form of each probe, on a learnt softmax-weighted sum of all layers.
The run folder gets `probes.json`, `topic_contingency.png` and `probe_scores.png`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apps.common.io import write_json
from apps.common.module import BaseModule
from apps.hubertopic import probes
from apps.hubertopic.plots import plot_probe_scores, plot_topic_contingency

log = logging.getLogger(__name__)

FACTS = ("speaker", "gender", "theme")


def masked_prediction_loss(logits: Tensor | None) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy over frames of torchaudio's logits `(N, K+1)` (target at column 0), and accuracy."""
    if logits is None or logits.shape[0] == 0:
        zero = torch.zeros(())
        return zero, zero
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    loss = F.cross_entropy(logits.float(), target)
    return loss, (logits.argmax(dim=-1) == 0).float().mean()


def topic_loss(topic_logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over utterances: CE with hard labels `(B,)` or soft targets `(B, T)`."""
    if targets.dim() == 1:
        return F.cross_entropy(topic_logits, targets)
    return -(targets * F.log_softmax(topic_logits, dim=-1)).sum(dim=-1).mean()


class HuBERTopicModule(BaseModule):
    """Pretrains `HuBERTopic` and probes its frozen features in `test`.

    Args:
        topic_weight: λ of the topic loss (0: HuBERT).
        topic_ramp_epochs: epochs over which λ rises linearly from 0 (0: λ from the first step).
        topic_decay_epochs: the last epochs of training (`trainer.max_epochs`) over which λ falls
            linearly to 0 (0: no decay), so that masked prediction has the model to itself at the
            end; both topic heads alike.
        second_topic_weight: λ₂ of the second topic model's loss (null: the same as λ); used only
            when the data module has a second topic model.
        unmasked_weight, feature_penalty_weight: see the module docstring.
        probe_layer: Transformer layer (1-based, negative from the end) of the headline probes.
        probe_test_fraction: share of utterances (by a hash of the id) the probes are scored on.
        probe_folds: 0 scores the utterance probes on that share; k >= 2 cross-validates them over
            k folds (by a hash of the id) so that every utterance is scored. The CTC probe always
            uses the hashed split.
        ctc_epochs, ctc_lr, ctc_schedule: training of the linear CTC probe (Adam): epochs, learning
            rate, and `constant` or `cosine` (the rate falls to 0 along a half cosine). The old
            default, 30 epochs at 2e-3 constant, left the head far from converged on the long
            corpus (see the README, "A converged CTC probe"). `ctc_epochs=0` skips the CTC probes.
        ctc_layer_lr_scale: the weighted CTC probe's layer weights learn at this multiple of the
            head's rate (the old probe used 10).
        probe_weighted: also run every probe in SUPERB's form, on a learnt softmax-weighted sum of
            all Transformer layers (`test/<probe>_weighted`, layer weights in `probes.json`).
        probe_ctc_per_layer: also fit the CTC probe on every layer (`per_layer_cer` in `probes.json`).
        utterance_probes: run the speaker / gender / theme probes (false: only the CTC probes and
            NMI, e.g. to re-probe character recognition of old checkpoints with other probe settings).
        plots: write the PNG plots after testing.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        model_config: dict[str, Any] | None = None,
        topic_weight: float = 0.0,
        topic_ramp_epochs: float = 0.0,
        topic_decay_epochs: float = 0.0,
        second_topic_weight: float | None = None,
        unmasked_weight: float = 0.0,
        feature_penalty_weight: float = 10.0,
        probe_layer: int = -1,
        probe_test_fraction: float = 0.25,
        probe_folds: int = 0,
        ctc_epochs: int = 100,
        ctc_lr: float = 1e-2,
        ctc_schedule: str = "cosine",
        ctc_layer_lr_scale: float = 1.0,
        probe_weighted: bool = False,
        probe_ctc_per_layer: bool = False,
        utterance_probes: bool = True,
        plots: bool = True,
    ) -> None:
        super().__init__(model, optimizer, scheduler, model_config)
        if topic_ramp_epochs < 0:
            raise ValueError(f"app.module.topic_ramp_epochs must be >= 0, got {topic_ramp_epochs}")
        self.topic_weight = topic_weight
        self.topic_ramp_epochs = topic_ramp_epochs
        if topic_decay_epochs < 0:
            raise ValueError(f"app.module.topic_decay_epochs must be >= 0, got {topic_decay_epochs}")
        self.topic_decay_epochs = topic_decay_epochs
        self.second_topic_weight = topic_weight if second_topic_weight is None else second_topic_weight
        self.unmasked_weight = unmasked_weight
        self.feature_penalty_weight = feature_penalty_weight
        self.probe_layer = probe_layer
        self.probe_test_fraction = probe_test_fraction
        if probe_folds == 1 or probe_folds < 0:
            raise ValueError(
                f"app.module.probe_folds must be 0 (one hashed split) or >= 2, got {probe_folds}"
            )
        self.probe_folds = probe_folds
        if ctc_schedule not in probes.CTC_SCHEDULES:
            raise ValueError(
                f"app.module.ctc_schedule must be one of {probes.CTC_SCHEDULES}, got {ctc_schedule!r}"
            )
        if ctc_epochs < 0 or ctc_lr <= 0 or ctc_layer_lr_scale <= 0:
            raise ValueError(
                "app.module.ctc_epochs must be >= 0, app.module.ctc_lr and app.module.ctc_layer_lr_scale "
                f"> 0, got {ctc_epochs}, {ctc_lr}, {ctc_layer_lr_scale}"
            )
        self.ctc_epochs = ctc_epochs
        self.ctc_lr = ctc_lr
        self.ctc_schedule = ctc_schedule
        self.ctc_layer_lr_scale = ctc_layer_lr_scale
        self.probe_weighted = probe_weighted
        self.probe_ctc_per_layer = probe_ctc_per_layer
        self.utterance_probes = utterance_probes
        self.plots = plots
        self._collected: dict[str, list[Any]] = {}

    # ------------------------------------------------------------------ training
    def _epoch_progress(self) -> float:
        """Training epochs done so far, fractional (optimizer steps / steps per epoch); from the
        batches of one epoch, so it also holds for runs bounded by `max_time` or `max_steps`."""
        trainer = self._trainer
        batches = trainer.num_training_batches if trainer is not None else float("inf")
        if not math.isfinite(batches) or batches < 1:
            return float("inf")
        steps_per_epoch = max(1.0, batches / trainer.accumulate_grad_batches)
        return self.global_step / steps_per_epoch

    def _max_epochs(self) -> float | None:
        """The trainer's `max_epochs`; None outside a Trainer or when training is not bounded by epochs."""
        trainer = self._trainer
        epochs = getattr(trainer, "max_epochs", None) if trainer is not None else None
        return float(epochs) if epochs is not None and epochs > 0 else None

    def current_topic_weight(self, weight: float | None = None) -> float:
        """λ (or `weight`, e.g. λ₂) at this point of training: ramped up over the first
        `topic_ramp_epochs`, down to 0 over the last `topic_decay_epochs`."""
        weight = self.topic_weight if weight is None else weight
        if not self.topic_ramp_epochs and not self.topic_decay_epochs:
            return weight
        progress = self._epoch_progress()
        factor = 1.0
        if self.topic_ramp_epochs:
            factor = min(1.0, progress / self.topic_ramp_epochs)
        total = self._max_epochs() if self.topic_decay_epochs else None
        if total is not None and math.isfinite(progress):
            factor *= min(1.0, max(0.0, (total - progress) / self.topic_decay_epochs))
        return weight * factor

    def losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        out = self.model(batch["waveforms"], batch["units"], batch["lengths"])
        mask_loss, mask_acc = masked_prediction_loss(out["logit_m"])
        unmask_loss, unmask_acc = masked_prediction_loss(out["logit_u"])
        total = mask_loss + self.feature_penalty_weight * out["feature_penalty"]
        if self.unmasked_weight:
            total = total + self.unmasked_weight * unmask_loss
        result = {
            "mask_loss": mask_loss,
            "mask_acc": mask_acc,
            "unmask_acc": unmask_acc,
            "feature_penalty": out["feature_penalty"].detach(),
        }
        heads = (
            ("topic", "topic_logits", "topics", self.topic_weight),
            ("topic2", "topic_logits2", "topics2", self.second_topic_weight),
        )
        for name, output, key, full_weight in heads:
            logits = out.get(output)
            if logits is None or key not in batch:
                continue
            targets = batch[key]
            result[f"{name}_loss"] = topic_loss(logits, targets)
            hard = targets if targets.dim() == 1 else targets.argmax(dim=-1)
            result[f"{name}_acc"] = (logits.argmax(dim=-1) == hard).float().mean()
            weight = self.current_topic_weight(full_weight)
            if weight:
                total = total + weight * result[f"{name}_loss"]
            result[f"{name}_weight"] = torch.tensor(weight)
        result["loss"] = total
        return result

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        if loader is not None and hasattr(loader.dataset, "epoch"):
            loader.dataset.epoch = self.current_epoch

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses = self.losses(batch)
        size = len(batch["utt_ids"])
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=size)
        self.log("train/loss", losses["loss"], batch_size=size, prog_bar=True)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        losses = self.losses(batch)
        size = len(batch["utt_ids"])
        self.log_dict({f"val/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=size)
        self.log("val/loss", losses["loss"], batch_size=size, prog_bar=True)

    # ------------------------------------------------------------------ probes
    @property
    def _ctc_training(self) -> dict[str, Any]:
        return {"epochs": self.ctc_epochs, "lr": self.ctc_lr, "schedule": self.ctc_schedule}

    def on_test_epoch_start(self) -> None:
        self._collected = {"utt_ids": [], "pooled": [], "frames": [], "all_frames": []}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hidden, valid = self.model.extract_features(batch["waveforms"], batch["lengths"])
        pooled = torch.stack([self.model.pool(h, valid) for h in hidden], dim=1)  # (B, layers, D)
        layer = hidden[self.probe_layer - 1 if self.probe_layer > 0 else self.probe_layer]
        self._collected["utt_ids"] += list(batch["utt_ids"])
        self._collected["pooled"].append(pooled.float().cpu().numpy())
        for row in range(layer.shape[0]):
            self._collected["frames"].append(layer[row, : int(valid[row].sum())].float().cpu().numpy())
            if self.probe_weighted or self.probe_ctc_per_layer:  # (layers, F, D)
                frames = torch.stack([h[row, : int(valid[row].sum())] for h in hidden])
                self._collected["all_frames"].append(frames.float().cpu().numpy())

    def on_test_epoch_end(self) -> None:
        datamodule = self.trainer.datamodule
        utt_ids = self._collected["utt_ids"]
        pooled = np.concatenate(self._collected["pooled"]) if utt_ids else np.zeros((0, 0, 0))
        is_test = probes.probe_split(utt_ids, self.probe_test_fraction)
        headline = self.probe_layer - 1 if self.probe_layer > 0 else pooled.shape[1] + self.probe_layer
        metrics: dict[str, float] = {}
        per_layer: dict[str, list[float | None]] = {}
        layer_weights: dict[str, list[float]] = {}
        per_layer_cer: list[float | None] | None = None
        facts = {name: [datamodule.meta.get(u, {}).get(name) for u in utt_ids] for name in FACTS}
        facts = {
            name: values for name, values in facts.items() if utt_ids and all(v is not None for v in values)
        }
        folds = probes.probe_folds(utt_ids, self.probe_folds) if self.probe_folds else None
        for name, values in facts.items() if self.utterance_probes else ():
            scores = [
                probes.cross_validated_probe(pooled[:, layer], values, folds)
                if folds is not None
                else probes.linear_probe(pooled[:, layer], values, is_test)
                for layer in range(pooled.shape[1])
            ]
            per_layer[name] = scores
            if scores[headline] is not None:
                metrics[f"test/{name}_acc"] = scores[headline]
            if self.probe_weighted:
                weighted = (
                    probes.cross_validated_weighted_probe(pooled, values, folds)
                    if folds is not None
                    else probes.weighted_linear_probe(pooled, values, is_test)
                )
                if weighted is not None:
                    metrics[f"test/{name}_acc_weighted"] = weighted[0]
                    layer_weights[name] = [round(float(w), 4) for w in weighted[1]]
        texts = [datamodule.transcripts.get(u) for u in utt_ids]
        if utt_ids and all(texts) and self.ctc_epochs > 0:
            cer = probes.ctc_probe(self._collected["frames"], texts, is_test, **self._ctc_training)
            if cer is not None:
                metrics["test/char_cer"] = cer
            if self.probe_weighted:
                weighted = probes.weighted_ctc_probe(
                    self._collected["all_frames"],
                    texts,
                    is_test,
                    layer_lr_scale=self.ctc_layer_lr_scale,
                    **self._ctc_training,
                )
                if weighted is not None:
                    metrics["test/char_cer_weighted"] = weighted[0]
                    layer_weights["char"] = [round(float(w), 4) for w in weighted[1]]
            if self.probe_ctc_per_layer:
                per_layer_cer = [
                    probes.ctc_probe(
                        [f[layer] for f in self._collected["all_frames"]],
                        texts,
                        is_test,
                        **self._ctc_training,
                    )
                    for layer in range(pooled.shape[1])
                ]
        topic_labels = None
        if datamodule.topics is not None and utt_ids:
            theta = datamodule.topics.as_dict()
            topic_labels = [int(theta[u].argmax()) for u in utt_ids]
            for name, value in probes.topic_nmi(topic_labels, facts).items():
                metrics[f"test/nmi_topic_{name}"] = value
        if getattr(datamodule, "topics2", None) is not None and utt_ids:
            theta2 = datamodule.topics2.as_dict()
            labels2 = [int(theta2[u].argmax()) for u in utt_ids]
            for name, value in probes.topic_nmi(labels2, facts).items():
                metrics[f"test/nmi_topic2_{name}"] = value
        for key, value in metrics.items():
            self.log(key, value)
        report = {
            "metrics": metrics,
            "probe_layer": headline + 1,
            "per_layer_acc": per_layer,
            "layer_weights": layer_weights,
            "per_layer_cer": per_layer_cer,
            "utterances": len(utt_ids),
            "probe_test_utterances": len(utt_ids) if folds is not None else int(is_test.sum()),
            "probe_folds": self.probe_folds,
            "ctc_test_utterances": int(is_test.sum()),
            "ctc_training": {**self._ctc_training, "layer_lr_scale": self.ctc_layer_lr_scale},
            "chance": {name: 1.0 / max(len(set(v)), 1) for name, v in facts.items()},
        }
        out_dir = Path(self.trainer.default_root_dir)
        write_json(out_dir / "probes.json", report)
        if self.plots and utt_ids:
            scores = {k.removeprefix("test/"): v for k, v in metrics.items() if k.endswith("_acc")}
            if "test/char_cer" in metrics:
                scores["char_1-cer"] = max(0.0, 1.0 - metrics["test/char_cer"])
            plot_probe_scores(scores, out_dir / "probe_scores.png")
            if topic_labels is not None and facts:
                plot_topic_contingency(
                    topic_labels,
                    facts,
                    int(datamodule.topics.theta.shape[1]),
                    out_dir / "topic_contingency.png",
                )
        log.info("probes: %s", {k: round(v, 4) for k, v in metrics.items()})
