"""Deconstructing Attention variants: each relaxation does what it claims; hybrids per layer."""

from __future__ import annotations

import pytest
import torch

from shared_attention import (
    Causal,
    DeconstructedAttention,
    LayerPattern,
    MultiHeadAttention,
    capture_attention,
)


def _copy_projections(src, dst):
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        if hasattr(src, name) and hasattr(dst, name):
            getattr(dst, name).load_state_dict(getattr(src, name).state_dict())


def test_standard_and_dot_similarity_equal_multihead_attention():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, backend="math").double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    for kwargs in ({"variant": "standard"}, {"variant": "similarity", "similarity": "dot"}):
        layer = DeconstructedAttention(16, 4, **kwargs).double()
        _copy_projections(mha, layer)
        for mask in (None, Causal()):
            torch.testing.assert_close(layer(x, mask=mask), mha(x, mask=mask))


def test_no_mixing_is_the_value_path_only():
    layer = DeconstructedAttention(16, 4, variant="no_mixing")
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(layer(x), layer.out_proj(layer.v_proj(x)))
    shuffled = x[:, torch.randperm(5)]
    assert not torch.allclose(layer(shuffled), layer(x))


def test_fixed_sequence_weights_do_not_depend_on_the_input():
    layer = DeconstructedAttention(16, 4, variant="fixed_sequence", max_len=8)
    model = torch.nn.Sequential(layer)
    with capture_attention(model) as maps:
        layer(torch.randn(2, 6, 16))
        layer(torch.randn(2, 6, 16) * 3)
    first, second = maps["0"]
    torch.testing.assert_close(first, second)
    with pytest.raises(ValueError, match="max_len"):
        layer(torch.randn(1, 9, 16))
    frozen = DeconstructedAttention(16, 4, variant="fixed_sequence", learn_sequence=False)
    assert "sequence" not in dict(frozen.named_parameters())


@pytest.mark.parametrize("similarity", ["cosine", "neg_l2", "relu"])
def test_other_similarities_are_row_normalised(similarity):
    layer = DeconstructedAttention(16, 4, variant="similarity", similarity=similarity)
    with capture_attention(torch.nn.Sequential(layer)) as maps:
        layer(torch.randn(2, 6, 16), mask=Causal())
    sums = maps.last("0").sum(-1)
    nonzero = sums > 0
    torch.testing.assert_close(sums[nonzero], torch.ones_like(sums[nonzero]), atol=1e-4, rtol=0)


def test_cosine_weights_ignore_query_and_key_norms():
    layer = DeconstructedAttention(8, 2, variant="similarity", similarity="cosine")
    q = torch.randn(1, 2, 4, 4)
    k = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(layer._weights(q, k, None), layer._weights(q * 5, k * 0.1, None))


def test_static_qk_layers_use_the_first_layers_input():
    factory = LayerPattern(["standard", "static_qk"])
    first = factory(embed_dim=16, num_heads=4)
    second = factory(embed_dim=16, num_heads=4)
    assert (first.variant, second.variant) == ("standard", "static_qk")
    assert first.records_static and not second.records_static
    embeddings = torch.randn(2, 5, 16)
    first(embeddings)
    with capture_attention(torch.nn.Sequential(second)) as maps:
        second(torch.randn(2, 5, 16))
        second(torch.randn(2, 5, 16))
    a, b = maps["0"]
    torch.testing.assert_close(a, b)  # weights come from the recorded embeddings only
    with pytest.raises(ValueError, match="recorded states"):
        second(torch.randn(3, 5, 16))


def test_layer_pattern_cycles_and_validates():
    factory = LayerPattern(["standard", "no_mixing", "similarity"], similarity="relu")
    variants = [factory(embed_dim=8, num_heads=2).variant for _ in range(4)]
    assert variants == ["standard", "no_mixing", "similarity", "standard"]
    with pytest.raises(ValueError, match="unknown variant"):
        LayerPattern(["softmax"])
    with pytest.raises(ValueError, match="unknown attention variant"):
        DeconstructedAttention(8, 2, variant="nope")
    with pytest.raises(ValueError, match="unknown similarity"):
        DeconstructedAttention(8, 2, variant="similarity", similarity="nope")
