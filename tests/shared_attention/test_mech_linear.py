"""Linear attention and MALA: chunked == unchunked == quadratic reference; MALA's weights."""

from __future__ import annotations

import pytest
import torch

from shared_attention import Causal, KeyPadding, LinearAttention, MagnitudeAwareLinearAttention, SlidingWindow
from shared_attention.layers.linear import linear_attention_parts, linear_attention_parts_quadratic
from shared_attention.layers.mala import mala_weights


def _features(B=2, H=3, L=37, Dk=8, Dv=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(B, H, L, Dk, generator=g, dtype=dtype),
        torch.rand(B, H, L, Dk, generator=g, dtype=dtype),
        torch.randn(B, H, L, Dv, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 37, 64])
def test_chunked_equals_quadratic_reference(causal, chunk_size):
    q, k, v = _features()
    num, den = linear_attention_parts(q, k, v, causal=causal, chunk_size=chunk_size)
    ref_num, ref_den = linear_attention_parts_quadratic(q, k, v, causal=causal)
    torch.testing.assert_close(num, ref_num)
    torch.testing.assert_close(den, ref_den)


def test_causal_parts_are_prefix_sums():
    q, k, v = _features(B=1, H=1, L=6)
    num, den = linear_attention_parts(q, k, v, causal=True, chunk_size=4)
    for i in range(6):
        weights = (q[0, 0, i] * k[0, 0, : i + 1]).sum(-1)
        torch.testing.assert_close(num[0, 0, i], weights @ v[0, 0, : i + 1])
        torch.testing.assert_close(den[0, 0, i], weights.sum())


def test_parts_gradcheck():
    q, k, v = (t[:, :2, :6, :3].clone().requires_grad_(True) for t in _features(B=1))
    for causal in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, b, c, causal=causal: linear_attention_parts(a, b, c, causal=causal, chunk_size=4),
            (q, k, v),
        )


def test_parts_cross_attention_and_bad_shapes():
    q, _, _ = _features(L=5)
    _, k, v = _features(L=9)
    num, den = linear_attention_parts(q, k, v)
    assert num.shape == (2, 3, 5, 5) and den.shape == (2, 3, 5)
    with pytest.raises(ValueError, match="causal needs Lq == Lk"):
        linear_attention_parts(q, k, v, causal=True)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention_parts(q, q, q, chunk_size=0)
    with pytest.raises(ValueError, match="4-D"):
        linear_attention_parts(q[0], k[0], v[0])


def test_layer_equals_normalised_kernel_attention():
    torch.manual_seed(0)
    layer = LinearAttention(16, 4, chunk_size=3).double()
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    qf, kf, v = layer.features(x, None)
    for mask, causal in ((None, False), (Causal(), True)):
        num, den = linear_attention_parts_quadratic(qf, kf, v, causal=causal)
        expected = layer.out_proj((num / (den.unsqueeze(-1) + layer.eps)).transpose(1, 2).flatten(-2))
        torch.testing.assert_close(layer(x, mask=mask), expected)


def test_layer_general_mask_uses_exact_quadratic_form():
    torch.manual_seed(0)
    layer = LinearAttention(16, 4).double()
    x = torch.randn(1, 8, 16, dtype=torch.float64)
    qf, kf, v = layer.features(x, None)
    allowed = SlidingWindow(2).to_dense(1, 4, 8, 8)
    num, den = linear_attention_parts_quadratic(qf, kf, v, allowed=allowed)
    expected = layer.out_proj((num / (den.unsqueeze(-1) + layer.eps)).transpose(1, 2).flatten(-2))
    torch.testing.assert_close(layer(x, mask=SlidingWindow(2)), expected)


def test_unknown_feature_map_is_a_clear_error():
    with pytest.raises(ValueError, match="feature_map"):
        LinearAttention(16, 4, feature_map="softplus")


def test_mala_weights_sum_to_one_and_sharpen_with_query_magnitude():
    q, k, _ = _features(B=1, H=2, L=12)
    for allowed in (None, torch.ones(12, 12, dtype=torch.bool).tril()):
        w = mala_weights(q, k, scale=0.5, allowed=allowed)
        torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 12, dtype=torch.float64))
    base = mala_weights(q, k, scale=0.5)
    sharper = mala_weights(q * 4.0, k, scale=0.5)
    assert not torch.allclose(base, sharper)
    # same ordering, larger spread around the mean 1/n
    assert torch.equal(base.argsort(-1), sharper.argsort(-1))
    assert bool((sharper.std(-1) > base.std(-1)).all())
    # plain linear attention ignores the magnitude
    plain = (q @ k.transpose(-2, -1)) / (q @ k.transpose(-2, -1)).sum(-1, keepdim=True)
    plain_scaled = (4 * q @ k.transpose(-2, -1)) / (4 * q @ k.transpose(-2, -1)).sum(-1, keepdim=True)
    torch.testing.assert_close(plain, plain_scaled)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_mala_linear_time_path_equals_exact_weights(chunk_size):
    torch.manual_seed(0)
    layer = MagnitudeAwareLinearAttention(16, 4, chunk_size=chunk_size).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    lengths = torch.tensor([9, 5])
    qf, kf, v = layer.features(x, None)
    pad = (torch.arange(9)[None, :] < lengths[:, None])[:, None, None, :]
    tril = torch.ones(9, 9, dtype=torch.bool).tril()
    for mask, allowed in (
        (None, None),
        (KeyPadding(lengths), pad),
        (Causal(), tril),
        (Causal() & KeyPadding(lengths), pad & tril),
    ):
        w = mala_weights(qf, kf, scale=layer.scale, allowed=allowed, eps=layer.eps)
        expected = layer.out_proj((w @ v).transpose(1, 2).flatten(-2))
        torch.testing.assert_close(layer(x, mask=mask), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_dispatch_matches_reference():
    from shared_attention.layers.linear import linear_attention_parts_auto

    q, k, v = (t.float().cuda() for t in _features(L=130))
    for causal in (False, True):
        num, den = linear_attention_parts_auto(q, k, v, causal=causal, chunk_size=64)
        ref_num, ref_den = linear_attention_parts_quadratic(q, k, v, causal=causal)
        torch.testing.assert_close(num, ref_num, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(den, ref_den, atol=1e-3, rtol=1e-3)
