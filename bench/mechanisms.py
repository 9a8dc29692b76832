"""Attention mechanisms against sequence length: forward and forward+backward time and peak memory.

`python -m bench.mechanisms --out bench/results [--lengths 256 512 ...] [--max-gb 6] [--max-seconds 30]
[--threads N]`
writes `mechanisms_<device>.json` (and a Markdown table beside it) with, per mechanism and length,
the median wall time of a forward and of a forward+backward pass of one causal self-attention layer
(B=1, E=128, H=4 by default) and the peak memory of each: on CUDA from the allocator, on CPU from
the process's resident-set high-water mark (``VmHWM``, reset before each case through
``/proc/self/clear_refs``) minus the resident set before the case. Lengths run in ascending order;
a mechanism stops at the first length whose predicted next cost (four times the last, the
quadratic worst case) would pass ``--max-gb`` or ``--max-seconds``, and the skipped lengths are
recorded with the reason.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.common import machine, median_time
from shared_attention import (
    BackendUnsupported,
    Causal,
    DeconstructedAttention,
    LinearAttention,
    MagnitudeAwareLinearAttention,
    MultiHeadAttention,
    NTKAttention,
    PowerAttention,
    RelativeConvAttention,
    SigmoidAttention,
    SinkWindow,
    SlidingWindow,
    SparsePatternAttention,
)

log = logging.getLogger("bench.mechanisms")

DEFAULT_LENGTHS = (256, 512, 1024, 2048, 4096, 8192, 16384)

Factory = Callable[[int, int, int], nn.Module]

MECHANISMS: dict[str, Factory] = {
    "softmax": lambda e, h, n: MultiHeadAttention(e, h),
    "linear": lambda e, h, n: LinearAttention(e, h, chunk_size=64),
    "mala": lambda e, h, n: MagnitudeAwareLinearAttention(e, h, chunk_size=64),
    "sigmoid": lambda e, h, n: SigmoidAttention(e, h),
    "rcmha": lambda e, h, n: RelativeConvAttention(e, h),
    "ntk": lambda e, h, n: NTKAttention(e, h, init_std=0.02),
    "deconstruct_no_mixing": lambda e, h, n: DeconstructedAttention(e, h, variant="no_mixing"),
    "deconstruct_fixed": lambda e, h, n: DeconstructedAttention(e, h, variant="fixed_sequence", max_len=n),
    "deconstruct_cosine": lambda e, h, n: DeconstructedAttention(
        e, h, variant="similarity", similarity="cosine"
    ),
    # queries/keys from the recorded first-layer input (a layer built alone records its own input)
    "deconstruct_static": lambda e, h, n: DeconstructedAttention(e, h, variant="static_qk"),
    "window": lambda e, h, n: SparsePatternAttention(e, h, pattern=SlidingWindow(256)),
    "sink_window": lambda e, h, n: SparsePatternAttention(e, h, pattern=SinkWindow(4, 252)),
    "power": lambda e, h, n: SparsePatternAttention(
        e, h, pattern=PowerAttention(block_size=64, window=1, sinks=1)
    ),
    "power[flex]": lambda e, h, n: SparsePatternAttention(
        e, h, pattern=PowerAttention(block_size=64, window=1, sinks=1), backend="flex"
    ),
}


def _status_mb(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"{field}:\s+(\d+) kB", text)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field} line")
    return int(match.group(1)) / 1024


class PeakMemory:
    """Peak memory (MB) of the code run between ``start()`` and ``stop()``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = 0.0

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
        else:
            Path("/proc/self/clear_refs").write_text("5")
            self.base = _status_mb("VmRSS")

    def stop(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20 - self.base
        return max(_status_mb("VmHWM") - self.base, 0.0)


def _return_freed_memory_to_the_os() -> None:
    """Make glibc serve every allocation over 64 KiB by mmap (returned on free), so the resident
    set falls back after each case and the high-water mark measures the case alone."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        log.warning("glibc not found: CPU peak memory may be under-reported after large cases")
        return
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 64 * 1024)


def measure(
    name: str, length: int, *, embed_dim: int, num_heads: int, device: torch.device, repeats: int
) -> dict[str, Any]:
    """Time and peak memory of one causal self-attention layer of mechanism ``name`` at ``length``."""
    torch.manual_seed(0)
    layer = MECHANISMS[name](embed_dim, num_heads, length).to(device)
    x = torch.randn(1, length, embed_dim, device=device, requires_grad=True)
    mask = Causal()
    memory = PeakMemory(device)

    def forward() -> None:
        with torch.no_grad():
            layer(x, mask=mask)

    def forward_backward() -> None:
        layer(x, mask=mask).sum().backward()
        layer.zero_grad(set_to_none=True)
        x.grad = None

    memory.start()
    forward()
    row: dict[str, Any] = {"mechanism": name, "length": length, "forward_peak_mb": round(memory.stop(), 1)}
    row["forward_s"] = median_time(forward, device, repeats, max_seconds=5.0)
    try:
        memory.start()
        forward_backward()
        row["forward_backward_peak_mb"] = round(memory.stop(), 1)
        row["forward_backward_s"] = median_time(forward_backward, device, repeats, max_seconds=5.0)
    except BackendUnsupported as err:
        row["forward_backward_unsupported"] = str(err)
    return row


def sweep(
    names: list[str],
    lengths: list[int],
    *,
    embed_dim: int,
    num_heads: int,
    device: torch.device,
    repeats: int,
    max_gb: float,
    max_seconds: float,
) -> list[dict[str, Any]]:
    """Every mechanism on ascending lengths, stopping where the next case is predicted too costly."""
    results: list[dict[str, Any]] = []
    for name in names:
        stop_reason = None
        for length in sorted(lengths):
            if stop_reason is not None:
                results.append({"mechanism": name, "length": length, "skipped": stop_reason})
                continue
            try:
                row = measure(
                    name, length, embed_dim=embed_dim, num_heads=num_heads, device=device, repeats=repeats
                )
            except (RuntimeError, MemoryError) as err:
                log.warning("%s at %d failed: %s", name, length, err)
                results.append({"mechanism": name, "length": length, "skipped": f"failed: {err}"[:300]})
                stop_reason = "a shorter length failed"
                continue
            results.append(row)
            peak = row.get("forward_backward_peak_mb", row["forward_peak_mb"])
            seconds = row.get("forward_backward_s", row["forward_s"])
            log.info(
                "%-22s L=%-6d fwd %.4fs  fwd+bwd %.4fs  peak %.0f MB",
                name,
                length,
                row["forward_s"],
                seconds,
                peak,
            )
            if 4 * peak > max_gb * 1024:
                stop_reason = f"predicted peak memory over --max-gb {max_gb}"
            elif 4 * seconds > max_seconds:
                stop_reason = f"predicted time over --max-seconds {max_seconds}"
    return results


def markdown_table(results: list[dict[str, Any]], lengths: list[int]) -> str:
    """``mechanism | L=...`` table of forward+backward milliseconds and peak MB ("-" = skipped)."""
    names = list(dict.fromkeys(r["mechanism"] for r in results))
    header = "| mechanism | " + " | ".join(f"{n}" for n in sorted(lengths)) + " |"
    lines = [header, "|" + "---|" * (len(lengths) + 1)]
    for name in names:
        cells = []
        for length in sorted(lengths):
            row = next((r for r in results if r["mechanism"] == name and r["length"] == length), None)
            if row is None or "skipped" in row:
                cells.append("-")
            elif "forward_backward_s" not in row:
                cells.append(f"fwd {row['forward_s'] * 1e3:.0f} ms / {row['forward_peak_mb']:.0f} MB")
            else:
                cells.append(
                    f"{row['forward_backward_s'] * 1e3:.0f} ms / {row['forward_backward_peak_mb']:.0f} MB"
                )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS))
    parser.add_argument("--mechanisms", nargs="+", default=list(MECHANISMS), choices=list(MECHANISMS))
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-gb", type=float, default=6.0)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    device = torch.device(args.device)
    results = sweep(
        args.mechanisms,
        args.lengths,
        embed_dim=args.embed_dim,
        num_heads=args.num_heads,
        device=device,
        repeats=args.repeats,
        max_gb=args.max_gb,
        max_seconds=args.max_seconds,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine(),
        "device": device.type,
        "setting": {
            "batch": 1,
            "embed_dim": args.embed_dim,
            "num_heads": args.num_heads,
            "mask": "causal self-attention",
            "dtype": "float32",
            "repeats": args.repeats,
        },
        "results": results,
    }
    path = args.out / f"mechanisms_{device.type}.json"
    path.write_text(json.dumps(report, indent=2))
    table = markdown_table(results, args.lengths)
    (args.out / f"mechanisms_{device.type}.md").write_text(
        f"Forward+backward time / peak memory, {report['setting']}, machine {report['machine']}\n\n{table}\n"
    )
    log.info("wrote %s\n%s", path, table)


if __name__ == "__main__":
    _return_freed_memory_to_the_os()
    main()
