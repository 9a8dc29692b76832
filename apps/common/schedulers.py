"""Learning-rate schedules stepped per optimiser update (for apps whose recipes count updates).

`WarmupPolynomialDecay` is the schedule of HuBERT's and wav2vec 2.0's pretraining recipes (fairseq's
``polynomial_decay``): the learning rate rises linearly from 0 to the optimiser's ``lr`` over
``warmup_steps`` updates (or the first ``warmup_fraction`` of them), then falls as ``(1 − r)^power``
to ``end_ratio · lr`` at ``total_steps`` (``r`` the fraction of the decay phase done; HuBERT Base:
32 k warm-up of 400 k updates, power 1, end 0) and stays there. Let ``total_steps`` be ``None`` and `BaseModule` fills in the trainer's
number of optimiser steps (``Trainer.estimated_stepping_batches``), so the same config follows
``max_epochs`` / ``max_steps``.

A scheduler class tells `BaseModule.configure_optimizers` how Lightning must step it through the
``interval`` class attribute (``"step"`` here; schedulers without it are stepped per epoch) and asks
for the step count with ``needs_total_steps``. Its state (the update count) is saved in Lightning's
checkpoints, so a resumed run continues the schedule exactly.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler


class WarmupPolynomialDecay(LRScheduler):
    """Linear warm-up, then polynomial decay, per optimiser update.

    Update ``s`` (0-based, the update about to be made) gets ``lr · f(s)`` with
    ``f(s) = (s + 1) / warmup_steps`` for ``s < warmup_steps`` and, after it,
    ``f(s) = end_ratio + (1 − end_ratio) · (1 − r)^power``, ``r = min(1, (s − warmup_steps) /
    (total_steps − warmup_steps))``.

    Args:
        optimizer: the optimiser whose groups' ``lr`` are the peak rates.
        total_steps: updates of the whole schedule (``None`` is only allowed through `BaseModule`,
            which supplies the trainer's count).
        warmup_steps: updates of the linear warm-up (0: start at the peak; ``None``: use
            ``warmup_fraction``).
        warmup_fraction: the warm-up as a fraction of ``total_steps`` when ``warmup_steps`` is
            ``None`` (HuBERT Base: 32 k of 400 k = 0.08), so one config fits any training length.
        power: exponent of the decay (1: linear, fairseq's default).
        end_ratio: the final rate as a fraction of the peak.
    """

    interval = "step"
    needs_total_steps = True

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int | None = None,
        warmup_steps: int | None = 0,
        warmup_fraction: float = 0.0,
        power: float = 1.0,
        end_ratio: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if total_steps is None:
            raise ValueError(
                "WarmupPolynomialDecay needs total_steps (set scheduler.total_steps, or train through "
                "an app module, which fills in the trainer's number of optimiser steps)"
            )
        if isinstance(total_steps, float) and not math.isfinite(total_steps):
            raise ValueError(
                "WarmupPolynomialDecay: the trainer's step count is unbounded (max_epochs=-1 and no "
                "max_steps): set scheduler.total_steps"
            )
        total_steps = int(total_steps)
        if total_steps < 1:
            raise ValueError(f"WarmupPolynomialDecay: total_steps must be >= 1, got {total_steps}")
        if warmup_steps is None:
            if not 0.0 <= warmup_fraction <= 1.0:
                raise ValueError(
                    f"WarmupPolynomialDecay: warmup_fraction must be in [0, 1], got {warmup_fraction}"
                )
            warmup_steps = round(warmup_fraction * total_steps)
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                f"WarmupPolynomialDecay: warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}"
            )
        if power <= 0:
            raise ValueError(f"WarmupPolynomialDecay: power must be > 0, got {power}")
        if not 0.0 <= end_ratio <= 1.0:
            raise ValueError(f"WarmupPolynomialDecay: end_ratio must be in [0, 1], got {end_ratio}")
        self.total_steps = total_steps
        self.warmup_steps = int(warmup_steps)
        self.power = float(power)
        self.end_ratio = float(end_ratio)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The multiplier of the peak rate for update ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        done = 1.0 if decay_steps == 0 else min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.end_ratio + (1.0 - self.end_ratio) * (1.0 - done) ** self.power

    def get_lr(self) -> list[float]:
        scale = self.factor(self.last_epoch)
        return [base_lr * scale for base_lr in self.base_lrs]
