"""NTK-Attention: zero extra parameters is plain attention; the prefix acts as extra mass."""

from __future__ import annotations

import torch

from shared_attention import Causal, MultiHeadAttention, NTKAttention


def _pair(init_std=0.0):
    torch.manual_seed(0)
    ntk = NTKAttention(16, 4, init_std=init_std).double()
    mha = MultiHeadAttention(16, 4, backend="math").double()
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        getattr(mha, name).load_state_dict(getattr(ntk, name).state_dict())
    return ntk, mha


def test_extra_parameter_count_is_d_squared_plus_d_per_head():
    ntk, mha = _pair()
    extra = sum(p.numel() for p in ntk.parameters()) - sum(p.numel() for p in mha.parameters())
    assert extra == 4 * (4 * 4 + 4)


def test_zero_prefix_parameters_equal_plain_attention():
    ntk, mha = _pair()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[1, 4:] = False
    for mask in (None, valid, Causal()):
        torch.testing.assert_close(ntk(x, mask=mask), mha(x, mask=mask))


def test_prefix_matches_explicit_formula():
    ntk, _ = _pair(init_std=0.3)
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    q = ntk.q_proj(x).unflatten(-1, (4, 4)).transpose(1, 2)
    k = ntk.k_proj(x).unflatten(-1, (4, 4)).transpose(1, 2)
    v = ntk.v_proj(x).unflatten(-1, (4, 4)).transpose(1, 2)
    phi = torch.nn.functional.elu(q) + 1
    e = torch.exp(q @ k.transpose(-2, -1) / 2.0) * torch.ones(5, 5, dtype=torch.bool).tril()
    numerator = phi @ ntk.prefix_values + e @ v
    denominator = (phi * ntk.prefix_mass.clamp(min=0)[None, :, None, :]).sum(-1, keepdim=True) + e.sum(
        -1, keepdim=True
    )
    expected = ntk.out_proj((numerator / denominator).transpose(1, 2).flatten(-2))
    torch.testing.assert_close(ntk(x, mask=Causal()), expected)


def test_prefix_parameters_learn_from_plain_start():
    ntk, _ = _pair()
    ntk(torch.randn(2, 6, 16, dtype=torch.float64)).square().sum().backward()
    assert ntk.prefix_values.grad.abs().sum() > 0
    assert ntk.prefix_mass.grad.abs().sum() > 0


def test_query_with_no_key_attends_the_prefix_only():
    ntk, _ = _pair(init_std=0.3)
    x = torch.randn(1, 4, 16, dtype=torch.float64)
    out = ntk(x, mask=Causal(offset=-1))
    assert torch.isfinite(out).all()
    q = ntk.q_proj(x[:, :1]).unflatten(-1, (4, 4)).transpose(1, 2)
    phi = torch.nn.functional.elu(q) + 1
    mass = (phi * ntk.prefix_mass.clamp(min=0)[None, :, None, :]).sum(-1, keepdim=True)
    prefix_only = ntk.out_proj(((phi @ ntk.prefix_values) / mass).transpose(1, 2).flatten(-2))
    torch.testing.assert_close(out[:, :1], prefix_only)
