"""RCMHA: depth-wise convolutions and relative positions, against an explicit slow reference."""

from __future__ import annotations

import torch

from shared_attention import Causal, RelativeConvAttention
from shared_attention.layers.rcmha import sinusoid_table


def _reference(layer: RelativeConvAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """Loops over positions: conv taps, per-pair relative encodings, softmax."""
    B, L, E = x.shape
    H, d = layer.num_heads, layer.head_dim
    ks = layer.q_conv.kernel_size

    def conv(module, inp):
        out = torch.zeros_like(inp)
        w, b = module.conv.weight[:, 0], module.conv.bias
        left = ks - 1 if causal else (ks - 1) // 2
        for t in range(L):
            for tap in range(ks):
                src = t - left + tap
                if 0 <= src < L:
                    out[:, t] += w[:, tap] * inp[:, src]
        return out + b

    q = conv(layer.q_conv, layer.q_proj(x)).view(B, L, H, d).transpose(1, 2)
    k = conv(layer.k_conv, layer.k_proj(x)).view(B, L, H, d).transpose(1, 2)
    v = conv(layer.v_conv, layer.v_proj(x)).view(B, L, H, d).transpose(1, 2)
    scores = torch.empty(B, H, L, L, dtype=x.dtype)
    for i in range(L):
        for j in range(L):
            r = layer.rel_proj(sinusoid_table(torch.tensor([float(i - j)]), E).to(x.dtype)).view(H, d)
            content = ((q[:, :, i] + layer.content_bias[:, 0]) * k[:, :, j]).sum(-1)
            position = ((q[:, :, i] + layer.position_bias[:, 0]) * r).sum(-1)
            scores[:, :, i, j] = (content + position) * d**-0.5
    if causal:
        scores = scores.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
    out = torch.softmax(scores, -1) @ v
    return layer.out_proj(out.transpose(1, 2).flatten(-2))


def test_matches_slow_reference_causal_and_bidirectional():
    torch.manual_seed(0)
    layer = RelativeConvAttention(8, 2, kernel_size=3).double()
    with torch.no_grad():
        layer.content_bias.normal_()
        layer.position_bias.normal_()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _reference(layer, x, causal=False))
    torch.testing.assert_close(layer(x, mask=Causal()), _reference(layer, x, causal=True))
    causal_layer = RelativeConvAttention(8, 2, causal=True).double()
    causal_layer.load_state_dict(layer.state_dict())
    torch.testing.assert_close(causal_layer(x), _reference(layer, x, causal=True))


def test_scores_depend_on_relative_not_absolute_position():
    torch.manual_seed(0)
    layer = RelativeConvAttention(8, 2, kernel_size=1).double()
    q = torch.randn(1, 2, 5, 4, dtype=torch.float64).expand(1, 2, 5, 4).clone()
    q[:] = q[:, :, :1]  # the same query everywhere
    rel = layer.relative_scores(q, 5)
    for shift in range(1, 4):
        torch.testing.assert_close(rel[..., shift:, shift:], rel[..., :-shift, :-shift])


def test_even_kernel_and_bad_kernel():
    layer = RelativeConvAttention(8, 2, kernel_size=4)
    assert layer(torch.randn(1, 7, 8)).shape == (1, 7, 8)
    try:
        RelativeConvAttention(8, 2, kernel_size=0)
    except ValueError as err:
        assert "kernel_size" in str(err)
    else:
        raise AssertionError("kernel_size=0 accepted")
