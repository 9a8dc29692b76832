"""CSA on BMN: the mmaction2 import workaround, the attention variants, CSA's near-identity start,
gradients through the BMN loss, parity of our loss / proposals with mmaction2's BMN, and export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from apps.common.export import export_graphs
from apps.csa import mm
from apps.csa.model import (
    ATTENTIONS,
    BMNCSA,
    BRANCHES,
    FUSIONS,
    HEADS,
    ClassSemanticsAttention,
    SqueezeExcitation1d,
)

ROOT = Path(__file__).resolve().parents[3]
T, C_IN = 16, 32
SMALL = {
    "temporal_dim": T,
    "feat_dim": C_IN,
    "num_samples": 8,
    "num_samples_per_bin": 3,
    "hidden_dim_1d": 32,
    "hidden_dim_2d": 16,
    "hidden_dim_3d": 32,
    "reduction": 4,
    "se_reduction": 4,
}
GT_BBOX = [
    torch.tensor([[0.1, 0.35], [0.5, 0.9]], dtype=torch.float64),
    torch.tensor([[0.0, 0.6]], dtype=torch.float64),
    torch.tensor([[0.2, 0.3], [0.4, 0.55], [0.7, 1.0]], dtype=torch.float64),
]


def _model(attention: str = "csa", **kwargs) -> BMNCSA:
    torch.manual_seed(0)
    return BMNCSA(attention=attention, **{**SMALL, **kwargs})


def _features(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, C_IN, T, generator=torch.Generator().manual_seed(seed))


def test_mmaction_import_placeholder_is_registered_once():
    mmaction = mm.import_mmaction()
    assert mm.import_mmaction() is mmaction
    assert mm.bmn_class().__name__ == "BMN" and mm.bmn_loss_class().__name__ == "BMNLoss"
    for accessor in (
        mm.post_processing_fn,
        mm.soft_nms_fn,
        mm.temporal_iou_fn,
        mm.average_recall_at_avg_proposals_fn,
        mm.average_precision_at_temporal_iou_fn,
        mm.average_precision_detection_fn,
    ):
        assert callable(accessor())
    assert mm.register_drn_placeholder() is False  # already registered, or the wheel has the module
    if mm.drn_is_missing():
        placeholder = sys.modules[mm.DRN_MODULE].DRN
        assert sys.modules["mmaction.models.localizers"].DRN is placeholder
        with pytest.raises(ImportError, match="2714"):
            placeholder()


def test_attention_variants_run_with_bmn_shapes():
    features = _features()
    for attention in ATTENTIONS:
        model = _model(attention).eval()
        out = model.forward_with_attention(features)
        assert out.confidence_map.shape == (3, 2, T, T)
        assert out.start.shape == out.end.shape == (3, T)
        has_csa, has_se = "csa" in attention, "se" in attention
        assert (out.channel_weights is not None) == has_csa and (out.se_weights is not None) == has_se
        if has_csa:
            assert out.channel_weights.shape == (3, 32) and out.temporal_weights.shape == (3, T)
        if has_se:
            assert out.se_weights.shape == (3, 32)
        assert all(((t >= 0) & (t <= 1)).all() for t in model(features))
    with pytest.raises(ValueError, match="attention"):
        BMNCSA(attention="cbam", **SMALL)
    with pytest.raises(ValueError, match=r"\(B, 32, 16\)"):
        _model("none")(torch.randn(2, C_IN, T + 1))


def test_plain_bmn_forward_and_loss_equal_mmaction():
    model = _model("none")
    features = _features()
    ours = model(features)
    theirs = model.bmn._forward(features)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(123)
    loss = model.loss(ours, GT_BBOX)
    samples = [SimpleNamespace(gt_instances={"gt_bbox": box}) for box in GT_BBOX]
    torch.manual_seed(123)
    reference = model.bmn.loss(features, samples)["loss"]
    assert torch.equal(loss["loss"], reference)
    expected = loss["tem_loss"] + 10 * loss["pem_reg_loss"] + loss["pem_cls_loss"]
    torch.testing.assert_close(loss["loss"], expected)
    with pytest.raises(ValueError, match="non-empty"):
        model.targets([torch.zeros(0, 2)])


def test_proposals_equal_bmn_predict():
    model = _model("none").eval()
    features = _features(batch=1, seed=4)
    info = {"video_name": "v_x", "duration_frame": 1000, "duration_second": 40.0}
    with torch.no_grad():
        ours = model.proposals(*model(features), [info])[0]
        theirs = model.bmn.predict(features, [SimpleNamespace(metainfo=info)])[0]["proposal_list"]
    assert ours and ours == theirs


def _csa_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input features ``R (2, 40, 12)`` and encoded features ``F (2, 24, 12)`` for CSA alone."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 40, 12, generator=generator), torch.rand(2, 24, 12, generator=generator)


@pytest.mark.parametrize("residual", [True, False])
def test_csa_starts_near_identity_and_fusions(residual):
    semantics, encoded = _csa_inputs(2)
    for fusion in FUSIONS:
        torch.manual_seed(0)
        csa = ClassSemanticsAttention(40, 24, reduction=4, fusion=fusion, residual=residual)
        attended, channel, temporal = csa(semantics, encoded)
        assert attended.shape == encoded.shape
        assert ((attended - encoded).norm() / encoded.norm()).item() < 0.05, fusion
        a_c, a_t = csa.logits(semantics)
        c, t = channel[:, :, None], temporal[:, None, :]
        fused = torch.sigmoid(a_c[:, :, None] + a_t[:, None, :])
        gate = {  # without the residual, sequential and parallel_mul coincide
            ("sequential", True): (1 + c) * (1 + t),
            ("sequential", False): c * t,
            ("parallel_mul", True): 1 + c * t,
            ("parallel_mul", False): c * t,
            ("parallel_sum", True): 1 + fused,
            ("parallel_sum", False): fused,
            ("parallel_outputs", True): 1 + (c + t) / 2,  # mean of (1 + c) and (1 + t)
            ("parallel_outputs", False): (c + t) / 2,
        }[fusion, residual]
        torch.testing.assert_close(attended, encoded * gate)
    far = ClassSemanticsAttention(40, 24, reduction=4, init_logit=None)
    assert ((far(semantics, encoded)[0] - encoded).norm() / encoded.norm()).item() > 0.05
    se_out, weights = SqueezeExcitation1d(24, 4)(encoded)
    torch.testing.assert_close(se_out, encoded * weights[:, :, None])


def test_centered_gate_starts_at_identity_and_is_steep():
    semantics, encoded = _csa_inputs(3)
    for fusion in FUSIONS:
        torch.manual_seed(0)
        csa = ClassSemanticsAttention(40, 24, reduction=4, fusion=fusion, centered=True)
        assert csa.channel_mlp[-1].bias.abs().max() == 0 and csa.temporal_conv[-1].bias.abs().max() == 0
        attended, channel, temporal = csa(semantics, encoded)
        assert ((attended - encoded).norm() / encoded.norm()).item() < 0.05, fusion
        a_c, a_t = csa.logits(semantics)
        c, t = channel[:, :, None], temporal[:, None, :]
        gate = {  # each gate is w / w0: exactly 1 at zero logits, in (0, 2) or (0, 4)
            "sequential": (2 * c) * (2 * t),
            "parallel_mul": 4 * c * t,
            "parallel_sum": 2 * torch.sigmoid(a_c[:, :, None] + a_t[:, None, :]),
            "parallel_outputs": c + t,  # mean of 2c and 2t: in (0, 2)
        }[fusion]
        torch.testing.assert_close(attended, encoded * gate)
        with torch.no_grad():  # zero logits: the exact identity
            csa.channel_mlp[-1].weight.zero_()
            csa.temporal_conv[-1].weight.zero_()
        torch.testing.assert_close(csa(semantics, encoded)[0], encoded)
    # the gradient reaching the last layers' biases is about 0.5 / 0.018 times the residual start's
    grads = {}
    for centered in (False, True):
        torch.manual_seed(0)
        csa = ClassSemanticsAttention(40, 24, reduction=4, centered=centered)
        csa(semantics, encoded)[0].sum().backward()
        grads[centered] = csa.temporal_conv[-1].bias.grad.abs().item()
    assert grads[True] > 10 * grads[False]
    model = _model("csa", centered=True)
    assert model.csa.centered and model(_features())[0].shape == (3, 2, T, T)


@pytest.mark.parametrize("centered", [False, True])
def test_single_branch_ablations(centered):
    semantics, encoded = _csa_inputs(4)
    assert BRANCHES == ("both", "channel", "temporal")
    for fusion in FUSIONS:  # fusion is moot with one branch
        for branch, axis in (("channel", 2), ("temporal", 1)):
            torch.manual_seed(0)
            csa = ClassSemanticsAttention(
                40, 24, reduction=4, fusion=fusion, centered=centered, branches=branch
            )
            assert (csa.temporal_conv if branch == "channel" else csa.channel_mlp) is None
            attended, channel, temporal = csa(semantics, encoded)
            kept, dropped = (channel, temporal) if branch == "channel" else (temporal, channel)
            assert dropped is None and kept.shape == ((2, 24) if branch == "channel" else (2, 12))
            weights = kept.unsqueeze(axis)
            gate = 2 * weights if centered else 1 + weights
            torch.testing.assert_close(attended, encoded * gate)
    with pytest.raises(ValueError, match="app.model.branches"):
        ClassSemanticsAttention(40, 24, branches="time")
    # through BMN: the loss reaches the one branch, and the outputs say which branch exists
    model = _model("csa", branches="temporal", centered=True)
    out = model.forward_with_attention(_features())
    assert out.channel_weights is None and out.temporal_weights.shape == (3, T)
    model.loss(out, GT_BBOX)["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.csa.parameters())


@pytest.mark.parametrize("attention", ["csa", "csa_se"])
def test_csa_heads_feed_csa_output_to_the_named_heads_only(attention):
    """``csa_heads=boundary`` gives the start/end heads CSA's output and the proposal head the features
    before CSA; ``proposal`` the reverse. With equal weights each output matches the ``all`` model
    (where the heads see CSA) or the model with CSA replaced by the identity (where they do not)."""
    assert HEADS == ("all", "boundary", "proposal")
    features = _features()
    full = _model(attention, centered=True).eval()
    with torch.no_grad():  # CSA away from the identity, so the two paths differ
        for parameter in full.csa.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    bypass = _model(attention, centered=True).eval()
    bypass.load_state_dict(full.state_dict())
    bypass.csa.forward = lambda semantics, encoded: (encoded, None, None)
    with torch.no_grad():
        gated, plain = full(features), bypass(features)
    assert not torch.allclose(gated[0], plain[0]) and not torch.allclose(gated[1], plain[1])
    for heads, (map_source, boundary_source) in {
        "boundary": (plain, gated),
        "proposal": (gated, plain),
    }.items():
        model = _model(attention, centered=True, csa_heads=heads).eval()
        model.load_state_dict(full.state_dict())
        with torch.no_grad():
            out = model.forward_with_attention(features)
        torch.testing.assert_close(out.confidence_map, map_source[0], rtol=0, atol=0)
        torch.testing.assert_close(out.start, boundary_source[1], rtol=0, atol=0)
        torch.testing.assert_close(out.end, boundary_source[2], rtol=0, atol=0)
        assert out.temporal_weights is not None  # CSA still runs and is reported
    # the loss still reaches CSA through the heads that see it
    model = _model(attention, centered=True, csa_heads="boundary")
    torch.manual_seed(5)
    model.loss(model(features), GT_BBOX)["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.csa.parameters())
    with pytest.raises(ValueError, match="app.model.csa_heads"):
        _model(attention, csa_heads="tem")


def test_gradients_reach_csa_and_se_through_bmn_loss():
    model = _model("csa_se", fusion="parallel_sum")
    torch.manual_seed(5)
    model.loss(model(_features()), GT_BBOX)["loss"].backward()
    for name, parameter in [*model.csa.named_parameters(), *model.se.named_parameters()]:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_torchscript_parity(tmp_path):
    model = _model("csa_se").eval()
    report = export_graphs(model.export_graphs({"features": _features(2)}), tmp_path, ["torchscript"])
    assert report["ok"]
    assert [shapes[0][0] for shapes in report["graphs"][0]["input_shapes"]] == [2, 1, 3]


def test_onnx_export_parity_in_a_fresh_process(tmp_path):
    """ONNX (dynamo) parity in a subprocess, so no earlier in-process torch.export state (see
    tests/apps/absa) leaks in; also checks that importing mmaction2 emits no mmcv-lite warning."""
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from tests.apps.csa.test_model import _model, _features\n"
        "from apps.common.export import export_graphs\n"
        "out = Path(sys.argv[1])\n"
        "reports = [export_graphs(_model(a).eval().export_graphs(_features(1)), out / a, ['onnx'])\n"
        "           for a in ('none', 'csa_se')]\n"
        "print(json.dumps([r['ok'] for r in reports]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [True, True]
    assert "MultiScaleDeformableAttention" not in proc.stderr


def test_video_context_scores_snippets_against_the_video_mean(tmp_path):
    semantics, encoded = _csa_inputs(4)
    with pytest.raises(ValueError, match="app.model.temporal_context"):
        ClassSemanticsAttention(40, 24, temporal_context="global")
    torch.manual_seed(0)
    csa = ClassSemanticsAttention(40, 24, reduction=4, centered=True, temporal_context="video")
    assert csa.temporal_conv[0].in_channels == 80
    _, temporal = csa.logits(semantics)
    # the logits are the plain branch's convolution of [R ; R * mean_t R]
    conv = csa.temporal_conv
    expected = conv(torch.cat([semantics, semantics * semantics.mean(dim=2, keepdim=True)], dim=1)).squeeze(1)
    torch.testing.assert_close(temporal, expected)
    # a snippet's score depends on the rest of the video, unlike the plain temporal branch
    changed = semantics.clone()
    changed[:, :, -1] += 3.0  # only the last snippet changes
    _, again = csa.logits(changed)
    assert not torch.allclose(again[:, 0], temporal[:, 0])
    torch.manual_seed(0)
    plain = ClassSemanticsAttention(40, 24, reduction=4, centered=True)
    torch.testing.assert_close(plain.logits(changed)[1][:, 0], plain.logits(semantics)[1][:, 0])
    # through BMN: trains and exports
    model = _model("csa", temporal_context="video", centered=True)
    model.loss(model.forward_with_attention(_features()), GT_BBOX)["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.csa.parameters())
    report = export_graphs(model.eval().export_graphs({"features": _features(2)}), tmp_path, ["torchscript"])
    assert report["ok"]
