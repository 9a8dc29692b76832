import math
import random
import subprocess
import sys

import pytest
import torch
from sa_cases import MASKS, SHAPES, make_qkv

from shared_attention import (
    BackendUnsupported,
    Causal,
    KeyPadding,
    SinkWindow,
    SlidingWindow,
    attention,
    available_backends,
    explain,
)
from shared_attention.backends import get_backend, register_backend, unregister_backend
from shared_attention.backends.base import AttentionCall, Backend, Support
from shared_attention.functional import _normalise_mask, describe_call, force_backend, select_backend
from shared_attention.masks import DenseMask

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

ATOL, RTOL = 1e-5, 1e-4


def _runs_here(name):
    plain = AttentionCall(
        device_type="cpu",
        dtype=torch.float32,
        batch=1,
        heads=1,
        kv_heads=1,
        q_len=4,
        kv_len=4,
        head_dim=4,
        v_head_dim=4,
    )
    return get_backend(name).supports(plain).ok


# Backends that can run on this CPU machine; CUDA-only ones are covered in test_attn_gpu.py.
OTHER_BACKENDS = [name for name in available_backends() if name != "math" and _runs_here(name)]


def _mask_for(mask_name, shape_name, seed=0):
    B, H, Hkv, Lq, Lk, D = SHAPES[shape_name]
    gen = torch.Generator().manual_seed(seed)
    return MASKS[mask_name](B, H, Lq, Lk, gen)


def _dense(mask, B, H, Lq, Lk):
    if mask is None:
        return torch.ones(B, H, Lq, Lk, dtype=torch.bool)
    spec = mask if not isinstance(mask, torch.Tensor) else DenseMask(mask)
    return spec.to_dense(B, H, Lq, Lk).expand(B, H, Lq, Lk)


