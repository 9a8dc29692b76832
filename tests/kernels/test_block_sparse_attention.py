"""Block-sparse flash attention (Triton) against the math backend, in the interpreter on CPU."""

from __future__ import annotations

import math
import os

import pytest
import torch

from shared_attention import BackendUnsupported, attention, explain
from shared_attention.backends import get_backend
from shared_attention.backends.base import AttentionCall
from shared_attention.backends.triton import AUTO_MIN_SCORES, block_index_for
from shared_attention.functional import describe_call, select_backend
from shared_attention.masks import (
    AndMask,
    BlockSparse,
    Causal,
    KeyPadding,
    PowerAttention,
    SinkWindow,
    SlidingWindow,
    VarLen,
)
from tests.kernels._helpers import grads_of, interpreted_or_cuda, random_inputs, requires_cuda

pytestmark = pytest.mark.skipif(not interpreted_or_cuda(), reason="needs CUDA or TRITON_INTERPRET=1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _random_layout(heads, nqb, nkb, seed, density=0.4):
    gen = torch.Generator().manual_seed(seed)
    layout = torch.rand(heads, nqb, nkb, generator=gen) < density
    layout[:, 0, 0] = True
    return layout


# name -> (B, H, Hkv, Lq, Lk, D, Dv, mask factory(B, H, Lq, Lk))
CASES = {
    "causal_gqa_l37": (2, 4, 2, 37, 37, 16, 16, lambda B, H, Lq, Lk: Causal()),
    "window_l70": (1, 2, 2, 70, 70, 16, 16, lambda B, H, Lq, Lk: SlidingWindow(9)),
    "window_bidir_l37": (1, 2, 1, 37, 37, 12, 12, lambda B, H, Lq, Lk: SlidingWindow(7, causal=False)),
    "sink_window_l70": (1, 2, 2, 70, 70, 16, 24, lambda B, H, Lq, Lk: SinkWindow(3, 8)),
    "power_l70": (
        1,
        2,
        2,
        70,
        70,
        16,
        16,
        lambda B, H, Lq, Lk: PowerAttention(block_size=4, window=2, sinks=1),
    ),
    "block_sparse_heads_l64": (
        1,
        2,
        2,
        64,
        64,
        16,
        16,
        lambda B, H, Lq, Lk: BlockSparse(_random_layout(H, 4, 4, seed=3), 16),
    ),
    "block_sparse_bs8_l37": (
        1,
        2,
        1,
        37,
        37,
        8,
        8,
        lambda B, H, Lq, Lk: BlockSparse(_random_layout(1, 5, 5, seed=4), 8),
    ),
    "key_padding_empty_row": (
        2,
        2,
        2,
        37,
        37,
        16,
        16,
        lambda B, H, Lq, Lk: KeyPadding(torch.tensor([0, 23])),
    ),
    "varlen_causal_tail": (1, 2, 2, 37, 37, 16, 16, lambda B, H, Lq, Lk: VarLen([10, 17, 5], causal=True)),
    "decode_5_of_37": (2, 2, 1, 5, 37, 16, 16, lambda B, H, Lq, Lk: Causal.bottom_right(Lq, Lk)),
    "window_and_padding": (
        2,
        2,
        2,
        37,
        37,
        16,
        16,
        lambda B, H, Lq, Lk: AndMask(SlidingWindow(6), KeyPadding(torch.tensor([37, 19]))),
    ),
    "no_mask_l37": (1, 1, 1, 37, 20, 16, 16, lambda B, H, Lq, Lk: None),
}


def _run_kernel(q, k, v, mask, block_size=16):
    from kernels.block_sparse_attention import block_sparse_attention

    B, H, Lq, _ = q.shape
    index = block_index_for(mask, B, H, Lq, k.shape[2], q.device, block_size)
    return block_sparse_attention(q, k, v, index)


@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_match_math(case):
    B, H, Hkv, Lq, Lk, D, Dv, make_mask = CASES[case]
    mask = make_mask(B, H, Lq, Lk)
    q, k, v = random_inputs((B, H, Lq, D), (B, Hkv, Lk, D), (B, Hkv, Lk, Dv), device=DEVICE, seed=len(case))
    out = _run_kernel(q, k, v, mask)
    reference = attention(q, k, v, mask=mask, backend="math")
    torch.testing.assert_close(out, reference, atol=2e-5, rtol=1e-4)
    for got, want in zip(grads_of([out], (q, k, v)), grads_of([reference], (q, k, v))):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=5e-5, rtol=1e-4)
    if mask is not None:
        empty = ~mask.to_dense(B, H, Lq, Lk, DEVICE).expand(B, H, Lq, Lk).any(-1)
        assert (out.detach()[empty] == 0).all()


