"""CUDA-only checks: xformers and compiled FlexAttention against the math reference."""

import pytest
import torch
from sa_cases import MASKS, SHAPES, make_qkv

from shared_attention import SlidingWindow, attention, explain
from shared_attention.backends import get_backend
from shared_attention.functional import _normalise_mask, describe_call, select_backend
from shared_attention.masks import DenseMask

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

GPU_SHAPES = ["b2h4g2_l13", "b2h2g1_decode5of37", "b1h4g1_l130"]


def _cuda(tensors, requires_grad):
    return [t.detach().cuda().requires_grad_(requires_grad) for t in tensors]


def _to_cuda_mask(mask):
    return mask.cuda() if isinstance(mask, torch.Tensor) else mask


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("shape_name", GPU_SHAPES)
@pytest.mark.parametrize("backend", ["xformers", "flex", "sdpa"])
def test_cuda_backend_matches_math(backend, shape_name, mask_name):
    B, H, Hkv, Lq, Lk, D = SHAPES[shape_name]
    D = 16
    mask = _to_cuda_mask(MASKS[mask_name](B, H, Lq, Lk, torch.Generator().manual_seed(0)))
    q, k, v = _cuda(make_qkv(B, H, Hkv, Lq, Lk, D, seed=1), requires_grad=True)
    spec = _normalise_mask(mask, q, k)
    answer = get_backend(backend).supports(describe_call(q, k, v, spec, 0.0, False))
    if not answer.ok:
        pytest.skip(answer.reason)
    out = attention(q, k, v, mask=mask, backend=backend)
    reference = attention(q, k, v, mask=mask, backend="math")
    torch.testing.assert_close(out, reference, atol=2e-4, rtol=2e-3)
    upstream = torch.randn_like(out)
    got = torch.autograd.grad((out * upstream).sum(), (q, k, v))
    want = torch.autograd.grad((reference * upstream).sum(), (q, k, v))
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, atol=2e-3, rtol=2e-3)
    dense = spec or DenseMask(torch.ones(1, 1, 1, 1, dtype=torch.bool, device="cuda"))
    empty = ~dense.to_dense(B, H, Lq, Lk, q.device).expand(B, H, Lq, Lk).any(-1)
    assert (out.detach()[empty] == 0).all()


def test_auto_on_cuda_prefers_flex_for_block_sparse_masks():
    q, k, v = _cuda(make_qkv(1, 2, 2, 64, 64, 16, dtype=torch.float16), requires_grad=False)
    call = describe_call(q, k, v, SlidingWindow(8), 0.0, False)
    assert select_backend(call) == "flex"
    assert "auto -> flex" in explain(q, k, v, mask=SlidingWindow(8))
    assert attention(q, k, v, mask=SlidingWindow(8)).shape == q.shape
