"""Training options of the IR-Diffusion module: loose-box classifier crops, classifier-only training."""

from __future__ import annotations

from functools import partial

import torch

from apps.irdiffusion.model import IRDiffusionModel
from apps.irdiffusion.module import IRDiffusionModule, scale_jitter
from tests.apps.irdiffusion.conftest import TINY_MODEL


def test_scale_jitter_enlarges_boxes_about_their_centres():
    torch.manual_seed(0)
    boxes = torch.tensor([[[2.0, 4.0, 8.0, 6.0], [10.0, 10.0, 14.0, 16.0]]]).repeat(64, 1, 1)
    jittered = scale_jitter(boxes, 1.0)
    size, new_size = boxes[..., 2:] - boxes[..., :2], jittered[..., 2:] - jittered[..., :2]
    assert torch.allclose((jittered[..., :2] + jittered[..., 2:]) / 2, (boxes[..., :2] + boxes[..., 2:]) / 2)
    ratio = new_size / size
    assert (ratio >= 1).all() and (ratio <= 2).all() and ratio.std() > 0.1
    assert not torch.allclose(ratio[..., 0], ratio[..., 1])  # independent per axis


def test_classifier_only_training_from_a_checkpoint(tiny_datamodule, tmp_path):
    overrides = {**tiny_datamodule.model_overrides(), **TINY_MODEL}
    torch.manual_seed(0)
    trained = IRDiffusionModel(**overrides)
    path = tmp_path / "trained.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}}, path)
    torch.manual_seed(1)
    module = IRDiffusionModule(
        IRDiffusionModel(**overrides),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        train_parts="classifier",
        init_weights=str(path),
        box_scale_jitter=1.0,
    )
    for key, value in trained.state_dict().items():
        assert torch.equal(module.model.state_dict()[key], value), key
    assert {id(p) for p in module.optimizer_params()} == {id(p) for p in module.model.classifier.parameters()}
    module.train()
    batch = next(iter(tiny_datamodule.train_dataloader()))
    losses = module._losses(batch)
    assert losses["diffusion"] == 0
    losses["loss"].backward()
    assert all(p.grad is None for p in module.model.unet.parameters())
    assert all(p.grad is None for p in module.model.text_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.classifier.parameters())
    module.eval()
    assert module._losses(batch)["diffusion"] > 0  # validation still reports the diffusion loss


def test_reference_training_denoises_scenes_with_their_references(tmp_path):
    import pytest

    from apps.irdiffusion.data import IRDiffusionDataModule
    from tests.apps.irdiffusion.conftest import TINY_GENERATOR

    dm = IRDiffusionDataModule(
        str(tmp_path / "data"), generator=TINY_GENERATOR, batch_size=8, eval_batch_size=8, references=True
    )
    dm.prepare_data()
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["ref_image"].shape == (8, 2, 3, 16, 16)
    # the references are fixed per scene (same item twice, same images)
    item = dm.splits["train"][0]
    assert torch.equal(item["ref_image"], dm.splits["train"][0]["ref_image"])
    assert "ref_image" not in dm.splits["test"][0]
    overrides = {**dm.model_overrides(), **TINY_MODEL}
    torch.manual_seed(0)
    module = IRDiffusionModule(
        IRDiffusionModel(**overrides),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        reference_training=1.0,
        attention_backend="math",
    )
    module.train()
    calls = []
    original = module._group_errors

    def spy(*args, **kwargs):
        errors = original(*args, **kwargs)
        calls.append(errors.shape[0])
        return errors

    module._group_errors = spy
    losses = module._losses(batch)
    multi = int((batch["num_subjects"] >= 2).sum())
    assert multi > 0 and calls == [3 * multi]  # two references + the scene per two-subject scene
    losses["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.unet.parameters())
    assert not module._ir_state.active  # processors off again after the grouped forward
    module.eval()
    with torch.no_grad():
        val = module._losses(batch, torch.Generator().manual_seed(0))
    assert val["loss_multi_plain"] > 0 and val["loss_multi_refs"] > 0
    assert not torch.isclose(val["loss_multi_plain"], val["loss_multi_refs"])
    # without reference images the option fails naming the data key
    del batch["ref_image"]
    module.train()
    with pytest.raises(ValueError, match="app.data.references"):
        module._losses(batch)
    with pytest.raises(ValueError, match="reference_variant"):
        IRDiffusionModule(IRDiffusionModel(**overrides), optimizer=None, reference_variant="vanilla")
    with pytest.raises(ValueError, match="reference_timesteps"):
        IRDiffusionModule(IRDiffusionModel(**overrides), optimizer=None, reference_timesteps="higher")


def test_lower_reference_timesteps_never_exceed_the_scene_timestep(tiny_datamodule, monkeypatch):
    from apps.irdiffusion.data import IRDiffusionDataModule

    dm = IRDiffusionDataModule(
        tiny_datamodule.data_dir, generator=tiny_datamodule.generator.__dict__, batch_size=8, references=True
    )
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    module = IRDiffusionModule(
        IRDiffusionModel(**{**dm.model_overrides(), **TINY_MODEL}),
        optimizer=None,
        reference_training=1.0,
        reference_timesteps="lower",
        attention_backend="math",
    )
    seen = []
    forward = module.model.forward

    def spy(sample, timestep, tokens):
        seen.append(timestep.clone())
        return forward(sample, timestep, tokens)

    monkeypatch.setattr(module.model, "forward", spy)
    module.train()
    module._losses(batch)
    multi = int((batch["num_subjects"] >= 2).sum())
    grouped = seen[-1].view(multi, 3)  # [ref_1, ref_2, scene] per two-subject scene
    assert (grouped[:, :2] <= grouped[:, 2:]).all() and (grouped[:, :2] < grouped[:, 2:]).any()