def _naive_attention(q, k, v, allowed, scale):
    """Row-by-row float64 attention straight from the definition (empty rows -> zeros)."""
    B, H, Lq, _ = q.shape
    group = H // k.shape[1]
    out = torch.zeros(B, H, Lq, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(Lq):
                keys = allowed[b, h, i].nonzero().flatten()
                if keys.numel() == 0:
                    continue
                scores = (k[b, h // group, keys].double() @ q[b, h, i].double()) * scale
                weights = torch.softmax(scores, dim=0)
                out[b, h, i] = weights @ v[b, h // group, keys].double()
    return out


@pytest.mark.parametrize(
    "mask_name",
    [
        "none",
        "causal_bottom_right",
        "causal_neg_offset",
        "key_padding",
        "varlen_causal",
        "sink_window",
        "block_sparse_heads",
        "bool_tensor",
    ],
)
def test_math_matches_definition(mask_name):
    shape = "b2h2g1_decode5of37" if mask_name != "varlen_causal" else "b2h4g2_l13"
    B, H, Hkv, Lq, Lk, D = SHAPES[shape]
    q, k, v = make_qkv(B, H, Hkv, Lq, Lk, D, seed=1)
    mask = _mask_for(mask_name, shape)
    out, weights = attention(q, k, v, mask=mask, backend="math", need_weights=True)
    allowed = _dense(mask, B, H, Lq, Lk)
    expected = _naive_attention(q, k, v, allowed, 1 / math.sqrt(D))
    torch.testing.assert_close(out.double(), expected, atol=ATOL, rtol=RTOL)
    assert weights.shape == (B, H, Lq, Lk)
    assert not weights[~allowed].any()
    row_sums = weights.sum(-1)
    has_keys = allowed.any(-1)
    torch.testing.assert_close(row_sums[has_keys], torch.ones_like(row_sums[has_keys]))
    assert (row_sums[~has_keys] == 0).all()


def _grads(q, k, v, out, seed=3):
    gen = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    return torch.autograd.grad((out * upstream).sum(), (q, k, v))


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_backend_matches_math(backend, shape_name, mask_name):
    B, H, Hkv, Lq, Lk, D = SHAPES[shape_name]
    mask = _mask_for(mask_name, shape_name, seed=hash((shape_name, mask_name)) % 1000)
    q, k, v = make_qkv(B, H, Hkv, Lq, Lk, D, seed=2, requires_grad=True)
    impl = get_backend(backend)
    spec = _normalise_mask(mask, q, k)
    with_grad = impl.supports(describe_call(q, k, v, spec, 0.0, False))
    with torch.no_grad():
        no_grad = impl.supports(describe_call(q, k, v, spec, 0.0, False))
    if not no_grad.ok:
        with pytest.raises(BackendUnsupported, match="cannot serve"):
            attention(q, k, v, mask=mask, backend=backend)
        pytest.skip(f"{backend} does not claim this call: {no_grad.reason}")

    reference = attention(q, k, v, mask=mask, backend="math")
    allowed = _dense(mask, B, H, Lq, Lk)
    if with_grad.ok:
        out = attention(q, k, v, mask=mask, backend=backend)
        torch.testing.assert_close(out, reference, atol=ATOL, rtol=RTOL)
        for got, want in zip(_grads(q, k, v, out), _grads(q, k, v, reference)):
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    else:
        with torch.no_grad():
            out = attention(q, k, v, mask=mask, backend=backend)
        torch.testing.assert_close(out, reference.detach(), atol=ATOL, rtol=RTOL)
    empty_rows = ~allowed.any(-1)
    assert (out.detach()[empty_rows] == 0).all()


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_float64_and_value_dim(backend):
    q, k, v = make_qkv(2, 4, 1, 9, 11, 8, dtype=torch.float64, Dv=5, seed=4)
    mask = KeyPadding(torch.tensor([3, 11]))
    out = attention(q, k, v, mask=mask, backend=backend, scale=0.25)
    allowed = mask.to_dense(2, 4, 9, 11).expand(2, 4, 9, 11)
    expected = _naive_attention(q, k, v, allowed, 0.25)
    assert out.shape == (2, 4, 9, 5)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-9)


def test_bfloat16_math_accumulates_in_float32():
    q, k, v = make_qkv(1, 2, 2, 16, 16, 8, seed=5)
    out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), backend="math", mask=Causal())
    reference = attention(q, k, v, backend="math", mask=Causal())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_fully_masked_rows_give_zeros_and_finite_grads(backend):
    q, k, v = make_qkv(2, 2, 2, 6, 6, 4, seed=6, requires_grad=True)
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[0, 0, 2] = False
    mask[1] = False
    out = attention(q, k, v, mask=mask, backend=backend)
    assert (out[0, :, 2] == 0).all() and (out[1] == 0).all()
    assert out[0, :, 3].abs().sum() > 0
    grads = _grads(q, k, v, out)
    for grad in grads:
        assert torch.isfinite(grad).all()
    assert (grads[0][1] == 0).all()


def test_fully_masked_rows_flex_forward():
    q, k, v = make_qkv(1, 2, 2, 6, 6, 4, seed=6)
    out = attention(q, k, v, mask=Causal(-2), backend="flex")
    assert (out[:, :, :2] == 0).all()
    torch.testing.assert_close(out, attention(q, k, v, mask=Causal(-2), backend="math"))


def test_dropout_changes_output_and_keeps_shape():
    torch.manual_seed(0)
    q, k, v = make_qkv(1, 2, 2, 8, 8, 4, seed=7)
    for backend in ("math", "sdpa", "auto"):
        out = attention(q, k, v, dropout_p=0.5, backend=backend)
        assert out.shape == q.shape
        assert not torch.allclose(out, attention(q, k, v, backend=backend))


@pytest.mark.parametrize(
    ("backend", "kwargs", "requires_grad", "reason"),
    [
        ("sdpa", {"need_weights": True}, False, "weights"),
        ("xformers", {}, False, "CUDA"),
        ("flex", {"dropout_p": 0.1}, False, "dropout"),
        ("flex", {"need_weights": True}, False, "weights"),
        ("flex", {}, True, "backward on CPU"),
    ],
)
def test_unsupported_calls_raise_with_reason(backend, kwargs, requires_grad, reason):
    q, k, v = make_qkv(1, 2, 2, 8, 8, 4, requires_grad=requires_grad)
    with pytest.raises(BackendUnsupported, match=reason):
        attention(q, k, v, backend=backend, **kwargs)


def test_backend_unsupported_is_runtime_error():
    assert issubclass(BackendUnsupported, RuntimeError)


def test_unknown_backend_raises_value_error():
    q, k, v = make_qkv(1, 1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        attention(q, k, v, backend="nope")


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (((1, 4, 8, 16), (1, 3, 8, 16), (1, 3, 8, 16)), "multiple of k/v heads"),
        (((1, 4, 8, 16), (1, 4, 8, 8), (1, 4, 8, 16)), "same head dim"),
        (((1, 4, 8, 16), (1, 4, 8, 16), (1, 4, 9, 16)), "same length"),
        (((2, 4, 8, 16), (1, 4, 8, 16), (1, 4, 8, 16)), "batch sizes"),
        (((4, 8, 16), (1, 4, 8, 16), (1, 4, 8, 16)), "q must be 4-D"),
    ],
)
def test_shape_validation(shapes, message):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=message) as info:
        attention(q, k, v)
    if "4-D" not in message:
        assert str(tuple(shapes[0])) in str(info.value)


