"""Per-call overhead of ``attention()`` against calling SDPA directly.

Usage: ``python -m shared_attention.bench_overhead [out.json]``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from shared_attention.functional import attention
from shared_attention.masks import Causal

log = logging.getLogger(__name__)


def _best_times_us(
    variants: dict[str, Callable[[], object]], iters: int, warmup: int, repeats: int
) -> dict[str, float]:
    """Best-of-``repeats`` microseconds per call; variants interleave so load noise hits all alike."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / iters * 1e6)
    return best


def measure_overhead(
    B: int = 1,
    H: int = 4,
    L: int = 64,
    D: int = 32,
    *,
    iters: int = 500,
    warmup: int = 100,
    repeats: int = 10,
    device: str = "cpu",
    threads: int | None = 1,
) -> dict:
    """Microseconds per call (best of ``repeats``) for direct SDPA and ``attention()`` variants.

    Returns a dict with the shape, device, per-variant times and the overheads of
    ``attention()`` over the matching direct SDPA call. ``threads`` (default 1) pins
    torch's intra-op threads so the Python-side overhead is not drowned in scheduling noise.
    """
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=gen).to(device) for _ in range(3))
    causal = Causal()
    variants: dict[str, Callable[[], object]] = {
        "sdpa_direct": lambda: F.scaled_dot_product_attention(q, k, v),
        "attention_sdpa": lambda: attention(q, k, v, backend="sdpa"),
        "attention_auto": lambda: attention(q, k, v),
        "sdpa_direct_causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "attention_auto_causal": lambda: attention(q, k, v, mask=causal),
    }
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            times = _best_times_us(variants, iters, warmup, repeats)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
    result = {
        "shape": {"B": B, "H": H, "L": L, "D": D},
        "device": device,
        "torch": torch.__version__,
        "threads": used_threads,
        "us_per_call": times,
        "overhead_us": {
            "attention_sdpa": times["attention_sdpa"] - times["sdpa_direct"],
            "attention_auto": times["attention_auto"] - times["sdpa_direct"],
            "attention_auto_causal": times["attention_auto_causal"] - times["sdpa_direct_causal"],
        },
    }
    log.info("attention() overhead: %s", json.dumps(result, indent=2))
    return result


def main(**kwargs) -> dict:
    """Run ``measure_overhead(**kwargs)`` and write JSON to ``sys.argv[1]`` when given."""
    logging.basicConfig(level=logging.INFO)
    output = measure_overhead(**kwargs)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as fh:
            json.dump(output, fh, indent=2)
    return output


if __name__ == "__main__":
    main()
