"""Base LightningModule: optimiser/scheduler from config, model config stored in checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn


class BaseModule(pl.LightningModule):
    """Holds a plain `nn.Module` (`self.model`) and builds the optimiser from Hydra partials.

    `model_config` (the resolved `app.model` node) is written into every checkpoint under
    `model_config`, so export and evaluation can rebuild the model without the original overrides.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        model_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.model_config = model_config

    def optimizer_params(self) -> Any:
        """What the optimiser gets: the trainable parameters (override for parameter groups)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.optimizer_params())
        if self.scheduler_factory is None:
            return optimizer
        kwargs: dict[str, Any] = {}
        if _wants_total_steps(self.scheduler_factory):
            kwargs["total_steps"] = self.trainer.estimated_stepping_batches
        scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
        # schedulers that count optimiser updates say so (apps.common.schedulers); others are
        # stepped once per epoch
        interval = getattr(scheduler, "interval", "epoch")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model_config is not None:
            checkpoint["model_config"] = self.model_config


def _wants_total_steps(factory: Callable[..., Any]) -> bool:
    """Whether a scheduler partial asks for the trainer's step count and was not given one."""
    cls = getattr(factory, "func", factory)
    if not getattr(cls, "needs_total_steps", False):
        return False
    return getattr(factory, "keywords", {}).get("total_steps") is None


def model_state_dict(checkpoint: dict[str, Any], prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The plain model's weights out of a Lightning checkpoint's `state_dict`."""
    state = checkpoint.get("state_dict")
    if state is None:
        raise KeyError("checkpoint has no `state_dict`")
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
