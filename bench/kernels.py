"""Benchmarks of the Triton kernels (`python -m bench.kernels --out bench/results`).

On a GPU: the block-sparse flash-attention kernel (`triton` backend) against SDPA with a dense
mask, FlexAttention (compiled, `BlockMask`) and xformers, at 4k-64k tokens for the sliding
window, sink + window and PowerAttention patterns, forward and forward+backward, with achieved
TFLOP/s (FLOPs of the allowed entries only) and its fraction of the card's peak; and the chunked
linear-attention kernel against the PyTorch chunked reference. Writes `kernels_cuda.json`.

Without a GPU the kernels only run in Triton's interpreter, whose timings say nothing about
performance: the benchmark then checks the kernels against the references on correctness-scale
shapes, records the errors, and writes `kernels_cpu.json` with a note that timings need a GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import machine, median_time

log = logging.getLogger("bench.kernels")

# Dense bf16/fp16 tensor-core peaks (TFLOP/s) by device-name fragment, for the "fraction of peak" column.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0}


BACKENDS = ("sdpa", "triton", "flex", "xformers")


def _patterns() -> dict[str, Any]:
    from shared_attention.masks import PowerAttention, SinkWindow, SlidingWindow

    return {
        "window1024": SlidingWindow(1024),
        "sink64_window1024": SinkWindow(64, 1024),
        "power_b64_w2": PowerAttention(block_size=64, window=2, sinks=1),
    }


def _allowed_entries(mask: Any, heads: int, length: int, device: torch.device) -> int:
    """Number of allowed (query, key) pairs per (batch, head), counted from the kernel's block index."""
    from shared_attention.backends.triton import block_index_for

    index = block_index_for(mask, 1, heads, length, length, device)
    full = int((index.row_tile < 0).sum()) * index.block_m * index.block_n
    partial = int(index.tiles.sum()) if index.n_partial else 0
    return (full + partial) // max(1, index.mask_heads * index.mask_batch)


def _peak(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in device_name), None)


def _time(fn, repeats: int) -> float:
    return median_time(fn, torch.device("cuda"), repeats)


def _measure_attention(
    backend: str, mask: Any, inputs: tuple[torch.Tensor, ...], flops: float, repeats: int
) -> tuple[dict[str, float], torch.Tensor]:
    from shared_attention import attention

    q, k, v = inputs

    def forward() -> torch.Tensor:
        return attention(q, k, v, mask=mask, backend=backend)

    out = forward()
    grad = torch.ones_like(out) / out.shape[-2] ** 0.5

    def forward_backward() -> None:
        forward().backward(grad)

    torch.cuda.reset_peak_memory_stats()
    forward_s = _time(forward, repeats)
    both_s = _time(forward_backward, repeats)
    q.grad = k.grad = v.grad = None
    return {
        "forward_ms": forward_s * 1e3,
        "forward_backward_ms": both_s * 1e3,
        "forward_tflops": flops / forward_s / 1e12,
        "forward_backward_tflops": 3.5 * flops / both_s / 1e12,
        "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20,
    }, out.detach()


