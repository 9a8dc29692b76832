"""Timing and machine description shared by the benchmarks."""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall time measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(
    fn: Callable[[], Any],
    device: torch.device,
    repeats: int,
    *,
    warmup: int = 1,
    max_seconds: float | None = None,
) -> float:
    """Median wall time of `fn()` in seconds over `repeats` runs after `warmup` calls.

    With `max_seconds`, stops repeating once one run takes longer (long cases on CPU).
    """
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - start)
        if max_seconds is not None and samples[-1] > max_seconds:
            break
    return statistics.median(samples)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    match = re.search(r"model name\s*:\s*(.+)", text)
    return match.group(1).strip() if match else ""


def machine() -> dict[str, Any]:
    """What a result was measured on: versions, CPU, threads and GPU."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model() or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