def test_fully_masked_rows_are_zero_with_zero_gradients():
    mask = Causal(-3)
    q, k, v = random_inputs((1, 2, 20, 16), (1, 2, 20, 16), (1, 2, 20, 16), device=DEVICE, seed=5)
    out = _run_kernel(q, k, v, mask)
    assert (out[:, :, :3] == 0).all()
    dq, _, _ = grads_of([out], (q, k, v))
    assert (dq[:, :, :3] == 0).all()
    torch.testing.assert_close(out, attention(q, k, v, mask=mask, backend="math"), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "mask", [SlidingWindow(9), KeyPadding(torch.tensor([37, 20]))], ids=["window", "padding"]
)
def test_full_block_branch_matches_always_masking(mask):
    """Skipping the element mask on full blocks (the default) equals masking every block, also
    with a ragged last key block (37 keys, blocks of 16) and padded batch rows."""
    from kernels.block_sparse_attention import launch_config

    q, k, v = random_inputs((2, 2, 37, 16), (2, 2, 37, 16), (2, 2, 37, 16), device=DEVICE, seed=12)
    out = _run_kernel(q, k, v, mask)
    grads = grads_of([out], (q, k, v))
    with launch_config(forward={"SKIP_FULL": False}, backward={"SKIP_FULL": False}):
        always = _run_kernel(q, k, v, mask)
        always_grads = grads_of([always], (q, k, v))
    torch.testing.assert_close(out, always, atol=1e-6, rtol=1e-5)
    for got, want in zip(grads, always_grads):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_float16_matches_math():
    q, k, v = random_inputs(
        (1, 2, 40, 16), (1, 2, 40, 16), (1, 2, 40, 16), device=DEVICE, dtype=torch.float16, seed=6
    )
    mask = SinkWindow(2, 9)
    out = _run_kernel(q, k, v, mask)
    assert out.dtype == torch.float16
    reference = attention(q, k, v, mask=mask, backend="math")
    torch.testing.assert_close(out.float(), reference.float(), atol=2e-3, rtol=2e-3)
    for got, want in zip(grads_of([out], (q, k, v)), grads_of([reference], (q, k, v))):
        torch.testing.assert_close(got.float(), want.float(), atol=1e-2, rtol=1e-2)


def _dense_from_index(index, B, H):
    """Rebuild the element mask ``(B, H, Lq, Lk)`` from an index's CSR lists and tiles."""
    bm, bn = index.block_m, index.block_n
    nqb, nkb = index.n_q_blocks, index.n_k_blocks
    dense = torch.zeros(B, H, nqb * bm, nkb * bn, dtype=torch.bool)
    ptr, kbs, tiles = index.row_ptr.cpu(), index.row_kb.cpu(), index.row_tile.cpu()
    for b in range(B):
        for h in range(H):
            mb = b if index.mask_batch > 1 else 0
            mh = h if index.mask_heads > 1 else 0
            for qb in range(nqb):
                row = (mb * index.mask_heads + mh) * nqb + qb
                for entry in range(int(ptr[row]), int(ptr[row + 1])):
                    kb, tile = int(kbs[entry]), int(tiles[entry])
                    block = (
                        index.tiles[tile].cpu().bool() if tile >= 0 else torch.ones(bm, bn, dtype=torch.bool)
                    )
                    dense[b, h, qb * bm : (qb + 1) * bm, kb * bn : (kb + 1) * bn] = block
    return dense[:, :, : index.q_len, : index.k_len]


