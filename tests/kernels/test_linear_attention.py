"""Chunked linear attention (Triton) against exact references, in the interpreter on CPU."""

from __future__ import annotations

import pytest
import torch

from shared_attention.layers.linear import linear_attention_parts as torch_linear_attention_parts
from tests.kernels._helpers import grads_of, interpreted_or_cuda, random_inputs, requires_cuda

pytestmark = pytest.mark.skipif(not interpreted_or_cuda(), reason="needs CUDA or TRITON_INTERPRET=1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def quadratic_parts(q_feat, k_feat, v, causal):
    """Definition through the full ``(Lq, Lk)`` kernel matrix, in float64."""
    scores = q_feat.double() @ k_feat.double().transpose(-2, -1)
    if causal:
        scores = scores.tril()
    return (scores @ v.double()).to(v.dtype), scores.sum(-1).to(q_feat.dtype)


def _inputs(B, H, Lq, Lk, Dk, Dv, seed=0, dtype=torch.float32):
    return random_inputs(
        (B, H, Lq, Dk), (B, H, Lk, Dk), (B, H, Lk, Dv), dtype=dtype, device=DEVICE, seed=seed, positive=(0, 1)
    )


def _assert_parts_close(got, want, rtol=1e-5):
    for g, w in zip(got, want):
        scale = w.detach().abs().max().clamp(min=1.0)
        torch.testing.assert_close(g / scale, w / scale, atol=rtol, rtol=rtol)


CASES = {
    "l37_chunk16": (2, 2, 37, 37, 8, 12, 16, None),
    "l70_dv_tiles": (1, 2, 70, 70, 16, 40, 16, 16),
    "l70_chunk50_rounds_up": (1, 1, 70, 70, 12, 8, 50, None),
    "l16_single_chunk": (1, 1, 16, 16, 16, 16, 32, None),
}


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_match_quadratic_reference(case, causal):
    from kernels.linear_attention import LinearAttentionFunction, linear_attention_parts

    B, H, Lq, Lk, Dk, Dv, chunk, dv_block = CASES[case]
    q, k, v = _inputs(B, H, Lq, Lk, Dk, Dv, seed=len(case))
    if dv_block is None:
        parts = linear_attention_parts(q, k, v, causal=causal, chunk_size=chunk)
    else:
        parts = LinearAttentionFunction.apply(q, k, v, causal, chunk, dv_block)
    assert parts[0].shape == (B, H, Lq, Dv) and parts[1].shape == (B, H, Lq)
    reference = quadratic_parts(q, k, v, causal)
    _assert_parts_close(parts, reference)
    _assert_parts_close(grads_of(parts, (q, k, v)), grads_of(reference, (q, k, v)))


def test_noncausal_cross_lengths_match_reference():
    from kernels.linear_attention import linear_attention_parts

    q, k, v = _inputs(1, 2, 20, 45, 8, 8, seed=3)
    parts = linear_attention_parts(q, k, v, causal=False, chunk_size=16)
    reference = quadratic_parts(q, k, v, False)
    _assert_parts_close(parts, reference)
    _assert_parts_close(grads_of(parts, (q, k, v)), grads_of(reference, (q, k, v)))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_matches_the_pytorch_reference_of_the_core(causal):
    from kernels.linear_attention import linear_attention_parts

    q, k, v = _inputs(2, 2, 37, 37, 16, 16, seed=4)
    parts = linear_attention_parts(q, k, v, causal=causal, chunk_size=16)
    reference = torch_linear_attention_parts(q, k, v, causal=causal, chunk_size=16)
    _assert_parts_close(parts, reference)
    _assert_parts_close(grads_of(parts, (q, k, v)), grads_of(reference, (q, k, v)))


def test_causal_output_ignores_the_future():
    from kernels.linear_attention import linear_attention_parts

    q, k, v = (t.detach() for t in _inputs(1, 2, 40, 40, 8, 8, seed=5))
    t = 17
    before = linear_attention_parts(q, k, v, causal=True, chunk_size=16)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, t + 1 :] += 5.0
    v2[:, :, t + 1 :] -= 3.0
    after = linear_attention_parts(q, k2, v2, causal=True, chunk_size=16)
    torch.testing.assert_close(after[0][:, :, : t + 1], before[0][:, :, : t + 1])
    torch.testing.assert_close(after[1][:, :, : t + 1], before[1][:, :, : t + 1])
    assert not torch.allclose(after[0][:, :, t + 1 :], before[0][:, :, t + 1 :])


