from __future__ import annotations

import functools

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from apps.common.module import BaseModule
from apps.common.schedulers import WarmupPolynomialDecay
from tests.apps.test_common import _trainer as _plain_trainer


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def _rates(scheduler: WarmupPolynomialDecay, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def test_warmup_then_linear_decay_to_the_end_ratio():
    scheduler = WarmupPolynomialDecay(_optimizer(2.0), total_steps=10, warmup_steps=4, end_ratio=0.1)
    rates = _rates(scheduler, 13)
    expected_warmup = [2.0 * k / 4 for k in (1, 2, 3, 4)]
    # decay over steps 4..10: r = (s - 4) / 6, f = 0.1 + 0.9 (1 - r)
    expected_decay = [2.0 * (0.1 + 0.9 * (1 - (s - 4) / 6)) for s in range(4, 11)]
    assert rates[:4] == pytest.approx(expected_warmup)
    assert rates[4:11] == pytest.approx(expected_decay)
    assert rates[4] == pytest.approx(2.0)  # the peak right after warm-up
    assert rates[10:] == pytest.approx([0.2] * 3)  # stays at end_ratio · lr after total_steps


def test_polynomial_power_and_no_warmup():
    scheduler = WarmupPolynomialDecay(_optimizer(1.0), total_steps=4, power=2.0)
    assert _rates(scheduler, 5) == pytest.approx([1.0, 0.5625, 0.25, 0.0625, 0.0])


def test_warmup_as_a_fraction_of_the_schedule():
    scheduler = WarmupPolynomialDecay(
        _optimizer(1.0), total_steps=50, warmup_steps=None, warmup_fraction=0.08
    )
    assert scheduler.warmup_steps == 4
    assert _rates(scheduler, 5) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"total_steps": None}, "needs total_steps"),
        ({"total_steps": float("inf")}, "unbounded"),
        ({"total_steps": 0}, "total_steps must be >= 1"),
        ({"total_steps": 5, "warmup_steps": 6}, "warmup_steps must be in"),
        ({"total_steps": 5, "warmup_steps": None, "warmup_fraction": 2.0}, "warmup_fraction must be in"),
        ({"total_steps": 5, "power": 0.0}, "power must be > 0"),
        ({"total_steps": 5, "end_ratio": 1.5}, "end_ratio must be in"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WarmupPolynomialDecay(_optimizer(), **kwargs)


class _Module(BaseModule):
    def __init__(self, scheduler) -> None:
        super().__init__(nn.Linear(3, 1), functools.partial(torch.optim.SGD, lr=0.5), scheduler)
        self.rates: list[float] = []

    def training_step(self, batch, batch_idx):
        self.rates.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        x, y = batch
        return ((self.model(x) - y) ** 2).mean()


def _data() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(24, 3, generator=generator), torch.randn(24, 1)), batch_size=4
    )


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    return _plain_trainer(default_root_dir=tmp_path, **kwargs)


def test_base_module_steps_per_update_and_fills_in_the_trainer_step_count(tmp_path):
    factory = functools.partial(WarmupPolynomialDecay, warmup_steps=3, total_steps=None)
    module = _Module(factory)
    _trainer(tmp_path, max_epochs=2).fit(module, _data())
    # 6 batches × 2 epochs = 12 updates: warm-up over 3, then linear decay to 0 at update 12
    expected = [0.5 * k / 3 for k in (1, 2, 3)] + [0.5 * (1 - (s - 3) / 9) for s in range(3, 12)]
    assert module.rates == pytest.approx(expected)
    assert module.trainer.lr_scheduler_configs[0].interval == "step"


def test_an_explicit_total_step_count_is_kept(tmp_path):
    module = _Module(functools.partial(WarmupPolynomialDecay, total_steps=24))
    _trainer(tmp_path, max_epochs=1).fit(module, _data())
    assert module.rates == pytest.approx([0.5 * (1 - s / 24) for s in range(6)])


def test_epoch_schedulers_are_still_stepped_per_epoch(tmp_path):
    module = _Module(functools.partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.5))
    _trainer(tmp_path, max_epochs=2).fit(module, _data())
    assert module.rates == pytest.approx([0.5] * 6 + [0.25] * 6)


class _StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def test_resumed_training_continues_the_schedule_exactly(tmp_path):
    factory = functools.partial(WarmupPolynomialDecay, warmup_steps=4, total_steps=None)
    whole = _Module(factory)
    _trainer(tmp_path / "whole", max_epochs=3).fit(whole, _data())

    # the same run interrupted after its first epoch (the schedule is sized for all 3), then resumed
    first = _Module(factory)
    trainer = _trainer(tmp_path / "split", max_epochs=3, callbacks=[_StopAfterFirstEpoch()])
    trainer.fit(first, _data())
    checkpoint = tmp_path / "interrupted.ckpt"
    trainer.save_checkpoint(checkpoint)
    second = _Module(factory)
    _trainer(tmp_path / "split", max_epochs=3).fit(second, _data(), ckpt_path=checkpoint)
    assert len(first.rates) == 6 and len(second.rates) == 12
    assert first.rates + second.rates == pytest.approx(whole.rates)