def test_dtype_and_mask_validation():
    q, k, v = make_qkv(1, 2, 2, 4, 4, 4)
    with pytest.raises(ValueError, match="share a dtype"):
        attention(q, k.double(), v)
    with pytest.raises(ValueError, match="floating"):
        attention(q.long(), k, v)
    with pytest.raises(ValueError, match="must be bool"):
        attention(q, k, v, mask=torch.ones(4, 4))
    with pytest.raises(ValueError, match="not broadcastable"):
        attention(q, k, v, mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="dropout_p"):
        attention(q, k, v, dropout_p=1.5)
    with pytest.raises(ValueError, match="KeyPadding has 3 lengths"):
        attention(q, k, v, mask=KeyPadding(torch.tensor([1, 2, 3])))


def test_explain_lists_every_backend_and_auto_choice():
    q, k, v = make_qkv(1, 2, 2, 8, 8, 4)
    text = explain(q, k, v, mask=SlidingWindow(3))
    for name in available_backends():
        assert name in text
    assert "auto -> sdpa" in text
    assert "xformers needs a CUDA device" in text
    assert "auto -> math" in explain(q, k, v, need_weights=True)


def test_force_backend_overrides_and_restores():
    q, k, v = make_qkv(1, 2, 2, 8, 8, 4)
    with force_backend("math"):
        out, weights = attention(q, k, v, backend="sdpa", need_weights=True)
        with force_backend(None):
            with pytest.raises(BackendUnsupported):
                attention(q, k, v, backend="sdpa", need_weights=True)
    assert weights.shape == (1, 2, 8, 8)
    with pytest.raises(BackendUnsupported):
        attention(q, k, v, backend="sdpa", need_weights=True)


def _random_mask(rng, B, H, Lq, Lk):
    choices = [
        None,
        Causal(rng.randint(-2, 3)),
        KeyPadding(torch.tensor([rng.randint(0, Lk) for _ in range(B)])),
        SlidingWindow(rng.randint(1, 6), causal=rng.random() < 0.5),
        SinkWindow(rng.randint(0, 3), rng.randint(1, 4)),
        torch.rand(B, 1, Lq, Lk) < 0.5,
        Causal() & KeyPadding(torch.full((B,), Lk)),
    ]
    return choices[rng.randrange(len(choices))]


