"""Callbacks every app uses: non-finite loss guard and the RNG state for exact resume."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or infinite."""


class FiniteLossGuard(pl.Callback):
    """Stop training with a clear message as soon as the loss is NaN or infinite."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training loss is {value} at epoch {trainer.current_epoch}, global step {trainer.global_step}, "
                f"batch {batch_idx}; stopping. Lower the learning rate (app.module.optimizer.lr), enable "
                "gradient clipping (trainer.gradient_clip_val) or check the input data."
            )


class RNGStateCallback(pl.Callback):
    """Save the Python, NumPy and torch RNG states in checkpoints and restore them on resume.

    With epoch-seeded samplers this makes `ckpt_path=...` continue exactly as the uninterrupted run
    (dropout masks included). States are stored as tensors/ints so checkpoints load with
    `weights_only=True`.
    """

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        state: dict[str, Any] = {
            "python": _python_state_to_list(random.getstate()),
            "numpy": {
                "key": torch.from_numpy(np_state[1].astype(np.int64)),
                "pos": int(np_state[2]),
                "has_gauss": int(np_state[3]),
                "cached_gaussian": float(np_state[4]),
            },
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(_python_state_from_list(state_dict["python"]))
        numpy_state = state_dict["numpy"]
        np.random.set_state(
            (
                "MT19937",
                numpy_state["key"].numpy().astype(np.uint32),
                numpy_state["pos"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        )
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def _python_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_list(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