def bench_block_sparse(
    lengths: list[int],
    heads: int,
    dim: int,
    repeats: int,
    patterns: list[str] | None = None,
    backends: tuple[str, ...] = BACKENDS,
    on_case: Any = None,
    results: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Time every (length, pattern, backend) on the same bf16 inputs; the first backend that runs
    (SDPA with a dense mask by default order) is the reference for the others' output error."""
    from shared_attention import BackendUnsupported
    from shared_attention.masks import clear_mask_cache

    device = torch.device("cuda")
    dtype = torch.bfloat16
    peak = _peak(torch.cuda.get_device_name())
    results = [] if results is None else results
    for length in lengths:
        for pattern, mask in _patterns().items():
            if patterns and pattern not in patterns:
                continue
            clear_mask_cache()  # dense masks of earlier cases would count towards this one's memory
            torch.cuda.empty_cache()
            entries = _allowed_entries(mask, heads, length, device)
            flops = 4.0 * heads * entries * dim
            generator = torch.Generator(device=device).manual_seed(length)
            inputs = tuple(
                torch.randn(
                    1, heads, length, dim, device=device, dtype=dtype, generator=generator
                ).requires_grad_()
                for _ in range(3)
            )
            reference = None
            for backend in backends:
                case: dict[str, Any] = {
                    "kernel": "block_sparse_attention",
                    "backend": backend,
                    "pattern": pattern,
                    "shape": [1, heads, length, dim],
                    "dtype": "bfloat16",
                    "density": entries / float(length * length),
                }
                try:
                    timings, out = _measure_attention(backend, mask, inputs, flops, repeats)
                    case.update(timings)
                    if peak:
                        case["forward_fraction_of_peak"] = case["forward_tflops"] / peak
                    if reference is None:
                        reference, case["reference"] = out, True
                    else:
                        case["max_abs_error_vs_reference"] = float(
                            (out.float() - reference.float()).abs().max()
                        )
                    del out
                except BackendUnsupported as err:
                    case["unsupported"] = str(err)
                except torch.cuda.OutOfMemoryError:
                    case["unsupported"] = "out of GPU memory"
                except Exception as err:  # a failing backend must not lose the other measurements
                    case["error"] = f"{type(err).__name__}: {err}"[:2000]
                torch.cuda.empty_cache()
                log.info("%s", case)
                results.append(case)
                if on_case is not None:
                    on_case()
            del inputs, reference
            torch.cuda.empty_cache()
    return results


def linear_inputs(heads: int, length: int, dim: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """bf16 ``(1, heads, length, dim)`` feature-mapped q, k (non-negative) and v, requiring grad."""
    q, k = (
        torch.rand(1, heads, length, dim, device=device, dtype=torch.bfloat16, requires_grad=True)
        for _ in range(2)
    )
    v = torch.randn(1, heads, length, dim, device=device, dtype=torch.bfloat16, requires_grad=True)
    return q, k, v


def bench_linear(lengths: list[int], heads: int, dim: int, repeats: int) -> list[dict[str, Any]]:
    from kernels.linear_attention import linear_attention_parts as triton_parts
    from shared_attention.layers.linear import linear_attention_parts as torch_parts

    device = torch.device("cuda")
    results = []
    for length in lengths:
        for causal in (True, False):
            q, k, v = linear_inputs(heads, length, dim, device)
            with torch.no_grad():  # float64 reference for the accuracy column
                reference = [
                    t.double()
                    for t in torch_parts(q.double(), k.double(), v.double(), causal=causal, chunk_size=64)
                ]
            for name, fn in (("triton", triton_parts), ("torch_chunked", torch_parts)):
                case: dict[str, Any] = {
                    "kernel": "linear_attention_parts",
                    "backend": name,
                    "causal": causal,
                    "shape": [1, heads, length, dim],
                    "dtype": "bfloat16",
                }

                def forward(fn=fn, causal=causal, q=q, k=k, v=v):
                    return fn(q, k, v, causal=causal, chunk_size=64)

                def forward_backward(forward=forward):
                    numerator, denominator = forward()
                    (numerator.float().sum() + denominator.float().sum()).backward()

                try:
                    with torch.no_grad():
                        case["max_relative_error_vs_float64"] = max(
                            float((got.double() - want).abs().max() / want.abs().max())
                            for got, want in zip(forward(), reference)
                        )
                    torch.cuda.reset_peak_memory_stats()
                    case["forward_ms"] = _time(forward, repeats) * 1e3
                    case["forward_backward_ms"] = _time(forward_backward, repeats) * 1e3
                    case["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
                except torch.cuda.OutOfMemoryError:
                    case["unsupported"] = "out of GPU memory"
                log.info("%s", case)
                results.append(case)
    return results


def check_interpreted() -> list[dict[str, Any]]:
    """Correctness-scale comparison of both kernels with their references, in the interpreter."""
    from kernels.linear_attention import linear_attention_parts as triton_parts
    from shared_attention import attention
    from shared_attention.layers.linear import linear_attention_parts as torch_parts

    torch.manual_seed(0)
    checks = []
    for pattern, mask in _patterns().items():
        scaled = type(mask)(**{**mask.__dict__, **_small_params(mask)})
        q, k, v = (torch.randn(1, 2, 96, 32, requires_grad=True) for _ in range(3))
        out = attention(q, k, v, mask=scaled, backend="triton")
        reference = attention(q, k, v, mask=scaled, backend="math")
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        ref_grads = torch.autograd.grad(reference.sum(), (q, k, v))
        out, reference = out.detach(), reference.detach()
        checks.append(
            {
                "kernel": "block_sparse_attention",
                "pattern": f"{pattern} scaled to {scaled}",
                "shape": [1, 2, 96, 32],
                "max_abs_error": float((out - reference).abs().max()),
                "max_abs_grad_error": max(float((a - b).abs().max()) for a, b in zip(grads, ref_grads)),
            }
        )
    for causal in (True, False):
        q, k = (torch.rand(1, 2, 96, 16) for _ in range(2))
        v = torch.randn(1, 2, 96, 16)
        got = triton_parts(q, k, v, causal=causal, chunk_size=32)
        want = torch_parts(q, k, v, causal=causal, chunk_size=32)
        checks.append(
            {
                "kernel": "linear_attention_parts",
                "causal": causal,
                "shape": [1, 2, 96, 16],
                "max_relative_error": max(
                    float(((a - b).abs().max() / b.abs().max()).item()) for a, b in zip(got, want)
                ),
            }
        )
    for check in checks:
        log.info("%s", check)
    return checks


def _small_params(mask: Any) -> dict[str, int]:
    """Pattern parameters shrunk to a 96-token check (same structure, a few blocks)."""
    fields = mask.__dict__
    small = {}
    if "window" in fields:
        small["window"] = 2 if "block_size" in fields else 20
    if "sinks" in fields and "block_size" not in fields:
        small["sinks"] = 4
    if "block_size" in fields:
        small["block_size"] = 8
    return small


def markdown_tables(report: dict[str, Any]) -> str:
    """README-style tables of a ``kernels_cuda.json`` report: per pattern and length, forward and
    forward+backward milliseconds of each backend, the Triton kernel's speed-up over SDPA with a
    dense mask and its time relative to FlexAttention, and its TFLOP/s; then the linear kernel."""
    peak = report.get("peak_tflops")
    cases: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for case in report.get("block_sparse", []):
        cases.setdefault((case["pattern"], case["shape"][2]), {})[case["backend"]] = case
    lines = [
        f"Machine: {report['machine'].get('gpu', '?')}, torch {report['machine'].get('torch', '?')}; "
        "B = 1, H = 16, D = 64, bf16; milliseconds (median of 10). "
        "Speed-up = SDPA (dense mask) time / Triton time; vs Flex = Triton time / FlexAttention time (< 1: Triton faster); "
        "xformers: memory_efficient_attention with a structured bias for the sliding window and a dense "
        "additive bias (one copy broadcast over heads) otherwise.",
        "",
        "| pattern | length | SDPA fwd | xformers fwd | Flex fwd | Triton fwd | speed-up | vs Flex | SDPA f+b "
        "| xformers f+b | Flex f+b | Triton f+b | speed-up | vs Flex | Triton TFLOP/s (fwd) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(case: dict[str, Any] | None, key: str) -> str:
        if case and key in case:
            return f"{case[key]:.3f}"
        return "OOM" if case and case.get("unsupported") == "out of GPU memory" else "–"

    def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str, fmt: str) -> str:
        return format(a[key] / b[key], fmt) if a and b and key in a and key in b else "–"

    for (pattern, length), by in sorted(cases.items(), key=lambda item: (item[0][0], item[0][1])):
        sdpa, flex, triton_case, xf = by.get("sdpa"), by.get("flex"), by.get("triton"), by.get("xformers")
        tflops = "–"
        if triton_case and "forward_tflops" in triton_case:
            tflops = f"{triton_case['forward_tflops']:.0f}"
            if peak:
                tflops += f" ({100 * triton_case['forward_tflops'] / peak:.0f} % of {peak:.0f})"
        lines.append(
            f"| {pattern} | {length} | {ms(sdpa, 'forward_ms')} | {ms(xf, 'forward_ms')} | {ms(flex, 'forward_ms')} | "
            f"{ms(triton_case, 'forward_ms')} | {ratio(sdpa, triton_case, 'forward_ms', '.1f')}x | "
            f"{ratio(triton_case, flex, 'forward_ms', '.2f')} | {ms(sdpa, 'forward_backward_ms')} | "
            f"{ms(xf, 'forward_backward_ms')} | "
            f"{ms(flex, 'forward_backward_ms')} | {ms(triton_case, 'forward_backward_ms')} | "
            f"{ratio(sdpa, triton_case, 'forward_backward_ms', '.1f')}x | "
            f"{ratio(triton_case, flex, 'forward_backward_ms', '.2f')} | {tflops} |"
        )
    linear: dict[tuple[int, bool], dict[str, dict[str, Any]]] = {}
    for case in report.get("linear", []):
        linear.setdefault((case["shape"][2], case["causal"]), {})[case["backend"]] = case
    if linear:
        lines += [
            "",
            "| linear attention | length | PyTorch chunked fwd | Triton fwd | PyTorch f+b | Triton f+b |",
            "|---|---|---|---|---|---|",
        ]
        for (length, causal), by in sorted(linear.items()):
            torch_case, triton_case = by.get("torch_chunked"), by.get("triton")
            lines.append(
                f"| {'causal' if causal else 'non-causal'} | {length} | {ms(torch_case, 'forward_ms')} | "
                f"{ms(triton_case, 'forward_ms')} | {ms(torch_case, 'forward_backward_ms')} | "
                f"{ms(triton_case, 'forward_backward_ms')} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536])
    parser.add_argument(
        "--linear-lengths",
        type=int,
        nargs="+",
        default=None,
        help="lengths for the linear-attention kernel (default: --lengths)",
    )
    parser.add_argument("--no-linear", action="store_true", help="skip the linear-attention kernel")
    parser.add_argument("--patterns", nargs="+", default=None, help="subset of: " + ", ".join(_patterns()))
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--name", default=None, help="output file name (default kernels_<cuda|cpu>.json)")
    parser.add_argument(
        "--summarise",
        type=Path,
        default=None,
        help="only write the markdown tables of this JSON report (no GPU needed)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.summarise is not None:
        report = json.loads(args.summarise.read_text())
        target = args.summarise.with_suffix(".md")
        target.write_text(markdown_tables(report))
        log.info("wrote %s", target)
        return
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / (args.name or f"kernels_{'cuda' if cuda else 'cpu'}.json")
    report: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}

    def save() -> None:  # after every case, so a run stopped at a time limit keeps what it measured
        path.write_text(json.dumps(report, indent=2) + "\n")

    if cuda:
        # FlexAttention compiles once per (mask, shape): allow more than dynamo's default 8 recompiles,
        # or later cases silently fall back to eager (materialised) FlexAttention.
        from torch._dynamo import config as dynamo_config

        for knob in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
            if hasattr(dynamo_config, knob):
                setattr(dynamo_config, knob, max(256, getattr(dynamo_config, knob)))
        report["peak_tflops"] = _peak(torch.cuda.get_device_name())
        import kernels.block_sparse_attention as bsa

        # tile shape per pass (queries x keys) of the triton backend, before its area check
        report["triton_tiles"] = {
            kind: list(tile) for kind, tile in bsa.default_tiles(torch.device("cuda"), args.dim).items()
        }
        report["block_sparse"] = []
        report["linear"] = []
        if args.backends:
            bench_block_sparse(
                args.lengths,
                args.heads,
                args.dim,
                args.repeats,
                args.patterns,
                tuple(args.backends),
                save,
                report["block_sparse"],
            )
        save()
        if not args.no_linear:
            report["linear"] = bench_linear(
                args.linear_lengths or args.lengths, args.heads, args.dim, args.repeats
            )
    else:
        report["note"] = (
            "no GPU: the Triton kernels ran in the interpreter (TRITON_INTERPRET=1) on correctness-scale "
            "shapes only; interpreter timings say nothing about kernel speed, so none are reported. "
            "Run on a CUDA machine for timings."
        )
        log.warning("%s", report["note"])
        report["interpreted_checks"] = check_interpreted()
    save()
    if cuda:
        path.with_suffix(".md").write_text(markdown_tables(report))
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