@pytest.mark.parametrize(
    "mask",
    [
        SlidingWindow(5),
        SinkWindow(2, 6),
        VarLen([7, 11, 9]),
        KeyPadding(torch.tensor([3, 30])),
        PowerAttention(block_size=2, window=1, sinks=1),
    ],
    ids=lambda m: type(m).__name__,
)
def test_index_reproduces_the_element_mask(mask):
    from kernels.block_sparse_attention import build_block_index

    B, H, Lq, Lk = 2, 2, 30, 30
    gb, gh = mask._grid_sizes(B, H)
    index = build_block_index(
        mask.mask_mod("cpu"), Lq, Lk, mask_batch=gb, mask_heads=gh, block_m=8, block_n=8
    )
    expected = mask.to_dense(B, H, Lq, Lk).expand(B, H, Lq, Lk)
    assert torch.equal(_dense_from_index(index, B, H), expected)
    layout_union = mask.to_block_layout(Lq, Lk, 8, num_heads=H)
    active = torch.zeros(gb, gh, index.n_q_blocks, index.n_k_blocks, dtype=torch.bool)
    rows = torch.repeat_interleave(torch.arange(index.row_ptr.numel() - 1), index.row_ptr.diff().long())
    active.view(-1, index.n_k_blocks)[rows, index.row_kb.long()] = True
    assert torch.equal(active.any(0), layout_union.expand_as(active.any(0)))
    col_entries = sorted(
        (int(qb), int(kb))
        for kb in range(index.n_k_blocks)
        for qb in index.col_qb[index.col_ptr[kb] : index.col_ptr[kb + 1]]
    )
    row_entries = sorted(
        (qb, int(kb))
        for qb in range(index.n_q_blocks)
        for kb in index.row_kb[index.row_ptr[qb] : index.row_ptr[qb + 1]]
    )
    assert col_entries == row_entries


@pytest.mark.parametrize("length", [32, 30])
def test_index_lists_unmasked_blocks_first(length):
    """Each CSR row / CSC column lists the blocks the kernels run unmasked (full, inside both
    ranges) before those that need the element or bounds mask; ``*_mid`` is the boundary."""
    from kernels.block_sparse_attention import build_block_index

    index = build_block_index(SinkWindow(8, 17).mask_mod("cpu"), length, length, block_m=8, block_n=8)
    ragged = length % 8 != 0
    last = index.n_k_blocks - 1
    for ptr, mid, blocks, tiles, columns in (
        (index.row_ptr, index.row_mid, index.row_kb, index.row_tile, False),
        (index.col_ptr, index.col_mid, index.col_qb, index.col_tile, True),
    ):
        n_unmasked = 0
        for r in range(ptr.numel() - 1):
            start, middle, end = int(ptr[r]), int(mid[r]), int(ptr[r + 1])
            assert start <= middle <= end
            for e in range(start, end):
                # rows: key block ragged; columns: the column's key block or the query block ragged
                edge = ragged and (int(blocks[e]) == last or (columns and r == last))
                needs_mask = int(tiles[e]) >= 0 or edge
                assert needs_mask == (e >= middle), (r, e)
            assert blocks[start:middle].tolist() == sorted(blocks[start:middle].tolist())
            n_unmasked += middle - start
        assert n_unmasked > 0


