"""Sigmoid attention (no normalisation) and the attention-sink metric of Gu et al."""

from __future__ import annotations

import math

import pytest
import torch

from shared_attention import Causal, SigmoidAttention, attention, capture_attention
from shared_attention.analysis import sink_rate, sink_scores
from shared_attention.layers.sigmoid import sigmoid_attention


def _qkv(L=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 3, L, 4, generator=g, dtype=torch.float64) for _ in range(3))


def test_weights_follow_softmax_ordering_but_are_not_normalised():
    q, k, v = _qkv()
    _, weights = sigmoid_attention(q, k, v, bias=-math.log(7), scale=0.5)
    _, soft = attention(q, k, v, scale=0.5, backend="math", need_weights=True)
    assert torch.equal(weights.argsort(-1), soft.argsort(-1))
    assert not torch.allclose(weights.sum(-1), torch.ones(2, 3, 7, dtype=torch.float64))


def test_layer_matches_explicit_formula_with_default_bias():
    torch.manual_seed(0)
    layer = SigmoidAttention(8, 2).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    q = layer.q_proj(x).unflatten(-1, (2, 4)).transpose(1, 2)
    k = layer.k_proj(x).unflatten(-1, (2, 4)).transpose(1, 2)
    v = layer.v_proj(x).unflatten(-1, (2, 4)).transpose(1, 2)
    tril = torch.ones(6, 6, dtype=torch.bool).tril()
    weights = torch.sigmoid(q @ k.transpose(-2, -1) / 2.0 - math.log(6)) * tril
    expected = layer.out_proj((weights @ v).transpose(1, 2).flatten(-2))
    torch.testing.assert_close(layer(x, mask=Causal()), expected)
    # zero scores give 1 / (1 + n) per key: the b = -log(n) initial scale
    _, w = sigmoid_attention(
        torch.zeros(1, 1, 1, 4),
        torch.zeros(1, 1, 6, 4),
        torch.zeros(1, 1, 6, 4),
        bias=-math.log(6),
        scale=1.0,
    )
    torch.testing.assert_close(w, torch.full((1, 1, 1, 6), 1 / 7))


def test_fixed_and_learned_bias():
    layer = SigmoidAttention(8, 2, bias=-2.0)
    assert layer.score_bias(100) == -2.0
    learned = SigmoidAttention(8, 2, learn_bias=True)
    torch.testing.assert_close(learned.score_bias(5), torch.full((2, 1, 1), -math.log(5)))


def test_query_chunking_matches_full():
    torch.manual_seed(0)
    layer = SigmoidAttention(8, 2, query_chunk=3).eval()
    full = SigmoidAttention(8, 2, query_chunk=1024).eval()
    full.load_state_dict(layer.state_dict())
    x = torch.randn(2, 10, 8)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[0, 7:] = False
    for mask in (None, valid, Causal()):
        torch.testing.assert_close(layer(x, mask=mask), full(x, mask=mask))


def test_sink_scores_and_rate_on_known_maps():
    T = 6
    uniform = torch.ones(T, T).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    sink = torch.zeros(T, T)
    sink[:, 0] = 1.0
    maps = torch.stack([uniform, sink])[None]  # (B=1, H=2, T, T)
    alpha = sink_scores(maps)
    expected_uniform = sum(1 / (t + 1) for t in range(T)) / T
    torch.testing.assert_close(alpha, torch.tensor([[expected_uniform, 1.0]]))
    assert sink_rate([maps], epsilon=0.3).item() == 1.0  # the uniform head averages 0.41 > 0.3
    assert sink_rate([maps], epsilon=0.5).item() == pytest.approx(0.5)
    assert sink_rate([maps, maps.flip(1)], epsilon=0.99).item() == pytest.approx(0.5)
    assert sink_rate(maps, epsilon=0.3, token=1).item() == 0.0
    with pytest.raises(ValueError, match="outside"):
        sink_scores(maps, token=T)
    with pytest.raises(ValueError, match="at least one"):
        sink_rate([])


def test_sink_rate_on_captured_sigmoid_maps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(SigmoidAttention(8, 2))
    with capture_attention(model) as maps:
        model[0](torch.randn(3, 12, 8), mask=Causal())
    rate = sink_rate(maps["0"], epsilon=0.3)
    assert 0.0 <= rate.item() <= 1.0
    manual = (sink_scores(maps.last("0")) > 0.3).float().mean()
    torch.testing.assert_close(rate, manual)
