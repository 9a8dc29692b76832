"""xformers attn_bias conversions, checked on CPU by materialising the biases."""

import pytest
import torch

from shared_attention import Causal, KeyPadding, SlidingWindow, VarLen

pytest.importorskip("xformers.ops.fmha.attn_bias")


@pytest.mark.parametrize(
    ("spec", "Lq", "Lk", "bias_type"),
    [
        (Causal(), 6, 6, "LowerTriangularMask"),
        (Causal.bottom_right(3, 7), 3, 7, "LowerTriangularFromBottomRightMask"),
        (VarLen([2, 3]), 6, 6, "BlockDiagonalMask"),
        (VarLen([2, 4], causal=True), 6, 6, "BlockDiagonalCausalMask"),
        (SlidingWindow(3), 9, 9, "LowerTriangularFromBottomRightLocalAttentionMask"),
        (SlidingWindow(1), 5, 5, "LowerTriangularFromBottomRightLocalAttentionMask"),
        (SlidingWindow(3, causal=False), 9, 9, "LocalAttentionFromBottomRightMask"),
        (SlidingWindow(12, causal=False), 9, 9, "LocalAttentionFromBottomRightMask"),
    ],
)
def test_structured_biases_match_dense_mask(spec, Lq, Lk, bias_type):
    bias = spec.to_xformers_bias(1, 2, Lq, Lk, "cpu", torch.bfloat16)
    assert type(bias).__name__ == bias_type
    allowed = bias.materialize((Lq, Lk), dtype=torch.float32) == 0
    dense = spec.to_dense(1, 2, Lq, Lk)[0, 0]
    rows = dense.any(-1)
    torch.testing.assert_close(allowed[rows], dense[rows])


@pytest.mark.parametrize("spec", [KeyPadding(torch.tensor([0, 5])), SlidingWindow(3), Causal(2)])
def test_dense_bias_fallback_is_aligned_and_opens_empty_rows(spec):
    B, H, Lq, Lk = 2, 3, 5, 13
    bias = spec.to_xformers_bias(B, H, Lq, Lk, "cpu", torch.float16)
    assert bias.shape == (B, H, Lq, Lk) and bias.dtype == torch.float16
    assert bias.stride(-2) % 8 == 0
    dense, valid = spec.safe_dense(B, H, Lq, Lk)
    torch.testing.assert_close(bias == 0, dense.expand(B, H, Lq, Lk))
    assert torch.isinf(bias[~dense.expand(B, H, Lq, Lk)]).all()
    assert spec.to_xformers_bias(B, H, Lq, Lk, "cpu", torch.float16) is bias


def test_float32_window_takes_the_dense_bias():
    # xformers' only float32 operator (CUTLASS) has no backward for the local-causal bias
    assert isinstance(SlidingWindow(3).to_xformers_bias(1, 2, 9, 9, "cpu", torch.float32), torch.Tensor)


def test_varlen_with_batch_falls_back_to_dense_bias():
    bias = VarLen([2, 3]).to_xformers_bias(2, 1, 5, 5, "cpu", torch.float32)
    assert isinstance(bias, torch.Tensor)


def test_dense_bias_stores_only_the_heads_and_rows_the_mask_depends_on():
    from shared_attention import SinkWindow

    B, H, L = 2, 4, 24
    spec = SinkWindow(2, 5)
    bias = spec.to_xformers_bias(B, H, L, L, "cpu", torch.bfloat16)
    assert bias.shape == (B, H, L, L)
    assert bias.stride(0) == 0 and bias.stride(1) == 0 and bias.stride(-1) == 1
    assert bias.stride(-2) % 8 == 0
    torch.testing.assert_close(bias == 0, spec.to_dense(B, H, L, L).expand(B, H, L, L))
    padded = KeyPadding(torch.tensor([3, 24])).to_xformers_bias(B, H, L, L, "cpu", torch.float16)
    assert padded.stride(0) != 0 and padded.stride(1) == 0
    assert torch.isinf(padded[0, :, :, 3:]).all() and (padded[1] == 0).all()


def test_torch_backed_operators_are_opt_in_and_only_when_the_cpp_library_failed(monkeypatch):
    import xformers.ops.fmha.common as fmha_common

    from shared_attention.backends import xformers as backend

    monkeypatch.setattr(fmha_common, "_built_with_cuda", False)
    monkeypatch.setattr(backend, "_cpp_library_error", lambda: None)
    assert not backend._allow_torch_backed_operators()
    assert fmha_common._built_with_cuda is False
    monkeypatch.setattr(backend, "_cpp_library_error", lambda: OSError("built for another torch"))
    monkeypatch.setattr(torch.version, "cuda", None)
    assert not backend._allow_torch_backed_operators()  # a CPU-only torch has no kernels to lend
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert backend._allow_torch_backed_operators()
    assert fmha_common._built_with_cuda is True
