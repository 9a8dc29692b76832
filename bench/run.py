"""Attention benchmarks: every backend on a grid of shapes and masks, plus dispatcher overhead.

`python -m bench.run --out bench/results [--quick]` writes `attention_<device>.json` with, per
case, the backend, shape, mask, median forward and forward+backward time, achieved TFLOP/s and
(on CUDA) peak memory, plus the machine it ran on. Unsupported combinations are recorded with the
backend's reason instead of a time.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import machine, median_time
from shared_attention import BackendUnsupported, Causal, SlidingWindow, attention, available_backends

log = logging.getLogger("bench")


def attention_flops(batch: int, heads: int, q_len: int, k_len: int, dim: int, density: float) -> float:
    """Forward FLOPs of softmax attention: two matmuls of 2·B·H·Lq·Lk·D, scaled by mask density."""
    return 4.0 * batch * heads * q_len * k_len * dim * density


def _measure(
    backend: str,
    shape: tuple[int, int, int, int],
    mask: Any,
    density: float,
    dtype: torch.dtype,
    device: torch.device,
    repeats: int,
) -> dict[str, float]:
    q, k, v = (torch.randn(*shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))

    def forward() -> torch.Tensor:
        return attention(q, k, v, mask=mask, backend=backend)

    grad = torch.randn_like(forward())

    def forward_backward() -> None:
        forward().backward(grad)

    forward_s = median_time(forward, device, repeats)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    both_s = median_time(forward_backward, device, repeats)
    flops = attention_flops(*shape[:3], shape[2], shape[3], density)
    result = {
        "forward_ms": forward_s * 1e3,
        "forward_backward_ms": both_s * 1e3,
        "forward_tflops": flops / forward_s / 1e12,
        "forward_backward_tflops": 3.5 * flops / both_s / 1e12,
    }
    if device.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def bench_attention(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = (
        [(2, 8, 256, 64), (1, 8, 1024, 64)]
        if quick or device.type == "cpu"
        else [(4, 16, 1024, 64), (2, 16, 4096, 64), (1, 16, 8192, 128)]
    )
    masks = {"none": None, "causal": Causal(), "window256": SlidingWindow(256)}
    repeats = 3 if device.type == "cpu" else 20
    results = []
    for batch, heads, length, dim in shapes:
        for mask_name, mask in masks.items():
            dense = mask.to_dense(1, 1, length, length, "cpu") if mask is not None else None
            density = float(dense.float().mean()) if dense is not None else 1.0
            for backend in available_backends():
                case = {
                    "backend": backend,
                    "shape": [batch, heads, length, dim],
                    "mask": mask_name,
                    "dtype": str(dtype).replace("torch.", ""),
                    "device": device.type,
                }
                try:
                    case.update(
                        _measure(backend, (batch, heads, length, dim), mask, density, dtype, device, repeats)
                    )
                except BackendUnsupported as err:
                    case["unsupported"] = str(err)
                log.info("%s", case)
                results.append(case)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--quick", action="store_true", help="small shapes only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    from shared_attention.bench_overhead import measure_overhead

    report = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "overhead": measure_overhead(device=args.device),
        "attention": bench_attention(device, args.quick),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"attention_{device.type}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