def test_window_index_visits_only_band_blocks():
    from kernels.block_sparse_attention import build_block_index

    L, block, window = 256, 16, 32
    index = build_block_index(SlidingWindow(window).mask_mod("cpu"), L, L, block_m=block, block_n=block)
    per_row = index.row_ptr.diff()
    assert int(per_row.max()) <= window // block + 1
    assert index.density < 0.2
    assert index.n_partial <= 2 * (L // block)


def test_layout_index_matches_block_sparse_spec():
    from kernels.block_sparse_attention import block_index_from_layout, block_sparse_attention

    layout = _random_layout(2, 3, 3, seed=7)
    q, k, v = random_inputs((1, 2, 40, 16), (1, 2, 40, 16), (1, 2, 40, 16), device=DEVICE, seed=8)
    index = block_index_from_layout(layout, 16, 40, 40, device=DEVICE)
    out = block_sparse_attention(q, k, v, index)
    reference = attention(q, k, v, mask=BlockSparse(layout, 16), backend="math")
    torch.testing.assert_close(out, reference, atol=2e-5, rtol=1e-4)


def test_bad_inputs_raise_clear_errors():
    from kernels.block_sparse_attention import block_index_from_layout, block_sparse_attention

    q, k, v = random_inputs((1, 2, 16, 16), (1, 2, 16, 16), (1, 2, 16, 16), device=DEVICE)
    index = block_index_from_layout(torch.ones(1, 1, 1, dtype=torch.bool), 16, 16, 16, device=DEVICE)
    with pytest.raises(ValueError, match="built for Lq=16"):
        block_sparse_attention(q[:, :, :8], k, v, index)
    with pytest.raises(ValueError, match="H % Hkv"):
        block_sparse_attention(q, k[:, :1].expand(1, 3, 16, 16), v[:, :1].expand(1, 3, 16, 16), index)
    with pytest.raises(ValueError, match="does not cover"):
        block_index_from_layout(torch.ones(1, 1, 1, dtype=torch.bool), 16, 40, 16)
    with pytest.raises(ValueError, match="float16/bfloat16/float32"):
        block_sparse_attention(q.double(), k.double(), v.double(), index)


# --- through the dispatcher -------------------------------------------------------------------


def test_dispatcher_triton_backend_matches_math():
    mask = SinkWindow(2, 10) & KeyPadding(torch.tensor([45, 30]))
    q, k, v = random_inputs((2, 4, 45, 16), (2, 2, 45, 16), (2, 2, 45, 16), device=DEVICE, seed=9)
    out = attention(q, k, v, mask=mask, backend="triton", scale=0.3)
    reference = attention(q, k, v, mask=mask, backend="math", scale=0.3)
    torch.testing.assert_close(out, reference, atol=2e-5, rtol=1e-4)
    for got, want in zip(grads_of([out], (q, k, v)), grads_of([reference], (q, k, v))):
        torch.testing.assert_close(got, want, atol=5e-5, rtol=1e-4)


def test_auto_on_cpu_never_picks_triton():
    q, k, v = random_inputs((1, 2, 40, 16), (1, 2, 40, 16), (1, 2, 40, 16))
    for mask in (None, Causal(), SlidingWindow(8), SinkWindow(2, 8), PowerAttention(block_size=4)):
        call = describe_call(q, k, v, mask, 0.0, False)
        assert select_backend(call) != "triton"
        big = AttentionCall(**{**call.__dict__, "q_len": 8192, "kv_len": 8192})
        assert select_backend(big) != "triton"
    text = explain(q, k, v, mask=SlidingWindow(8))
    assert "triton" in text and "auto -> triton" not in text


def _cuda_call(**overrides):
    base = dict(
        device_type="cuda",
        dtype=torch.bfloat16,
        batch=1,
        heads=8,
        kv_heads=8,
        q_len=8192,
        kv_len=8192,
        head_dim=64,
        v_head_dim=64,
        mask_kind="SlidingWindow",
        block_sparse_mask=True,
    )
    base.update(overrides)
    return AttentionCall(**base)


def test_auto_on_cuda_prefers_triton_for_large_block_sparse_masks():
    assert select_backend(_cuda_call()) == "triton"
    side = int(math.isqrt(AUTO_MIN_SCORES))
    assert select_backend(_cuda_call(q_len=side // 2, kv_len=side // 2)) == "flex"
    assert select_backend(_cuda_call(mask_kind="Causal", block_sparse_mask=False)) != "triton"
    assert select_backend(_cuda_call(dropout=True)) != "triton"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"need_weights": True}, "weights"),
        ({"dropout": True}, "dropout"),
        ({"dtype": torch.float64}, "float64"),
        ({"head_dim": 512, "v_head_dim": 512}, "head dims up to 256"),
        ({"device_type": "mps"}, "do not run on mps"),
    ],
)
def test_support_answers_give_reasons(overrides, reason):
    answer = get_backend("triton").supports(_cuda_call(**overrides))
    assert not answer.ok and reason in answer.reason


def test_cpu_needs_the_interpreter(monkeypatch):
    call = _cuda_call(device_type="cpu", dtype=torch.float32)
    if os.environ.get("TRITON_INTERPRET") == "1":
        assert get_backend("triton").supports(call).ok
        answer = get_backend("triton").supports(_cuda_call(device_type="cpu", dtype=torch.bfloat16))
        assert not answer.ok and "bfloat16" in answer.reason
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    answer = get_backend("triton").supports(call)
    assert not answer.ok and "TRITON_INTERPRET=1" in answer.reason
    q, k, v = random_inputs((1, 1, 8, 16), (1, 1, 8, 16), (1, 1, 8, 16))
    with pytest.raises(BackendUnsupported, match="TRITON_INTERPRET"):
        attention(q, k, v, mask=SlidingWindow(4), backend="triton")