def test_auto_never_picks_a_backend_that_fails():
    rng = random.Random(0)
    torch.manual_seed(0)
    seen = set()
    for _ in range(150):
        B, Hkv = rng.randint(1, 2), rng.randint(1, 2)
        H = Hkv * rng.randint(1, 2)
        Lq, Lk, D = rng.randint(1, 12), rng.randint(1, 12), rng.choice([4, 8])
        dtype = rng.choice([torch.float32, torch.float64, torch.bfloat16])
        need_weights = rng.random() < 0.3
        dropout = rng.choice([0.0, 0.2])
        requires_grad = rng.random() < 0.5
        q, k, v = make_qkv(
            B, H, Hkv, Lq, Lk, D, dtype=dtype, requires_grad=requires_grad, seed=rng.randint(0, 100)
        )
        mask = _random_mask(rng, B, H, Lq, Lk)
        spec = _normalise_mask(mask, q, k)
        chosen = select_backend(describe_call(q, k, v, spec, dropout, need_weights))
        seen.add(chosen)
        result = attention(q, k, v, mask=mask, dropout_p=dropout, need_weights=need_weights)
        out = result[0] if need_weights else result
        assert out.shape == (B, H, Lq, D)
        assert torch.isfinite(out).all()
        if requires_grad:
            out.float().sum().backward()
            assert torch.isfinite(q.grad).all()
    assert seen == {"sdpa", "math"}


def _cuda_call(**overrides):
    base = dict(
        device_type="cuda",
        dtype=torch.float16,
        batch=2,
        heads=4,
        kv_heads=4,
        q_len=128,
        kv_len=128,
        head_dim=64,
        v_head_dim=64,
    )
    base.update(overrides)
    return AttentionCall(**base)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "sdpa"),
        ({"mask_kind": "Causal"}, "sdpa"),
        ({"mask_kind": "SlidingWindow", "block_sparse_mask": True}, "flex"),
        ({"mask_kind": "SlidingWindow", "block_sparse_mask": True, "dropout": True}, "sdpa"),
        ({"need_weights": True}, "math"),
    ],
)
def test_auto_policy_on_cuda_description(overrides, expected):
    call = _cuda_call(**overrides)
    chosen = select_backend(call)
    assert chosen == expected
    assert get_backend(chosen).supports(call).ok


def test_auto_decision_cache_follows_grad_mode():
    q, k, v = make_qkv(1, 2, 2, 8, 8, 4, requires_grad=True)
    with torch.no_grad():
        attention(q, k, v, backend="flex")
    with pytest.raises(BackendUnsupported, match="backward"):
        attention(q, k, v, backend="flex")


class _DoublingBackend(Backend):
    """Test backend: math attention, output doubled so its use is visible."""

    name = "doubling"

    def supports(self, call):
        return Support(call.mask_kind == "none", "only unmasked calls")

    def run(self, q, k, v, mask, scale, dropout_p, need_weights):
        return 2 * get_backend("math").run(q, k, v, mask, scale, dropout_p, False)


def test_registered_backend_joins_auto_explain_and_forcing():
    q, k, v = make_qkv(1, 2, 2, 8, 8, 4)
    baseline = attention(q, k, v)
    register_backend(_DoublingBackend(), preference={"cpu": 0})
    try:
        assert "doubling" in available_backends()
        torch.testing.assert_close(attention(q, k, v), 2 * baseline)
        torch.testing.assert_close(
            attention(q, k, v, mask=Causal()), attention(q, k, v, mask=Causal(), backend="sdpa")
        )
        assert "auto -> doubling" in explain(q, k, v)
        with pytest.raises(BackendUnsupported, match="only unmasked calls"):
            attention(q, k, v, mask=Causal(), backend="doubling")
    finally:
        unregister_backend("doubling")
    torch.testing.assert_close(attention(q, k, v), baseline)


def test_core_does_not_import_apps_or_frameworks():
    code = (
        "import sys, shared_attention, torch; q = torch.randn(1, 1, 4, 8); "
        "shared_attention.attention(q, q, q); "
        "bad = [m for m in ('lightning', 'pytorch_lightning', 'hydra', 'apps', 'xformers') if m in sys.modules]; "
        "sys.exit(str(bad) if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
