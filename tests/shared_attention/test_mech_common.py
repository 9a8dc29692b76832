"""Contract tests every attention mechanism passes: shapes, masks, causality, gradients, capture."""

from __future__ import annotations

import pytest
import torch
from mech_cases import MECHANISMS

from shared_attention import Causal, KeyPadding, capture_attention

EMBED, HEADS = 16, 4


def _build(name: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return MECHANISMS[name](EMBED, HEADS).to(dtype).eval()


def _inputs(batch: int = 2, length: int = 9, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, length, EMBED, generator=torch.Generator().manual_seed(1), dtype=dtype)


@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_shape_and_finite_under_every_mask_form(name):
    layer = _build(name)
    x = _inputs()
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 5:] = False
    for mask in (None, valid, Causal(), KeyPadding(valid.sum(1)), Causal() & KeyPadding(valid.sum(1))):
        out = layer(x, mask=mask)
        assert out.shape == x.shape, (name, mask)
        assert torch.isfinite(out).all(), (name, mask)


@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_key_padding_hides_padded_tokens(name):
    layer = _build(name)
    x = _inputs()
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[:, 6:] = False
    changed = x.clone()
    changed[:, 6:] = torch.randn(2, 3, EMBED) * 5
    for mask in (valid, KeyPadding(valid.sum(1))):
        torch.testing.assert_close(layer(x, mask=mask)[:, :6], layer(changed, mask=mask)[:, :6])


@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_no_causal_leakage(name):
    layer = _build(name)
    x = _inputs(length=12)
    for t in (0, 4, 10):
        changed = x.clone()
        changed[:, t + 1 :] += torch.randn_like(changed[:, t + 1 :]) * 3
        before = layer(x, mask=Causal())[:, : t + 1]
        after = layer(changed, mask=Causal())[:, : t + 1]
        torch.testing.assert_close(before, after, msg=f"{name}: output up to {t} saw later tokens")


@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_double_precision_gradcheck(name):
    torch.manual_seed(0)
    layer = MECHANISMS[name](8, 2).double().eval()
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([[True, True, True, True, False]])
    for mask in (valid, Causal()):
        assert torch.autograd.gradcheck(
            lambda inp, mask=mask: layer(inp, mask=mask), (x,), eps=1e-6, atol=1e-5, fast_mode=True
        )


@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_parameters_receive_gradients(name):
    layer = _build(name).train()
    x = _inputs()
    layer(x, mask=Causal()).square().mean().backward()
    missing = [n for n, p in layer.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: no gradient for {missing}"


@pytest.mark.parametrize("name", ["mala", "sigmoid", "rcmha", "ntk", "cosine", "relu", "no_mixing"])
def test_capture_attention_records_weights(name):
    layer = _build(name)
    with capture_attention(torch.nn.Sequential(layer)) as maps:
        out = layer(_inputs(), mask=Causal())
    weights = maps.last("0")
    assert weights.shape == (2, HEADS, 9, 9)
    assert torch.triu(weights, diagonal=1).abs().max() == 0
    torch.testing.assert_close(out, layer(_inputs(), mask=Causal()))


@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_cross_attention_or_clear_error(name):
    layer = _build(name)
    x, context = _inputs(length=5), _inputs(length=8)
    if name in ("static_qk", "no_mixing"):
        with pytest.raises(ValueError, match="context|Lq == Lk"):
            layer(x, context=context)
        return
    assert layer(x, context=context).shape == x.shape


@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_wrong_input_shape_is_a_clear_error(name):
    layer = _build(name)
    with pytest.raises(ValueError, match="x must be"):
        layer(torch.randn(2, 5, EMBED + 1))
