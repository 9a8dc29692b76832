"""IR attention processors: exactness when off, masks vs a slow reference, isolation, reposition, state."""

from __future__ import annotations

import itertools

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from apps.irdiffusion.processors import (
    IRSettings,
    IRState,
    build_layout,
    expand_mask,
    install,
    reposition_grid,
)


def random_layout(p: int = 2, s: int = 3, size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ref_boxes, target_boxes, ref_masks = [], [], torch.zeros(p, s, size, size)
    for scene, subject in itertools.product(range(p), range(s)):
        for boxes in (ref_boxes, target_boxes):
            x0, y0 = (torch.randint(0, size // 2, (2,), generator=g) / size).tolist()
            side = float(torch.randint(4, size // 2, (1,), generator=g)) / size
            boxes.append([x0, y0, x0 + side, y0 + side])
        x0, y0, x1, y1 = (int(round(v * size)) for v in ref_boxes[-1])
        ref_masks[scene, subject, y0:y1, x0:x1] = (torch.rand(y1 - y0, x1 - x0, generator=g) > 0.3).float()
    labels = torch.randint(0, s + 1, (p, size, size), generator=g)
    return {
        "ref_masks": ref_masks,
        "ref_boxes": torch.tensor(ref_boxes).view(p, s, 4),
        "target_labels": labels,
        "target_boxes": torch.tensor(target_boxes).view(p, s, 4),
    }


@pytest.mark.parametrize("isolation,reposition", [(True, True), (True, False), (False, True), (False, False)])
def test_mask_matches_slow_reference(isolation, reposition):
    layout = random_layout()
    state = IRState()
    state.configure(IRSettings(True, isolation, reposition), **layout)
    h = w = 8
    built = build_layout(state, h, w)
    p, s = layout["ref_boxes"].shape[:2]
    n = h * w
    slots = built["ref_index"].shape[-1]
    assert built["mask"].shape == (p, 1, n, n + s * slots) and 0 < slots < n  # only seen tokens are keys
    mask = expand_mask(built, n)[:, 0]
    assert mask.shape == (p, n, n + s * n)
    labels = torch.nn.functional.interpolate(
        layout["target_labels"][:, None].float(), size=(h, w), mode="nearest-exact"
    )
    labels = labels.long().view(p, n)
    if reposition:
        grid, inside = reposition_grid(layout["ref_boxes"], layout["target_boxes"], h, w)
        sampled = torch.nn.functional.grid_sample(
            layout["ref_masks"].view(p * s, 1, 16, 16), grid.view(p * s, h, w, 2), align_corners=False
        ).view(p, s, n)
        visible = (sampled > 0.5) & inside.view(p, s, n)
    else:
        visible = torch.nn.functional.avg_pool2d(layout["ref_masks"], 2).view(p, s, n) > 0.5
    for scene in range(p):
        for q in range(n):
            lq = int(labels[scene, q])
            for k in range(n):
                lk = int(labels[scene, k])
                blocked = isolation and lq > 0 and lk > 0 and lq != lk
                assert bool(mask[scene, q, k]) == (not blocked)
            for subject in range(s):
                for k in range(n):
                    expected = lq == subject + 1 and bool(visible[scene, subject, k])
                    assert bool(mask[scene, q, n + subject * n + k]) == expected
    # the two properties of the issue, stated directly
    own = mask[..., :n]
    q_lab, k_lab = labels[:, :, None], labels[:, None, :]
    if isolation:
        assert not own[(q_lab > 0) & (k_lab > 0) & (q_lab != k_lab)].any()
    refs = mask[..., n:].view(p, n, s, n)
    for subject in range(s):
        assert not refs[:, :, subject][labels != subject + 1].any()


def test_reposition_grid_moves_reference_content_onto_target_box():
    size = 16
    ref = torch.zeros(1, 1, size, size)
    ref[0, 0, 2:6, 1:5] = torch.arange(16.0).view(4, 4) + 1  # a 4x4 patch at x 1..4, y 2..5
    ref_boxes = torch.tensor([[[1, 2, 5, 6]]]) / size
    target_boxes = torch.tensor([[[9, 8, 13, 12]]]) / size
    grid, inside = reposition_grid(ref_boxes, target_boxes, size, size)
    moved = torch.nn.functional.grid_sample(ref, grid.view(1, size, size, 2), align_corners=False)
    assert torch.allclose(moved[0, 0, 8:12, 9:13], ref[0, 0, 2:6, 1:5], atol=1e-5)
    assert moved[0, 0][~inside[0, 0]].abs().max() == 0


def _tiny_attention(dim: int = 16, heads: int = 2):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=dim, heads=heads, dim_head=dim // heads).eval()


def test_inactive_processor_reproduces_diffusers_exactly(tiny_model):
    unet = tiny_model.unet
    x = torch.randn(3, 3, 16, 16)
    context = torch.randn(3, 11, 32)
    t = torch.tensor(321)
    unet.set_attn_processor(AttnProcessor2_0())
    with torch.no_grad():
        expected = unet(x, t, context).sample
        unet.set_attn_processor(AttnProcessor())
        classic = unet(x, t, context).sample
        state = install(unet, backend="sdpa")
        got = unet(x, t, context).sample
    assert torch.equal(got, expected)
    assert torch.allclose(got, classic, atol=1e-5)
    assert state.calls == state.num_layers == len(unet.attn_processors)
    # configured, but every part off: still exact
    layout = random_layout(p=1, s=2, size=16)
    state.configure(IRSettings(False, False, False), **layout)
    with torch.no_grad():
        assert torch.equal(unet(x, t, context).sample, expected)
    unet.set_attn_processor(AttnProcessor2_0())


def test_isolation_blocks_information_between_target_subjects():
    attn = _tiny_attention()
    state = IRState(backend="math")
    s, size = 2, 8
    labels = torch.zeros(1, size, size, dtype=torch.long)
    labels[0, :4, :4] = 1
    labels[0, 4:, 4:] = 2
    ref_masks = torch.zeros(1, s, size, size)
    ref_masks[0, 0, :4, :4] = 1
    ref_masks[0, 1, 4:, 4:] = 1
    boxes = torch.tensor([[[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]])
    state.configure(IRSettings(True, True, True), ref_masks, boxes, labels, boxes)
    processor = install_single(attn, state)
    hidden = torch.randn(s + 1, size * size, 16)
    out = processor(attn, hidden)
    changed = hidden.clone()
    subject2 = (labels[0] == 2).flatten()
    changed[s, subject2] += torch.randn(int(subject2.sum()), 16)  # perturb target subject 2
    out2 = processor(attn, changed)
    subject1 = (labels[0] == 1).flatten()
    assert torch.allclose(out[s, subject1], out2[s, subject1], atol=1e-6)
    assert not torch.allclose(out[s, ~subject1], out2[s, ~subject1])
    # references are computed exactly as without IR
    assert torch.allclose(out[:s], out2[:s])
    # perturbing reference 2 leaves target subject 1 alone but moves target subject 2
    changed = hidden.clone()
    changed[1] += torch.randn(size * size, 16)
    out3 = processor(attn, changed)
    assert torch.allclose(out[s, subject1], out3[s, subject1], atol=1e-6)
    assert not torch.allclose(out[s, subject2], out3[s, subject2])
    # without isolation the subjects see each other
    state.configure(IRSettings(True, False, True), ref_masks, boxes, labels, boxes)
    a = processor(attn, hidden)
    changed = hidden.clone()
    changed[s, subject2] += 1.0
    assert not torch.allclose(a[s, subject1], processor(attn, changed)[s, subject1])


def install_single(attn, state):
    from apps.irdiffusion.processors import IRAttnProcessor

    processor = IRAttnProcessor("attn1", state)
    attn.set_processor(processor)
    return processor


def test_cross_blend_changes_only_subject_regions():
    attn = _tiny_attention()
    state = IRState(backend="math")
    s, size = 2, 4
    labels = torch.zeros(1, size, size, dtype=torch.long)
    labels[0, 0, 0] = 1
    labels[0, 3, 3] = 2
    boxes = torch.tensor([[[0, 0, 0.25, 0.25], [0.75, 0.75, 1, 1]]])
    hidden = torch.randn(s + 1, size * size, 16)
    context = torch.randn(s + 1, 5, 16)
    processor = install_single(attn, state)
    plain = processor(attn, hidden, encoder_hidden_states=context)
    state.configure(
        IRSettings(True, True, True, cross_blend=0.5), torch.ones(1, s, size, size), boxes, labels, boxes
    )
    blended = processor(attn, hidden, encoder_hidden_states=context)
    inside = (labels[0] > 0).flatten()
    assert torch.allclose(blended[:s], plain[:s], atol=1e-6)
    assert torch.allclose(blended[s, ~inside], plain[s, ~inside], atol=1e-6)
    assert not torch.allclose(blended[s, inside], plain[s, inside])


def test_state_resets_between_generations_and_rebuilds_masks():
    state = IRState()
    first = random_layout(p=1, s=2, seed=1)
    second = random_layout(p=1, s=2, seed=2)
    state.configure(IRSettings(), **first)
    mask_first = state.layout(8, 8, torch.device("cpu"))["mask"]
    assert state.layout(8, 8, torch.device("cpu"))["mask"] is mask_first  # cached per resolution
    state.calls = 7
    state.start_recording()
    state.reset()
    assert state.calls == 0 and not state.active and not state.record_cross and state._cache == {}
    state.configure(IRSettings(), **second)
    assert not torch.equal(state.layout(8, 8, torch.device("cpu"))["mask"], mask_first)


def test_extended_variant_shows_every_reference_token_to_every_target_pixel():
    layout = random_layout()
    state = IRState()
    settings = IRSettings.variant("extended")
    assert settings is not None and not (settings.isolation or settings.reposition or settings.route)
    state.configure(settings, **layout)
    mask = build_layout(state, 8, 8)["mask"]
    assert mask.shape == (2, 1, 64, 64 + 3 * 64) and bool(mask.all())
    # the routed variants keep each reference to its own subject's pixels
    state.configure(IRSettings.variant("mutual"), **layout)
    assert not bool(expand_mask(build_layout(state, 8, 8), 64).all())
    # without reference keys nothing is gathered: the target attends to itself only
    state.configure(IRSettings(reference=False, isolation=True, reposition=False), **layout)
    assert build_layout(state, 8, 8)["mask"].shape == (2, 1, 64, 64)


def _dense_target_attention(attn, hidden, state, n):
    """The target's IR self-attention written the slow way: every reference position as a key
    (the hidden states moved onto the target grid when repositioning, then projected), masked by
    the full `(N, N + S * N)` mask."""
    from torch.nn.functional import grid_sample

    s = state.num_subjects
    h = w = int(n**0.5)
    layout = build_layout(state, h, w)
    full = expand_mask(layout, n)[0, 0]
    refs = hidden[:s]
    if state.settings.reposition:
        grid, _ = reposition_grid(state.ref_boxes, state.target_boxes, h, w)
        maps = refs.reshape(s, h, w, -1).permute(0, 3, 1, 2)
        refs = grid_sample(maps, grid[0], mode="bilinear", padding_mode="zeros", align_corners=False)
        refs = refs.permute(0, 2, 3, 1).reshape(s, n, -1)
    heads = attn.heads

    def split(x):
        return x.view(x.shape[0], heads, -1).transpose(0, 1)  # (heads, tokens, head_dim)

    q = split(attn.to_q(hidden[s]))
    keys = torch.cat([attn.to_k(hidden[s]), attn.to_k(refs.reshape(s * n, -1))])
    values = torch.cat([attn.to_v(hidden[s]), attn.to_v(refs.reshape(s * n, -1))])
    scores = (q @ split(keys).transpose(-1, -2)) * attn.scale
    weights = scores.masked_fill(~full, float("-inf")).softmax(dim=-1)
    out = (weights @ split(values)).transpose(0, 1).reshape(n, -1)
    return attn.to_out[0](out)


@pytest.mark.parametrize("variant", ["extended", "mutual", "isolation", "reposition", "both"])
@pytest.mark.parametrize("key_bias", [False, True])
def test_gathered_reference_keys_equal_the_dense_computation(variant, key_bias):
    """Gathering only the seen reference tokens (and sampling keys/values instead of hidden states)
    changes nothing against attending to every reference position under the full mask."""
    torch.manual_seed(0)
    attn = _tiny_attention()
    if key_bias:  # a layer with a key bias takes the project-the-sampled-states path
        attn.to_k.bias = torch.nn.Parameter(torch.randn(attn.to_k.out_features))
    state = IRState(backend="math")
    layout = random_layout(p=1, s=2, size=16, seed=3)
    state.configure(IRSettings.variant(variant), **layout)
    processor = install_single(attn, state)
    hidden = torch.randn(3, 64, 16)
    with torch.no_grad():
        got = processor(attn, hidden)[2]
        expected = _dense_target_attention(attn, hidden, state, 64)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_bilinear_taps_sample_like_grid_sample():
    """Four gathered taps and their weights give `grid_sample`'s bilinear values with zero padding,
    including points near and beyond the border."""
    from apps.irdiffusion.processors import bilinear_taps

    torch.manual_seed(0)
    h, w, d = 5, 7, 3
    maps = torch.randn(2, d, h, w)
    grid = torch.rand(2, 1, 40, 2) * 2.6 - 1.3  # some points fall outside [-1, 1]
    grid[0, 0, :4] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-3.0, -3.0], [0.999, -0.999]])
    expected = torch.nn.functional.grid_sample(
        maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )[:, :, 0].transpose(1, 2)  # (2, 40, d)
    index, weight = bilinear_taps(grid[:, 0], h, w)
    assert index.shape == weight.shape == (2, 40, 4) and index.dtype == torch.long
    tokens = maps.flatten(2).transpose(1, 2)  # (2, h * w, d)
    picked = torch.gather(tokens, 1, index.view(2, 160, 1).expand(2, 160, d)).view(2, 40, 4, d)
    got = (picked * weight[..., None]).sum(dim=2)
    assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()
    assert weight[0, 2].abs().sum() == 0  # a point far outside reads nothing
