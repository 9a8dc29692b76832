"""The IR-Diffusion pipeline end to end on a tiny random model; helpers; metrics; export parity."""

from __future__ import annotations

import pytest
import torch

from apps.common.export import export_graphs
from apps.irdiffusion.metrics import (
    colour_histograms,
    paired_differences,
    paired_markdown,
    subject_metrics,
    tighten_boxes,
)
from apps.irdiffusion.pipeline import (
    VARIANTS,
    IRDiffusionPipeline,
    TinyBackend,
    boxes_from_masks,
    foreground_segmenter,
    load_diffusers_backend,
    subject_prompts,
    token_maps,
)


def run_pipeline(model, batch, segmenter=None, variants=VARIANTS, **kwargs):
    pipe = IRDiffusionPipeline(TinyBackend(model), steps=2, guidance_scale=2.0, segmenter=segmenter, **kwargs)
    s = int(batch["num_subjects"].min())
    indices = list(range(batch["tokens"].shape[0]))
    refs = torch.cat(subject_prompts(batch, indices, model.max_length))
    ref_positions = torch.tensor([[1, 2]]).expand(refs.shape[0], 2)
    generation = pipe.run(
        batch["tokens"], refs, batch["subject_tokens"][:, :s], ref_positions, seeds=indices, variants=variants
    )
    return pipe, generation


def test_pipeline_is_deterministic_and_resets_state(tiny_model, test_batch):
    pipe, first = run_pipeline(tiny_model, test_batch)
    assert set(first.images) == set(VARIANTS)
    p = test_batch["tokens"].shape[0]
    assert first.references.shape == (p, 2, 3, 16, 16) and first.target_boxes.shape == (p, 2, 4)
    assert not pipe.state.active and pipe.state.calls == 0 and not pipe.state.record_cross
    _, second = run_pipeline(tiny_model, test_batch)
    for variant in VARIANTS:
        assert torch.equal(first.images[variant], second.images[variant]), variant
    assert not torch.allclose(first.images["vanilla"], first.images["both"])
    _, segmented = run_pipeline(tiny_model, test_batch, segmenter=foreground_segmenter)
    assert segmented.ref_masks.dtype == torch.bool


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_reference_noise_feeds_renoised_references_at_their_own_timestep(tiny_model, test_batch, gamma):
    """reference_noise < 1: reference rows hold the finished references noised to round(γ t), told that t."""
    seen = []
    hook = tiny_model.unet.register_forward_pre_hook(
        lambda module, args: seen.append((args[0].detach().clone(), torch.as_tensor(args[1]).clone()))
    )
    try:
        pipe, generation = run_pipeline(tiny_model, test_batch, variants=("both",), reference_noise=gamma)
    finally:
        hook.remove()
    p, s = generation.references.shape[:2]
    final_pass = seen[-pipe.steps :]  # after the references' and the vanilla scene's passes
    scheduler = TinyBackend(tiny_model).scheduler()
    scheduler.set_timesteps(pipe.steps)
    finished = generation.references.flatten(0, 1) * 2 - 1  # pixel space: latents are the images
    for (x, t), step_t in zip(final_pass, scheduler.timesteps):
        refs = x[: p * (s + 1)].view(p, s + 1, *x.shape[1:])[:, :s].flatten(0, 1)  # the unconditional half
        t = t[: p * (s + 1)].view(p, s + 1)
        t_ref = round(gamma * int(step_t))
        assert (t[:, :s] == t_ref).all() and (t[:, s] == int(step_t)).all()
        difference = (refs - finished).abs().max()
        if t_ref == 0:  # ᾱ_0 < 1: a trace of noise (std about 0.007 under the cosine schedule)
            assert difference < 0.05
        else:
            assert difference > 0.1
    with pytest.raises(ValueError, match="reference_noise"):
        IRDiffusionPipeline(TinyBackend(tiny_model), reference_noise=1.5)


def test_ir_start_runs_the_first_steps_with_plain_attention(tiny_model, test_batch):
    """ir_start: the final pass's first round(ir_start * steps) steps run with the processors paused."""
    active = []

    def record(module, args):  # the processors' shared state, installed by the pipeline
        active.append(next(iter(module.attn_processors.values())).state.active)

    hook = tiny_model.unet.register_forward_pre_hook(record)
    try:
        pipe, generation = run_pipeline(tiny_model, test_batch, variants=("vanilla", "both"), ir_start=0.5)
    finally:
        hook.remove()
    assert pipe.ir_from == 1 and active[-pipe.steps :] == [False, True] and not pipe.state.paused
    assert not torch.allclose(generation.images["vanilla"], generation.images["both"], atol=1e-3)
    # processors paused for every step: each variant is the vanilla scene (same noise, same prompts)
    _, plain = run_pipeline(tiny_model, test_batch, ir_start=1.0)
    for variant in VARIANTS:
        torch.testing.assert_close(plain.images[variant], plain.images["vanilla"], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="ir_start"):
        IRDiffusionPipeline(TinyBackend(tiny_model), ir_start=-0.1)


