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
    ],
)
def test_structured_biases_match_dense_mask(spec, Lq, Lk, bias_type):
    bias = spec.to_xformers_bias(1, 2, Lq, Lk, "cpu", torch.float32)
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


def test_varlen_with_batch_falls_back_to_dense_bias():
    bias = VarLen([2, 3]).to_xformers_bias(2, 1, 5, 5, "cpu", torch.float32)
    assert isinstance(bias, torch.Tensor)
