import math

import pytest
import torch
from sa_cases import MASKS, SHAPES, brute_force_dense

from shared_attention import AndMask, BlockSparse, Causal, KeyPadding, SinkWindow, SlidingWindow, VarLen
from shared_attention.backends.flex import block_mask_for
from shared_attention.functional import attention
from shared_attention.masks import DenseMask, MaskSpec

SPEC_CASES = [name for name in MASKS if name not in ("none", "bool_tensor", "bool_tensor_2d")]
SMALL = {"b2h4g2_l13": SHAPES["b2h4g2_l13"], "b2h2g1_decode5of37": SHAPES["b2h2g1_decode5of37"]}


def _spec(name, shape_name, seed=0):
    B, H, _, Lq, Lk, _ = SHAPES[shape_name]
    return MASKS[name](B, H, Lq, Lk, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape_name", list(SMALL))
@pytest.mark.parametrize("name", SPEC_CASES)
def test_to_dense_matches_brute_force(name, shape_name):
    B, H, _, Lq, Lk, _ = SHAPES[shape_name]
    spec = _spec(name, shape_name)
    dense = spec.to_dense(B, H, Lq, Lk)
    assert dense.dtype == torch.bool and dense.dim() == 4
    torch.testing.assert_close(dense.expand(B, H, Lq, Lk), brute_force_dense(spec, B, H, Lq, Lk))


@pytest.mark.parametrize("shape_name", list(SMALL))
@pytest.mark.parametrize("name", SPEC_CASES)
def test_mask_mod_matches_dense_pointwise(name, shape_name):
    B, H, _, Lq, Lk, _ = SHAPES[shape_name]
    spec = _spec(name, shape_name)
    mod = spec.mask_mod()
    dense = spec.to_dense(B, H, Lq, Lk).expand(B, H, Lq, Lk)
    for b, h, i, j in [(0, 0, 0, 0), (B - 1, H - 1, Lq - 1, Lk - 1), (B - 1, 0, Lq // 2, Lk // 3)]:
        got = mod(torch.tensor(b), torch.tensor(h), torch.tensor(i), torch.tensor(j))
        assert bool(got) == bool(dense[b, h, i, j])


@pytest.mark.parametrize("block_size", [4, 8, 16])
@pytest.mark.parametrize("name", SPEC_CASES)
def test_block_layout_covers_every_allowed_entry_and_nothing_else(name, block_size):
    shape_name = "b2h4g2_l13"
    B, H, _, Lq, Lk, _ = SHAPES[shape_name]
    spec = _spec(name, shape_name)
    layout = spec.to_block_layout(Lq, Lk, block_size, num_heads=H)
    assert layout.shape[1:] == (math.ceil(Lq / block_size), math.ceil(Lk / block_size))
    assert layout.shape[0] in (1, H)
    dense = brute_force_dense(spec, B, H, Lq, Lk)
    expected = torch.zeros(H, *layout.shape[1:], dtype=torch.bool)
    for _b, h, i, j in dense.nonzero().tolist():
        expected[h, i // block_size, j // block_size] = True
    if isinstance(spec, BlockSparse) and block_size == spec.block_size:
        assert (layout.expand_as(expected) >= expected).all()
    else:
        torch.testing.assert_close(layout.expand_as(expected), expected)


def test_block_sparse_layout_returned_as_given():
    layout = torch.rand(2, 3, 4) < 0.5
    spec = BlockSparse(layout, 8)
    torch.testing.assert_close(spec.to_block_layout(20, 30, 8), layout[:, :3, :4])


def test_conversions_are_cached():
    spec = SlidingWindow(4)
    assert spec.to_dense(1, 1, 13, 13) is spec.to_dense(1, 1, 13, 13)
    assert spec.to_dense(2, 8, 13, 13) is spec.to_dense(1, 1, 13, 13)
    assert spec.to_dense(1, 1, 14, 14) is not spec.to_dense(1, 1, 13, 13)
    assert SlidingWindow(4).to_dense(1, 1, 13, 13) is spec.to_dense(1, 1, 13, 13)
    assert spec.to_block_layout(13, 13, 4) is spec.to_block_layout(13, 13, 4)
    padding = KeyPadding(torch.tensor([3, 5]))
    assert padding.safe_dense(2, 4, 6, 6) is padding.safe_dense(2, 4, 6, 6)
    assert block_mask_for(padding, 2, 4, 6, 6, torch.device("cpu")) is block_mask_for(
        padding, 2, 4, 6, 6, torch.device("cpu")
    )


def test_value_specs_hash_by_value_tensor_specs_by_identity():
    assert Causal(2) == Causal(2) and hash(Causal(2)) == hash(Causal(2))
    assert Causal(1) != Causal(2)
    assert SinkWindow(1, 4) == SinkWindow(1, 4)
    lengths = torch.tensor([1, 2])
    assert KeyPadding(lengths) != KeyPadding(lengths)
    with pytest.raises(AttributeError):
        Causal(1).offset = 3


def test_row_valid_reports_empty_rows():
    assert Causal().row_valid(1, 1, 5, 5) is None
    valid = Causal(-2).row_valid(1, 1, 5, 5)
    assert valid.flatten().tolist() == [False, False, True, True, True]
    dense, valid = KeyPadding(torch.tensor([0, 3])).safe_dense(2, 1, 2, 4)
    assert dense[0].all() and valid.flatten().tolist() == [False, True]


def test_dense_mask_without_empty_rows_is_served_as_is_and_follows_in_place_edits():
    """A reused DenseMask with no empty row goes to the kernels as the tensor itself (no opened
    copy, no validity to apply); the check is remembered per tensor version, so an in-place edit
    that empties a row is seen at the next call."""
    tensor = torch.ones(1, 1, 3, 4, dtype=torch.bool)
    tensor[0, 0, 1, 2:] = False
    spec = DenseMask(tensor)
    dense, valid = spec.safe_dense(1, 2, 3, 4)  # first use: no look at the data (no host sync)
    assert torch.equal(dense, tensor) and bool(valid.all())
    dense, valid = spec.safe_dense(1, 2, 3, 4)  # reused: checked once, then served as is
    assert dense.data_ptr() == tensor.data_ptr() and valid is None
    assert spec.safe_dense(1, 2, 3, 4)[1] is None
    tensor[0, 0, 2] = False  # row 2 now sees nothing
    dense, valid = spec.safe_dense(1, 2, 3, 4)
    assert valid.flatten().tolist() == [True, True, False]
    assert dense[0, 0, 2].all() and torch.equal(dense[0, 0, :2], tensor[0, 0, :2])
    q, k, v = (torch.randn(1, 2, 3 if t == "q" else 4, 8) for t in "qkv")
    out = attention(q, k, v, mask=spec, backend="sdpa")
    assert out[:, :, 2].abs().max() == 0 and torch.allclose(
        out, attention(q, k, v, mask=spec, backend="math"), atol=1e-6
    )


def test_dense_mask_additive_bias_is_aligned_kept_and_renewed_after_edits():
    """The bias SDPA gets on CUDA: 0 where the (opened) mask allows, -inf elsewhere, rows padded to
    16 elements, the same tensor on the next call, a new one after an in-place edit of the mask."""
    tensor = torch.rand(2, 1, 5, 13, generator=torch.Generator().manual_seed(0)) < 0.5
    tensor[1, 0, 3] = False  # an empty row: opened in the bias, reported in the validity
    spec = DenseMask(tensor)
    bias, valid = spec.additive_bias(2, 4, 5, 13, "cpu", torch.float16)
    dense, want_valid = spec.safe_dense(2, 4, 5, 13)
    assert bias.dtype == torch.float16 and bias.shape == (2, 1, 5, 13) and bias.stride(-2) == 16
    assert torch.equal(bias == 0, dense) and torch.isinf(bias[~dense]).all()
    assert torch.equal(valid, want_valid) and not valid[1, 0, 3, 0]
    assert spec.additive_bias(2, 4, 5, 13, "cpu", torch.float16)[0] is bias
    assert spec.additive_bias(2, 4, 5, 13, "cpu", torch.float32)[0].dtype == torch.float32
    tensor[0, 0, 0] = True
    renewed, _ = spec.additive_bias(2, 4, 5, 13, "cpu", torch.float16)
    assert renewed is not bias and (renewed[0, 0, 0] == 0).all()


def test_and_operator_and_flattening():
    a, b, c = Causal(), SlidingWindow(3), KeyPadding(torch.tensor([4]))
    combined = a & b & c
    assert isinstance(combined, AndMask)
    assert combined.specs == (a, b, c)
    assert combined.batch_dependent and combined.block_sparse
    assert not AndMask(a).block_sparse
    with pytest.raises(ValueError, match="MaskSpec"):
        AndMask(a, "causal")
    with pytest.raises(ValueError, match="at least one"):
        AndMask()


def test_key_padding_from_bool():
    valid = torch.tensor([[True, True, False], [True, False, False]])
    assert KeyPadding.from_bool(valid).lengths.tolist() == [2, 1]
    with pytest.raises(ValueError, match="prefix"):
        KeyPadding.from_bool(torch.tensor([[False, True, True]]))
    with pytest.raises(ValueError, match=r"\(B, Lk\) bool"):
        KeyPadding.from_bool(torch.ones(2, 3))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SlidingWindow(-1), "positive"),
        (lambda: SlidingWindow(0), "positive"),
        (lambda: SinkWindow(-1, 3), "sinks"),
        (lambda: SinkWindow(1, 0), "window"),
        (lambda: VarLen([3, 0]), "positive"),
        (lambda: VarLen([]), "non-empty"),
        (lambda: KeyPadding(torch.tensor([1.0])), "integer"),
        (lambda: KeyPadding(torch.tensor([-1, 2])), ">= 0"),
        (lambda: BlockSparse(torch.ones(2, 2, dtype=torch.bool), 4), "layout"),
        (lambda: BlockSparse(torch.ones(1, 2, 2), 4), "bool"),
        (lambda: BlockSparse(torch.ones(1, 2, 2, dtype=torch.bool), 0), "block_size"),
        (lambda: DenseMask(torch.ones(2, 2)), "bool"),
        (lambda: Causal(1.5), "int"),
    ],
)
def test_spec_validation_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    ("spec", "shape", "message"),
    [
        (KeyPadding(torch.tensor([3, 9])), (2, 1, 4, 8), "exceed"),
        (KeyPadding(torch.tensor([3])), (2, 1, 4, 8), "batch size"),
        (VarLen([4, 5]), (1, 1, 8, 8), "packs 9"),
        (BlockSparse(torch.ones(3, 2, 2, dtype=torch.bool), 4), (1, 4, 8, 8), "3 heads"),
        (BlockSparse(torch.ones(1, 2, 2, dtype=torch.bool), 4), (1, 4, 9, 8), "covers"),
        (DenseMask(torch.ones(3, 8, dtype=torch.bool)), (1, 1, 4, 8), "broadcastable"),
    ],
)
def test_spec_validation_against_shape(spec: MaskSpec, shape, message):
    with pytest.raises(ValueError, match=message):
        spec.to_dense(*shape)


def test_to_dense_keeps_broadcast_dims_small():
    assert Causal().to_dense(4, 8, 5, 6).shape == (1, 1, 5, 6)
    assert KeyPadding(torch.tensor([1, 2, 3, 4])).to_dense(4, 8, 5, 6).shape[:2] == (4, 1)
    assert BlockSparse(torch.ones(8, 1, 1, dtype=torch.bool), 8).to_dense(4, 8, 5, 6).shape == (1, 8, 5, 6)
