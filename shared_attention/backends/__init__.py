"""Backend registry and the ``auto`` preference order.

Backends register under a name; ``auto`` walks a per-device preference list and picks the
first registered backend that is an auto candidate for the call and supports it.
A later backend (e.g. ``triton``) registers with ``register_backend(backend, preference=...)``.
"""

from __future__ import annotations

from shared_attention.backends.base import AttentionCall, Backend, Support
from shared_attention.backends.flex import FlexBackend
from shared_attention.backends.math import MathBackend
from shared_attention.backends.sdpa import SdpaBackend
from shared_attention.backends.triton import TritonBackend
from shared_attention.backends.xformers import XformersBackend

__all__ = [
    "AttentionCall",
    "Backend",
    "Support",
    "register_backend",
    "unregister_backend",
    "get_backend",
    "backend_names",
    "auto_order",
    "registry_version",
]

_REGISTRY: dict[str, Backend] = {}
_PREFERENCE: dict[str, list[str]] = {
    "cuda": ["flex", "sdpa", "xformers", "math"],
    "cpu": ["sdpa", "flex", "math"],
}
_DEFAULT_PREFERENCE = ["sdpa", "math"]
_version = [0]


def registry_version() -> int:
    """Incremented on every registration, so callers can invalidate cached decisions."""
    return _version[0]


def register_backend(backend: Backend, *, preference: dict[str, int] | None = None) -> None:
    """Register (or replace) ``backend`` under ``backend.name``.

    Args:
        preference: device type -> position in that device's ``auto`` order (0 = first).
    """
    if not backend.name:
        raise ValueError(f"backend {backend!r} has no name")
    _REGISTRY[backend.name] = backend
    for device_type, position in (preference or {}).items():
        order = _PREFERENCE.setdefault(device_type, list(_DEFAULT_PREFERENCE))
        if backend.name in order:
            order.remove(backend.name)
        order.insert(position, backend.name)
    _version[0] += 1


def unregister_backend(name: str) -> Backend:
    """Remove a registered backend (its place in the preference lists is kept for re-registration)."""
    backend = _REGISTRY.pop(name)
    _version[0] += 1
    return backend


def get_backend(name: str) -> Backend:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; registered: {sorted(_REGISTRY)}") from None


def backend_names() -> list[str]:
    return list(_REGISTRY)


def auto_order(device_type: str) -> list[str]:
    """Names in ``auto`` preference order for a device type (registered backends only)."""
    order = _PREFERENCE.get(device_type, _DEFAULT_PREFERENCE)
    return [name for name in order if name in _REGISTRY]


for _backend in (MathBackend(), SdpaBackend(), XformersBackend(), FlexBackend()):
    register_backend(_backend)
# Block-sparse Triton kernel: first on CUDA for the calls it is an auto candidate for (block-sparse
# masks on large score matrices, see TritonBackend.auto_candidate); never in the CPU order.
register_backend(TritonBackend(), preference={"cuda": 0})
