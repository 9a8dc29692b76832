"""Checkpoint I/O, callbacks, config safety and samplers shared by the apps."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from apps.common.callbacks import FiniteLossGuard, NonFiniteLossError, RNGStateCallback
from apps.common.config import check_trusted_targets
from apps.common.data import EpochSeededSampler
from apps.common.io import AtomicCheckpointIO, atomic_write, load_checkpoint


class NotAllowed:
    """A class torch.load(weights_only=True) must refuse to unpickle."""


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "state.bin"
    atomic_write(target, lambda handle: handle.write(b"old"))

    def broken(handle):
        handle.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_checkpoint_io_round_trip_and_weights_only(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, path)
    loaded = io.load_checkpoint(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["state_dict"]["w"], torch.ones(2))

    torch.save({"obj": NotAllowed()}, tmp_path / "unsafe.ckpt")
    with pytest.raises(RuntimeError, match="unsafe.ckpt"):
        load_checkpoint(tmp_path / "unsafe.ckpt")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_untrusted_targets_are_refused():
    check_trusted_targets(
        {"_target_": "apps.ptrnet.model.PointerNet", "encoder": {"_target_": "shared_attention.X"}}
    )
    with pytest.raises(ValueError, match=r"model_config\.encoder.*os\.system"):
        check_trusted_targets(
            {"_target_": "apps.x.Y", "encoder": {"_target_": "os.system"}}, where="model_config"
        )


class _Regression(pl.LightningModule):
    def __init__(self, poison_at: int | None = None) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)
        self.poison_at = poison_at

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = ((self.layer(x) - y) ** 2).mean()
        if self.poison_at is not None and self.global_step >= self.poison_at:
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_non_finite_loss_stops_with_clear_message():
    data = DataLoader(TensorDataset(torch.randn(32, 3), torch.randn(32, 1)), batch_size=4)
    trainer = _trainer(max_epochs=1, callbacks=[FiniteLossGuard()])
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at epoch 0, global step 3"):
        trainer.fit(_Regression(poison_at=2), data)


def test_rng_state_round_trip():
    callback = RNGStateCallback()
    state = callback.state_dict()
    expected = (torch.rand(3), __import__("numpy").random.rand(2), __import__("random").random())
    torch.rand(5)
    callback.load_state_dict(state)
    again = (torch.rand(3), __import__("numpy").random.rand(2), __import__("random").random())
    assert torch.equal(expected[0], again[0])
    assert (expected[1] == again[1]).all() and expected[2] == again[2]


def test_epoch_seeded_sampler_depends_only_on_seed_and_epoch():
    data = list(range(50))
    a, b = EpochSeededSampler(data, seed=7), EpochSeededSampler(data, seed=7)
    torch.rand(10)  # global RNG use must not matter
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) and sorted(a) == data
    b.set_epoch(4)
    assert list(a) != list(b)
    assert list(EpochSeededSampler(data, seed=7, shuffle=False)) == data
