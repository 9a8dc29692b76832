"""Static sparse patterns: PowerAttention's mask spec and the pattern-restricted attention layer."""

from __future__ import annotations

import pytest
import torch

from shared_attention import (
    Causal,
    KeyPadding,
    MultiHeadAttention,
    PowerAttention,
    SinkWindow,
    SlidingWindow,
    SparsePatternAttention,
)


def _power_brute(L: int, block: int, window: int, sinks: int, causal: bool) -> torch.Tensor:
    out = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        for j in range(L):
            d = i // block - j // block
            if not causal:
                d = abs(d)
            elif j > i:
                continue
            power = d > 0 and (d & (d - 1)) == 0
            out[i, j] = d < window or power or (j // block) < sinks
    return out


@pytest.mark.parametrize(
    "block,window,sinks,causal", [(1, 1, 0, True), (2, 2, 1, True), (3, 1, 0, False), (1, 2, 2, False)]
)
def test_power_pattern_matches_brute_force(block, window, sinks, causal):
    spec = PowerAttention(block_size=block, window=window, sinks=sinks, causal=causal)
    dense = spec.to_dense(1, 1, 19, 19)[0, 0]
    assert torch.equal(dense, _power_brute(19, block, window, sinks, causal))
    i, j = torch.meshgrid(torch.arange(19), torch.arange(19), indexing="ij")
    zero = torch.zeros_like(i)
    assert torch.equal(spec.mask_mod()(zero, zero, i, j), dense)


def test_power_pattern_is_logarithmic_and_layout_covers_it():
    spec = PowerAttention()
    dense = spec.to_dense(1, 1, 1024, 1024)[0, 0]
    assert dense[1023].sum().item() == 1 + 10  # itself + distances 1, 2, 4, ..., 512
    layout = spec.to_block_layout(1024, 1024, 64)
    assert layout.shape == (1, 16, 16)
    assert layout.dtype == torch.bool
    for qb in range(16):
        for kb in range(16):
            assert layout[0, qb, kb] == dense[qb * 64 : (qb + 1) * 64, kb * 64 : (kb + 1) * 64].any()
    assert spec.block_sparse


def test_power_pattern_validation():
    for kwargs in ({"block_size": 0}, {"window": 0}, {"sinks": -1}, {"window": 1.5}):
        with pytest.raises(ValueError, match="PowerAttention"):
            PowerAttention(**kwargs)


@pytest.mark.parametrize(
    "pattern,full",
    [
        (SlidingWindow(12, causal=False), None),
        (SlidingWindow(12), Causal()),
        (SinkWindow(2, 12), Causal()),
        (PowerAttention(window=12), Causal()),
    ],
)
def test_window_at_least_length_equals_full_attention(pattern, full):
    torch.manual_seed(0)
    sparse = SparsePatternAttention(16, 4, pattern=pattern)
    dense = MultiHeadAttention(16, 4)
    dense.load_state_dict(sparse.state_dict())
    x = torch.randn(2, 12, 16)
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, 8:] = False
    torch.testing.assert_close(sparse(x), dense(x, mask=full))
    torch.testing.assert_close(
        sparse(x, mask=valid), dense(x, mask=valid if full is None else full & KeyPadding(valid.sum(1)))
    )


def test_sparse_layer_equals_masked_multihead_attention():
    torch.manual_seed(0)
    pattern = PowerAttention(block_size=2, window=1, sinks=1)
    sparse = SparsePatternAttention(16, 4, pattern=pattern)
    dense = MultiHeadAttention(16, 4, backend="math")
    dense.load_state_dict(sparse.state_dict())
    x = torch.randn(2, 17, 16)
    allowed = pattern.to_dense(1, 1, 17, 17)
    torch.testing.assert_close(sparse(x), dense(x, mask=allowed))


def test_sparse_layer_rejects_non_spec_pattern():
    with pytest.raises(ValueError, match="MaskSpec"):
        SparsePatternAttention(16, 4, pattern="window")


def test_power_pattern_served_by_flex_attention():
    from shared_attention import BackendUnsupported, attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 96, 8, generator=g) for _ in range(3))
    spec = PowerAttention(block_size=8, window=1, sinks=1)
    try:
        flex = attention(q, k, v, mask=spec, backend="flex")
    except BackendUnsupported as err:
        pytest.skip(f"flex backend unavailable here: {err}")
    torch.testing.assert_close(flex, attention(q, k, v, mask=spec, backend="math"))
