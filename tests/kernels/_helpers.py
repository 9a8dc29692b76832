"""Shared helpers of the kernel tests."""

from __future__ import annotations

import importlib

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def interpreted_or_cuda() -> bool:
    """Kernels can run here: on a GPU, or in Triton's interpreter (conftest sets it without CUDA)."""
    if HAS_CUDA:
        return True
    module = importlib.import_module("kernels.block_sparse_attention")
    return module.INTERPRETED


def random_inputs(*shapes, dtype=torch.float32, device="cpu", seed=0, positive=()):
    """Float tensors of the given shapes that require grad; indices in ``positive`` are non-negative."""
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for i, shape in enumerate(shapes):
        t = torch.randn(*shape, generator=gen)
        if i in positive:
            t = t.abs() + 0.1
        tensors.append(t.to(device=device, dtype=dtype).requires_grad_(True))
    return tensors


def grads_of(outputs, inputs, seed=1):
    """Gradients of ``sum(out * g)`` for fixed random upstream gradients ``g``."""
    gen = torch.Generator().manual_seed(seed)
    total = 0
    for out in outputs:
        upstream = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
        total = total + (out * upstream).sum()
    return torch.autograd.grad(total, inputs)
