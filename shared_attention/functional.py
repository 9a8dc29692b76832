"""``attention()``: the one entry point for softmax attention, dispatching to backends."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import Tensor

from shared_attention import backends as _backends
from shared_attention.backends.base import AttentionCall, Support
from shared_attention.masks import DenseMask, MaskSpec

__all__ = [
    "attention",
    "explain",
    "available_backends",
    "force_backend",
    "BackendUnsupported",
    "select_backend",
    "describe_call",
]

log = logging.getLogger(__name__)

_forced: ContextVar[str | None] = ContextVar("shared_attention_forced_backend", default=None)
_DECISIONS: dict[tuple, str] = {}
_DECISIONS_MAX = 4096
_decisions_version = [-1]
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class BackendUnsupported(RuntimeError):
    """A forced backend cannot serve the call (the message says why), or none can."""


@contextlib.contextmanager
def force_backend(name: str | None) -> Iterator[None]:
    """Within the block, every ``attention()`` call uses backend ``name`` (whatever it asked for).

    ``None`` lifts an outer override. Nested blocks restore the outer setting on exit.
    """
    if name is not None:
        _backends.get_backend(name)
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def available_backends() -> list[str]:
    """Names of the registered backends (whether or not they can run on this machine)."""
    return _backends.backend_names()


def _shape_error(message: str, q: Tensor, k: Tensor, v: Tensor) -> ValueError:
    return ValueError(f"{message} (q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)})")


def _validate(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ValueError(f"attention: {name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be 4-D (B, H, L, D), got shape {tuple(t.shape)}")
        if t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"attention: {name} must be a floating tensor, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, H, _, D = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise _shape_error("attention: batch sizes of q, k, v differ", q, k, v)
    if k.shape[1] != v.shape[1]:
        raise _shape_error("attention: k and v must have the same number of heads", q, k, v)
    if k.shape[2] != v.shape[2]:
        raise _shape_error("attention: k and v must have the same length", q, k, v)
    if k.shape[3] != D:
        raise _shape_error("attention: q and k must have the same head dim", q, k, v)
    if k.shape[1] == 0 or H % k.shape[1] != 0:
        raise _shape_error(
            f"attention: q heads ({H}) must be a multiple of k/v heads ({k.shape[1]})", q, k, v
        )


def _tensor_mask(mask: Tensor, q: Tensor) -> DenseMask:
    if not isinstance(mask, Tensor):
        raise ValueError(
            f"attention: mask must be None, a MaskSpec or a bool Tensor, got {type(mask).__name__}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"attention: mask tensor must be bool (True = may attend), got {mask.dtype}")
    if isinstance(q, Tensor) and mask.device != q.device:
        raise ValueError(f"attention: mask is on {mask.device} but q is on {q.device}")
    return DenseMask(mask)


def _normalise_mask(mask: MaskSpec | Tensor | None, q: Tensor, k: Tensor) -> MaskSpec | None:
    """The mask as a validated ``MaskSpec`` (bool tensors become ``DenseMask``) or None."""
    spec = mask if mask is None or isinstance(mask, MaskSpec) else _tensor_mask(mask, q)
    if spec is not None:
        spec.validate(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return spec


def describe_call(
    q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec | None, dropout_p: float, need_weights: bool
) -> AttentionCall:
    """The ``AttentionCall`` backends inspect in ``supports``."""
    B, H, Lq, D = q.shape
    return AttentionCall(
        device_type=q.device.type,
        dtype=q.dtype,
        batch=B,
        heads=H,
        kv_heads=k.shape[1],
        q_len=Lq,
        kv_len=k.shape[2],
        head_dim=D,
        v_head_dim=v.shape[3],
        mask_kind="none" if mask is None else mask.kind,
        block_sparse_mask=mask is not None and mask.block_sparse,
        dropout=dropout_p > 0,
        need_weights=need_weights,
        requires_grad=torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad),
        mask=mask,
    )


def _pick(call: AttentionCall) -> tuple[str | None, dict[str, Support]]:
    answers: dict[str, Support] = {}
    chosen = None
    for name in _backends.auto_order(call.device_type):
        backend = _backends.get_backend(name)
        if not backend.auto_candidate(call):
            continue
        answer = backend.supports(call)
        answers[name] = answer
        if answer.ok:
            chosen = name
            break
    return chosen, answers


def select_backend(call: AttentionCall) -> str:
    """The backend ``auto`` picks for ``call``; raises BackendUnsupported if none can serve it."""
    chosen, answers = _pick(call)
    if chosen is None:
        reasons = "; ".join(f"{n}: {a.reason}" for n, a in answers.items())
        raise BackendUnsupported(f"no attention backend supports this call ({reasons})")
    return chosen


def _decision_key(
    q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec | None, dropout_p: float, need_weights: bool, backend: str
) -> tuple | None:
    """Everything validation and ``supports`` look at; None while tracing (shapes may be symbolic)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    if not (isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)):
        return None
    requires_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    mask_key = None if mask is None else (type(mask), mask.block_sparse)
    return (
        backend,
        q.shape,
        k.shape,
        v.shape,
        q.dtype,
        k.dtype,
        v.dtype,
        q.device,
        k.device,
        v.device,
        mask_key,
        dropout_p > 0,
        need_weights,
        requires_grad,
    )


