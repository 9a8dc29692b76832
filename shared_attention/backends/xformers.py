"""Backend on ``xformers.ops.memory_efficient_attention`` (CUDA only)."""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

from shared_attention.backends.base import YES, AttentionCall, Backend, Support, no

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


TORCH_OPS_ENV = "SHARED_ATTENTION_XFORMERS_TORCH_OPS"


@functools.cache
def _xformers_ops() -> Any:
    import xformers.ops

    if os.environ.get(TORCH_OPS_ENV, "0") == "1":
        _allow_torch_backed_operators()
    return xformers.ops


def _cpp_library_error() -> Exception | None:
    """Why xformers' own C++/CUDA library did not load (None when it did)."""
    import xformers._cpp_lib

    return xformers._cpp_lib._cpp_library_load_exception


def _allow_torch_backed_operators() -> bool:
    """Let xformers run its PyTorch-backed operators when its own C++ library failed to load.

    xformers 0.0.35's FlashAttention-2 (``fa2F-pt``) and CUTLASS (``cutlassF-pt``) operators call
    PyTorch's own kernels (``aten::_flash_attention_forward``, ``aten::_efficient_attention_forward``,
    after checking their schemas at import), but xformers refuses every CUDA operator when its C++
    library was built for another torch, even these. Only its FlashAttention-3 operator needs that
    library, and it stays off. Opt-in (environment variable ``SHARED_ATTENTION_XFORMERS_TORCH_OPS=1``),
    because it relies on a private flag of xformers; returns whether the flag was changed.
    """
    if torch.version.cuda is None or _cpp_library_error() is None:
        return False
    import xformers.ops.fmha.common as fmha_common

    fmha_common._built_with_cuda = True
    return True


def _import_error() -> str | None:
    try:
        _xformers_ops()
    except Exception as err:  # xformers can fail at import with errors other than ImportError
        return f"{type(err).__name__}: {err}"
    return None


@functools.cache
def _operator_error(dtype: torch.dtype) -> str | None:
    """Whether xformers has a CUDA operator for ``dtype`` here: a wheel built for another Python or
    torch (or without CUDA) imports fine but has no operator, which would only show at run time."""
    x = torch.zeros(1, 8, 1, 16, device="cuda", dtype=dtype)
    try:
        _xformers_ops().memory_efficient_attention(x, x, x)
    except (NotImplementedError, RuntimeError) as err:
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        hint = ""
        if _cpp_library_error() is not None and os.environ.get(TORCH_OPS_ENV, "0") != "1":
            hint = (
                f"; its C++ library was built for another torch or Python, set {TORCH_OPS_ENV}=1 to run "
                "its PyTorch-backed operators (fa2F-pt, cutlassF-pt)"
            )
        return f"xformers has no CUDA operator for {dtype} here ({first.strip()}){hint}"
    return None


class XformersBackend(Backend):
    """xformers memory-efficient attention in the ``(B, L, H, D)`` layout.

    Masks become structured biases where one exists (lower-triangular, block-diagonal
    for ``VarLen`` with B=1) and a dense additive bias otherwise. Grouped-query heads
    are expanded. Fully masked rows are zeroed after the kernel.
    """

    name = "xformers"

    def supports(self, call: AttentionCall) -> Support:
        if call.device_type != "cuda":
            return no(f"xformers needs a CUDA device (got {call.device_type}); it has no CPU operator")
        err = _import_error()
        if err is not None:
            return no(f"xformers not installed or failed to import ({err})")
        if call.need_weights:
            return no("memory_efficient_attention does not return attention weights")
        if call.dtype not in _DTYPES:
            return no(f"xformers supports float16, bfloat16 and float32, not {call.dtype}")
        if call.head_dim % 8 or call.v_head_dim % 8:
            return no(
                f"xformers kernels need head dims that are multiples of 8 (got {call.head_dim}, "
                f"{call.v_head_dim})"
            )
        operator_error = _operator_error(call.dtype)
        if operator_error is not None:
            return no(operator_error)
        return YES

    def run(self, q, k, v, mask, scale, dropout_p, need_weights):
        ops = _xformers_ops()
        B, H, Lq, _ = q.shape
        Lk = k.shape[2]
        if k.shape[1] != H:
            k = k.repeat_interleave(H // k.shape[1], dim=1)
            v = v.repeat_interleave(H // v.shape[1], dim=1)
        bias = None if mask is None else mask.to_xformers_bias(B, H, Lq, Lk, q.device, q.dtype)
        out = ops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, p=dropout_p, scale=scale
        ).transpose(1, 2)
        if mask is not None:
            valid = mask.row_valid(B, H, Lq, Lk, q.device)
            if valid is not None:
                out = out.masked_fill(~valid, 0.0)
        return out
