"""Tiny models and scenes shared by the IR-Diffusion tests."""

from __future__ import annotations

import pytest
import torch

from apps.irdiffusion.data import IRDiffusionDataModule

TINY_MODEL = {
    "image_size": 16,
    "block_out_channels": (16, 32),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "attention_heads": 2,
    "text_dim": 32,
    "text_layers": 1,
    "text_heads": 2,
    "classifier_width": 8,
    "crop_size": 8,
}
TINY_GENERATOR = {
    "n_train": 24,
    "n_val": 8,
    "n_test": 24,
    "image_size": 16,
    "max_subjects": 2,
    "subject_probs": [0.3, 0.7],
    "min_size": 5,
    "max_size": 7,
}


@pytest.fixture(scope="session")
def tiny_datamodule(tmp_path_factory) -> IRDiffusionDataModule:
    dm = IRDiffusionDataModule(
        str(tmp_path_factory.mktemp("irdiffusion_data")),
        generator=TINY_GENERATOR,
        batch_size=8,
        eval_batch_size=4,
        test_scenes=4,
    )
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.fixture(scope="session")
def tiny_model(tiny_datamodule):
    from apps.irdiffusion.model import IRDiffusionModel

    torch.manual_seed(0)
    return IRDiffusionModel(**{**tiny_datamodule.model_overrides(), **TINY_MODEL}).eval()


@pytest.fixture(scope="session")
def test_batch(tiny_datamodule) -> dict[str, torch.Tensor]:
    return next(iter(tiny_datamodule.test_dataloader()))