# --- larger and GPU-only ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "mask", [SlidingWindow(40), SinkWindow(4, 32), PowerAttention(block_size=16, window=2)]
)
def test_larger_shapes_match_math(mask):
    q, k, v = random_inputs((2, 4, 200, 32), (2, 2, 200, 32), (2, 2, 200, 32), device=DEVICE, seed=11)
    out = _run_kernel(q, k, v, mask, block_size=32)
    reference = attention(q, k, v, mask=mask, backend="math")
    torch.testing.assert_close(out, reference, atol=2e-5, rtol=1e-4)
    for got, want in zip(grads_of([out], (q, k, v)), grads_of([reference], (q, k, v))):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "mask",
    [SlidingWindow(256), SinkWindow(64, 256), PowerAttention(block_size=64, window=2, sinks=1), Causal()],
    ids=lambda m: type(m).__name__,
)
def test_gpu_matches_math(dtype, mask):
    q, k, v = random_inputs((2, 8, 1000, 64), (2, 4, 1000, 64), (2, 4, 1000, 64), device="cuda", dtype=dtype)
    out = attention(q, k, v, mask=mask, backend="triton")
    reference = attention(q, k, v, mask=mask, backend="math")
    torch.testing.assert_close(out.float(), reference.float(), atol=2e-2, rtol=2e-2)
    for got, want in zip(grads_of([out], (q, k, v)), grads_of([reference], (q, k, v))):
        torch.testing.assert_close(got.float(), want.float(), atol=5e-2, rtol=5e-2)


# (forward, dq, dkdv) tile shapes, queries x keys
TILE_PLANS = {
    "tall_fwd": ((32, 16), (16, 16), (16, 16)),
    "mixed": ((32, 16), (32, 16), (16, 32)),
    "wide": ((16, 32), (16, 32), (32, 16)),
}


@pytest.mark.parametrize("plan", list(TILE_PLANS))
@pytest.mark.parametrize(
    "mask",
    [
        SlidingWindow(9),
        SinkWindow(2, 11),
        PowerAttention(block_size=8, window=2, sinks=1),
        AndMask(Causal(), KeyPadding(torch.tensor([37, 23]))),
    ],
    ids=["window", "sink_window", "power", "causal_padding"],
)
def test_each_pass_may_use_its_own_tile_shape(plan, mask):
    """Forward, dq and dk/dv with different (non-square) tiles give the math backend's values and
    gradients, with ragged edges (37 queries and keys) and grouped heads."""
    from kernels.block_sparse_attention import block_sparse_attention

    B, H, Hkv, L = 2, 4, 2, 37
    q, k, v = random_inputs((B, H, L, 16), (B, Hkv, L, 16), (B, Hkv, L, 8), device=DEVICE, seed=21)
    forward, dq, dkdv = (block_index_for(mask, B, H, L, L, q.device, tile=tile) for tile in TILE_PLANS[plan])
    out = block_sparse_attention(q, k, v, forward, dq_index=dq, dkdv_index=dkdv)
    reference = attention(q, k, v, mask=mask, backend="math")
    torch.testing.assert_close(out, reference, atol=2e-5, rtol=1e-4)
    for got, want in zip(grads_of([out], (q, k, v)), grads_of([reference], (q, k, v))):
        torch.testing.assert_close(got, want, atol=5e-5, rtol=1e-4)


def test_indexes_of_other_masks_are_refused():
    from kernels.block_sparse_attention import block_sparse_attention

    q, k, v = random_inputs((2, 2, 20, 16), (2, 2, 20, 16), (2, 2, 20, 16), device=DEVICE, seed=3)
    index = block_index_for(Causal(), 2, 2, 20, 20, q.device, 16)
    padded = block_index_for(KeyPadding(torch.tensor([20, 11])), 2, 2, 20, 20, q.device, 16)
    with pytest.raises(ValueError, match="dkdv_index has mask batch/heads"):
        block_sparse_attention(q, k, v, index, dkdv_index=padded)
    other_length = block_index_for(Causal(), 2, 2, 24, 24, q.device, 16)
    with pytest.raises(ValueError, match="built for Lq=24"):
        block_sparse_attention(q, k, v, index, dq_index=other_length)