def _decide(
    q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec | None, dropout_p: float, need_weights: bool, backend: str
) -> str:
    call = describe_call(q, k, v, mask, dropout_p, need_weights)
    if backend == "auto":
        return select_backend(call)
    answer = _backends.get_backend(backend).supports(call)
    if not answer.ok:
        raise BackendUnsupported(f"attention backend {backend!r} cannot serve this call: {answer.reason}")
    return backend


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: MaskSpec | Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
    need_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Softmax attention ``softmax(q k^T * scale, masked) v``, computed by a chosen backend.

    Args:
        q: ``(B, H, Lq, D)``.
        k: ``(B, Hkv, Lk, D)`` with ``H % Hkv == 0`` (grouped-query: query head ``h`` uses
            kv head ``h // (H // Hkv)``).
        v: ``(B, Hkv, Lk, Dv)``.
        mask: None, a ``MaskSpec``, or a bool tensor broadcastable to ``(B, H, Lq, Lk)``
            (True = may attend). Query rows that may attend no key output zeros (and zero
            weights) in every backend.
        scale: score scale; default ``1 / sqrt(D)``.
        dropout_p: dropout on the attention weights (applied whenever > 0; pass 0 in eval).
        backend: ``"auto"`` or a registered name (``math``, ``sdpa``, ``xformers``, ``flex``, ...).
            A forced backend that cannot serve the call raises ``BackendUnsupported``.
            ``force_backend(name)`` overrides this argument.
        need_weights: also return the weights ``(B, H, Lq, Lk)`` (pre-dropout); only ``math`` can.

    Returns:
        ``out (B, H, Lq, Dv)``, or ``(out, weights)`` when ``need_weights``.
    """
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p}")
    spec = mask if mask is None or isinstance(mask, MaskSpec) else _tensor_mask(mask, q)
    requested = _forced.get() or backend
    if _decisions_version[0] != _backends.registry_version():
        _DECISIONS.clear()
        _decisions_version[0] = _backends.registry_version()
    key = _decision_key(q, k, v, spec, dropout_p, need_weights, requested)
    name = _DECISIONS.get(key) if key is not None else None
    if name is None:
        if not torch.jit.is_tracing():
            _validate(q, k, v)
        name = _decide(q, k, v, spec, dropout_p, need_weights, requested)
        if key is not None:
            if len(_DECISIONS) >= _DECISIONS_MAX:
                _DECISIONS.clear()
            _DECISIONS[key] = name
    if spec is not None:
        spec.validate(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return _backends.get_backend(name).run(q, k, v, spec, scale, dropout_p, need_weights)


def explain(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: MaskSpec | Tensor | None = None,
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> str:
    """A table of every backend's answer for this call (yes/no and why) and ``auto``'s pick.

    The table is logged at INFO level and returned.
    """
    _validate(q, k, v)
    spec = _normalise_mask(mask, q, k)
    call = describe_call(q, k, v, spec, dropout_p, need_weights)
    chosen, _ = _pick(call)
    auto_names = set(_backends.auto_order(call.device_type))
    rows = []
    for name in _backends.backend_names():
        backend = _backends.get_backend(name)
        answer = backend.supports(call)
        if name not in auto_names:
            note = "not in auto order for this device"
        elif not backend.auto_candidate(call):
            note = "auto skips it for this call"
        else:
            note = ""
        rows.append((name, "yes" if answer.ok else "no", answer.reason, note))
    width = max(len(r[0]) for r in rows)
    header = (
        f"attention call: {call.device_type} {call.dtype}, q ({call.batch}, {call.heads}, {call.q_len}, "
        f"{call.head_dim}), k/v heads {call.kv_heads}, Lk {call.kv_len}, mask {call.mask_kind}, "
        f"dropout {call.dropout}, need_weights {call.need_weights}, requires_grad {call.requires_grad}"
    )
    lines = [header, f"{'backend':<{width}}  ok   reason"]
    for name, ok, reason, note in rows:
        lines.append(f"{name:<{width}}  {ok:<4} {reason}" + (f" [{note}]" if note else ""))
    lines.append(f"auto -> {chosen if chosen is not None else 'none (no backend supports this call)'}")
    text = "\n".join(lines)
    log.info("%s", text)
    return text