def test_boxes_token_maps_and_segmenter():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 2:5, 1:3] = True
    boxes = boxes_from_masks(masks)
    assert torch.allclose(boxes[0], torch.tensor([1, 2, 3, 5]) / 8)
    assert torch.allclose(boxes[1], torch.tensor([0.0, 0.0, 1.0, 1.0]))  # empty -> whole image
    probs = torch.zeros(1, 16, 4)
    probs[0, 5, 2] = 1.0  # token 2 attends at pixel (1, 1) of a 4x4 map
    maps = token_maps({(4, 4): probs}, torch.tensor([[[2, -1], [3, -1]]]), (4, 4))
    assert maps.shape == (1, 2, 4, 4) and maps[0, 0].argmax() == 5 and maps[0, 0].max() == 1
    images = torch.full((1, 3, 8, 8), 0.1)
    images[0, :, 3:5, 3:5] = 0.9
    assert foreground_segmenter(images)[0].nonzero().tolist() == [[3, 3], [3, 4], [4, 3], [4, 4]]


def test_missing_local_stable_diffusion_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="local diffusers folder"):
        load_diffusers_backend(None)
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_diffusers_backend(tmp_path / "sd15")


def test_metrics_of_identical_crops(tiny_model):
    images = torch.rand(2, 3, 16, 16)
    refs = images[:, None].repeat(1, 2, 1, 1, 1)
    boxes = torch.tensor([[[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]]).repeat(2, 1, 1)
    scores = subject_metrics(
        tiny_model.classifier, refs, boxes, images, boxes, torch.tensor([[0, 1], [2, 3]])
    )
    assert torch.allclose(scores["feature_similarity"], torch.ones(2), atol=1e-5)
    assert torch.equal(scores["pattern_consistency"], torch.ones(2))
    assert torch.allclose(scores["colour_similarity"], torch.ones(2), atol=1e-5)
    assert ((scores["leakage"] >= 0) & (scores["leakage"] <= 1)).all()
    hist = colour_histograms(torch.rand(3, 3, 6, 6))
    assert torch.allclose(hist.sum(-1)[hist.sum(-1) > 0], torch.ones(int((hist.sum(-1) > 0).sum())))


def _fresh_model(tiny_datamodule):
    from apps.irdiffusion.model import IRDiffusionModel

    from .conftest import TINY_MODEL

    torch.manual_seed(1)
    return IRDiffusionModel(**{**tiny_datamodule.model_overrides(), **TINY_MODEL}).eval()


def test_torchscript_export_parity_with_processors_active(tiny_datamodule, tmp_path):
    model = _fresh_model(tiny_datamodule)
    batch = next(iter(tiny_datamodule.val_dataloader()))
    graph = model.export_graphs(batch)[0]
    from diffusers.models.attention_processor import AttnProcessor2_0

    sample, timestep, tokens = graph.inputs
    with torch.no_grad():
        with_ir = graph.module(*graph.inputs)
    report = export_graphs([graph], tmp_path, ["torchscript"])
    assert report["ok"] and report["graphs"][0]["max_abs_error"][0] < 1e-4
    model.unet.set_attn_processor(AttnProcessor2_0())
    with torch.no_grad():
        plain = model(sample, timestep, tokens)
    s = graph.module.state.num_subjects
    assert torch.allclose(with_ir[:s], plain[:s], atol=1e-5)  # references untouched
    assert not torch.allclose(with_ir[s], plain[s], atol=1e-4)  # the target sees IR


@pytest.mark.slow
def test_onnx_export_parity_with_processors_active(tiny_datamodule, tmp_path):
    model = _fresh_model(tiny_datamodule)
    batch = next(iter(tiny_datamodule.val_dataloader()))
    report = export_graphs(model.export_graphs(batch), tmp_path, ["onnx"])
    assert report["ok"]


def test_token_maps_on_a_high_floor_give_subject_sized_masks(tiny_model):
    # regression: a subject token takes a large share of every pixel's softmax, so the raw map sits on
    # a high floor (here 0.3 everywhere, 0.6 on the subject); max-normalised maps put every pixel
    # above the threshold (whole-image masks and boxes), min-max normalised ones only the subject
    probs = torch.full((1, 64, 4), 0.3)
    subject = torch.zeros(8, 8, dtype=torch.bool)
    subject[2:5, 3:6] = True
    probs[0, subject.flatten(), 2] = 0.6
    maps = token_maps({(8, 8): probs}, torch.tensor([[[2, -1]]]), (8, 8))
    assert maps.min() == 0 and maps.max() == 1
    pipe = IRDiffusionPipeline(TinyBackend(tiny_model), mask_threshold=0.4)
    masks = pipe._masks(torch.zeros(1, 3, 8, 8), maps)
    assert torch.equal(masks[0, 0], subject)
    assert torch.allclose(boxes_from_masks(masks)[0, 0], torch.tensor([3, 2, 6, 5]) / 8)


def test_tightened_judge_boxes(tiny_model):
    images = torch.full((1, 3, 16, 16), 0.1)
    images[0, :, 4:8, 2:6] = 0.9  # subject 0
    images[0, :, 10:14, 10:15] = 0.7  # subject 1
    loose = torch.tensor([[[0.0, 0.0, 0.5, 0.6], [0.5, 0.5, 1.0, 1.0]]])
    tight = tighten_boxes(images, loose)
    assert torch.allclose(tight[0], torch.tensor([[2, 4, 6, 8], [10, 10, 15, 14]]) / 16)
    empty = torch.tensor([[[0.0, 0.9, 0.1, 1.0], [0.5, 0.5, 1.0, 1.0]]])
    assert torch.equal(tighten_boxes(images, empty)[0, 0], empty[0, 0])  # no foreground: box kept
    refs = images[:, None].repeat(1, 2, 1, 1, 1)
    identity = torch.tensor([[0, 1]])
    on_tight = subject_metrics(tiny_model.classifier, refs, tight, images, tight, identity)
    tightened = subject_metrics(tiny_model.classifier, refs, loose, images, loose, identity, tighten=True)
    for name, value in on_tight.items():
        assert torch.allclose(value, tightened[name]), name


def test_paired_differences_compare_variants_scene_by_scene():
    values = {
        "vanilla": {"pattern_consistency": [0.0, 0.5, 1.0, 0.5], "leakage": [0.2, 0.1, 0.3, 0.1]},
        "both": {"pattern_consistency": [0.5, 0.5, 1.0, 1.0], "leakage": [0.1, 0.2, 0.3, 0.0]},
        "isolation": {"pattern_consistency": [0.5, 0.0, 1.0, 0.5], "leakage": [0.1, 0.1, 0.1, 0.1]},
    }
    paired = paired_differences(values)
    assert set(paired) == {"both - vanilla", "both - isolation", "isolation - vanilla"}  # present pairs only
    pc = paired["both - vanilla"]["pattern_consistency"]
    assert pc["mean"] == pytest.approx(0.25)
    assert (pc["better"], pc["worse"], pc["tied"], pc["n"]) == (2, 0, 2, 4)
    assert pc["se"] == pytest.approx(torch.tensor([0.5, 0.0, 0.0, 0.5]).std().item() / 2)
    leak = paired["both - vanilla"]["leakage"]  # lower is better
    assert leak["mean"] == pytest.approx(-0.025)
    assert (leak["better"], leak["worse"], leak["tied"]) == (2, 1, 1)
    table = paired_markdown(paired, ("pattern_consistency", "leakage", "caption_alignment"))
    assert "| both - vanilla | +0.250 ± 0.144 (2/0) |" in table and "caption_alignment" not in table
    with pytest.raises(ValueError, match="different numbers of scenes"):
        paired_differences({"both": {"leakage": [0.1]}, "vanilla": {"leakage": [0.1, 0.2]}})


def test_subjects_drawn_tells_a_missing_subject_from_a_drawn_one(tiny_model):
    images = torch.full((2, 3, 16, 16), 0.1)
    images[:, :, 1:7, 1:7] = 0.9  # subject 0 drawn in both scenes
    images[0, :, 9:15, 9:15] = 0.5  # subject 1 drawn only in scene 0
    images[1, :, 9:10, 9:10] = 0.5  # one stray pixel: under DRAWN_FRACTION of the box
    boxes = torch.tensor([[[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]]).repeat(2, 1, 1)
    refs = images[:, None].repeat(1, 2, 1, 1, 1)
    ids = torch.tensor([[0, 1], [0, 1]])
    for tighten in (False, True):
        scores = subject_metrics(tiny_model.classifier, refs, boxes, images, boxes, ids, tighten=tighten)
        assert scores["subjects_drawn"].tolist() == [1.0, 0.5]


def test_paired_differences_where_every_subject_is_drawn():
    values = {
        "both": {"leakage": [0.0, 0.1, 0.2], "subjects_drawn": [0.5, 1.0, 1.0]},
        "vanilla": {"leakage": [0.4, 0.3, 0.2], "subjects_drawn": [1.0, 1.0, 0.5]},
    }
    everything = paired_differences(values, (("both", "vanilla"),))["both - vanilla"]["leakage"]
    drawn = paired_differences(values, (("both", "vanilla"),), where="subjects_drawn")["both - vanilla"]
    assert everything["n"] == 3 and drawn["leakage"]["n"] == 1
    assert abs(drawn["leakage"]["mean"] + 0.2) < 1e-9 and drawn["leakage"]["better"] == 1
    assert (
        paired_differences(
            {"both": {"leakage": [0.1]}, "vanilla": {"leakage": [0.2]}}, where="subjects_drawn"
        )
        == {}
    )