def test_chunk_size_does_not_change_the_result():
    from kernels.linear_attention import linear_attention_parts

    q, k, v = (t.detach() for t in _inputs(1, 1, 70, 70, 8, 8, seed=6))
    small = linear_attention_parts(q, k, v, causal=True, chunk_size=16)
    large = linear_attention_parts(q, k, v, causal=True, chunk_size=64)
    _assert_parts_close(small, large)


def test_float16_inputs_accumulate_in_float32():
    from kernels.linear_attention import linear_attention_parts

    q, k, v = _inputs(1, 2, 37, 37, 16, 16, seed=7, dtype=torch.float16)
    numerator, denominator = linear_attention_parts(q, k, v, causal=True, chunk_size=16)
    assert numerator.dtype == denominator.dtype == torch.float16
    reference = quadratic_parts(q.float(), k.float(), v.float(), True)
    _assert_parts_close((numerator.float(), denominator.float()), reference, rtol=2e-3)


def test_bad_inputs_raise_clear_errors():
    from kernels.linear_attention import linear_attention_parts

    q, k, v = (t.detach() for t in _inputs(1, 1, 8, 8, 4, 4))
    with pytest.raises(ValueError, match="causal needs Lq == Lk"):
        linear_attention_parts(q[:, :, :4], k, v, causal=True)
    with pytest.raises(ValueError, match="must be 4-D"):
        linear_attention_parts(q[0], k, v, causal=False)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention_parts(q, k, v, causal=False, chunk_size=0)
    with pytest.raises(ValueError, match="float16/bfloat16/float32"):
        linear_attention_parts(q.double(), k.double(), v.double(), causal=False)
    with pytest.raises(ValueError, match="disagree|need q_feat"):
        linear_attention_parts(q, k[..., :2], v, causal=False)


@pytest.mark.slow
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_larger_shapes_match_reference(causal):
    from kernels.linear_attention import linear_attention_parts

    q, k, v = _inputs(2, 4, 300, 300, 32, 48, seed=8)
    parts = linear_attention_parts(q, k, v, causal=causal, chunk_size=64)
    reference = quadratic_parts(q, k, v, causal)
    _assert_parts_close(parts, reference)
    _assert_parts_close(grads_of(parts, (q, k, v)), grads_of(reference, (q, k, v)))


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_gpu_matches_reference(dtype, causal):
    from kernels.linear_attention import linear_attention_parts

    q, k, v = _inputs(2, 4, 1000, 1000, 64, 128, seed=9, dtype=dtype)
    parts = linear_attention_parts(q, k, v, causal=causal, chunk_size=64)
    reference = quadratic_parts(q.float(), k.float(), v.float(), causal)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    _assert_parts_close(tuple(p.float() for p in parts), reference, rtol=tolerance)
    grads = grads_of(parts, (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("segments", [1, 2, 4, 100])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_any_segment_split_gives_the_same_sums(segments, causal):
    """Segments run in parallel from prefix (causal) or total (non-causal) states: every split,
    including one segment per chunk and more segments than chunks, matches the reference."""
    from kernels.linear_attention import LinearAttentionFunction

    Lk = 70 if causal else 45
    q, k, v = _inputs(1, 2, 70, Lk, 8, 24, seed=segments)
    parts = LinearAttentionFunction.apply(q, k, v, causal, 16, 16, segments)
    reference = quadratic_parts(q, k, v, causal)
    _assert_parts_close(parts, reference)
    _assert_parts_close(grads_of(parts, (q, k, v)), grads_of(reference, (q, k, v)))