def test_passes_take_coarser_tiles_only_where_they_waste_little(monkeypatch):
    """``pass_indexes`` keeps the base tiles for a pass whose own tiles would visit more than
    ``TILE_AREA_SLACK`` times the entries (PowerAttention's 8-blocks under 32-row tiles), and the
    result of the backend is the math backend's either way."""
    import kernels.block_sparse_attention as bsa
    from shared_attention.backends.triton import pass_indexes
    from shared_attention.masks import clear_mask_cache

    base = bsa.default_block_size(DEVICE)
    coarse = (2 * base, base)
    monkeypatch.setattr(
        bsa, "default_tiles", lambda device, head_dim: dict.fromkeys(("forward", "dq", "dkdv"), coarse)
    )
    clear_mask_cache()
    L = 8 * base
    window = SlidingWindow(3 * base)
    power = PowerAttention(block_size=8, window=1, sinks=1)
    chosen_window = pass_indexes(window, 1, 2, L, L, torch.device(DEVICE), 16)
    chosen_power = pass_indexes(power, 1, 2, L, L, torch.device(DEVICE), 16)
    assert all((i.block_m, i.block_n) == coarse for i in chosen_window)
    assert all((i.block_m, i.block_n) == (base, base) for i in chosen_power)
    coarse_power = block_index_for(power, 1, 2, L, L, torch.device(DEVICE), tile=coarse)
    assert coarse_power.visited_entries() > bsa.TILE_AREA_SLACK * chosen_power[0].visited_entries()
    q, k, v = random_inputs((1, 2, L, 16), (1, 2, L, 16), (1, 2, L, 16), device=DEVICE, seed=8)
    out = attention(q, k, v, mask=window, backend="triton")
    torch.testing.assert_close(out, attention(q, k, v, mask=window, backend="math"), atol=2e-5, rtol=1e-4)
    clear_mask_cache()


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(
    "tiles",
    [((128, 128), (128, 64), (64, 128)), ((128, 64), (128, 64), (64, 128)), ((64, 64), (64, 64), (64, 64))],
    ids=["fwd128x128", "fwd128x64", "square64"],
)
@pytest.mark.parametrize(
    "mask",
    [SlidingWindow(256), SinkWindow(64, 256), PowerAttention(block_size=64, window=2, sinks=1), Causal()],
    ids=lambda m: type(m).__name__,
)
def test_gpu_tile_plans_match_math(tiles, mask):
    from kernels.block_sparse_attention import block_sparse_attention

    q, k, v = random_inputs(
        (2, 8, 1000, 64), (2, 4, 1000, 64), (2, 4, 1000, 64), device="cuda", dtype=torch.bfloat16
    )
    forward, dq, dkdv = (block_index_for(mask, 2, 8, 1000, 1000, q.device, tile=t) for t in tiles)
    out = block_sparse_attention(q, k, v, forward, dq_index=dq, dkdv_index=dkdv)
    reference = attention(q, k, v, mask=mask, backend="math")
    torch.testing.assert_close(out.float(), reference.float(), atol=2e-2, rtol=2e-2)
    for got, want in zip(grads_of([out], (q, k, v)), grads_of([reference], (q, k, v))):
        torch.testing.assert_close(got.float(), want.float(), atol=5e-2, rtol=5e-2)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dim", [96, 128, 256])
def test_gpu_large_heads_match_math(dim):
    """Head dims above 64 take other launch settings (and 256 other stages per pass)."""
    mask = SinkWindow(16, 200)
    q, k, v = random_inputs(
        (1, 4, 600, dim), (1, 2, 600, dim), (1, 2, 600, dim), device="cuda", dtype=torch.bfloat16
    )
    out = attention(q, k, v, mask=mask, backend="triton")
    reference = attention(q, k, v, mask=mask, backend="math")
    torch.testing.assert_close(out.float(), reference.float(), atol=2e-2, rtol=2e-2)
    for got, want in zip(grads_of([out], (q, k, v)), grads_of([reference], (q, k, v))):
        torch.testing.assert_close(got.float(), want.float(), atol=5e-2, rtol=5e-2)
