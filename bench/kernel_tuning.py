"""Launch-configuration sweep of the Triton kernels on a GPU (`python -m bench.kernel_tuning --out DIR`).

Block-sparse attention: tile shape (``block_m x block_n``, which is also the block index's tile)
and ``num_warps`` / ``num_stages`` of the forward and backward passes, on the benchmark's window,
sink + window and PowerAttention patterns, each checked against SDPA with a dense mask (16k) or
against the default configuration (longer lengths), beside compiled FlexAttention. Linear
attention: chunk size, ``Dv`` tile and warps, against the PyTorch chunked reference.
Writes ``kernel_tuning_cuda.json``; the defaults in ``kernels/`` come from its results.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import machine, median_time
from bench.kernels import _allowed_entries, _patterns, linear_inputs

log = logging.getLogger("bench.kernel_tuning")

# (block_m, block_n, forward {num_warps, num_stages}, backward {num_warps, num_stages})
BLOCK_SPARSE_CONFIGS = [
    (64, 64, {"num_warps": 4, "num_stages": 3}, {"num_warps": 4, "num_stages": 3}),
    (
        64,
        64,
        {"num_warps": 4, "num_stages": 3, "SKIP_FULL": False},
        {"num_warps": 4, "num_stages": 3, "SKIP_FULL": False},
    ),
    (64, 64, {"num_warps": 4, "num_stages": 2}, {"num_warps": 4, "num_stages": 2}),
    (64, 64, {"num_warps": 4, "num_stages": 4}, {"num_warps": 4, "num_stages": 3}),
    (128, 64, {"num_warps": 4, "num_stages": 3}, {"num_warps": 4, "num_stages": 3}),
    (128, 128, {"num_warps": 8, "num_stages": 3}, {"num_warps": 8, "num_stages": 2}),
]
# (chunk, dv_block, num_warps, segments); segments None = enough to fill the GPU, 1 = one program per (b, h)
LINEAR_CONFIGS = [
    (64, 64, 4, 1),
    (64, 64, 4, None),
    (64, 32, 4, None),
    (128, 64, 4, None),
    (64, 64, 8, None),
    (32, 64, 4, None),
]


def _timings(forward, repeats: int) -> dict[str, float]:
    out = forward()
    grad = torch.ones_like(out) / out.shape[-2] ** 0.5

    def forward_backward():
        forward().backward(grad)

    cuda = torch.device("cuda")
    return {
        "forward_ms": median_time(forward, cuda, repeats) * 1e3,
        "forward_backward_ms": median_time(forward_backward, cuda, repeats) * 1e3,
    }


def tune_block_sparse(
    lengths: list[int], heads: int, dim: int, repeats: int, flex: bool, results: list, save
):
    import kernels.block_sparse_attention as bsa
    from shared_attention import attention
    from shared_attention.masks import clear_mask_cache

    device = torch.device("cuda")
    for length in lengths:
        for pattern, mask in _patterns().items():
            clear_mask_cache()
            torch.cuda.empty_cache()
            generator = torch.Generator(device=device).manual_seed(length)
            q, k, v = (
                torch.randn(
                    1, heads, length, dim, device=device, dtype=torch.bfloat16, generator=generator
                ).requires_grad_()
                for _ in range(3)
            )
            entries = _allowed_entries(mask, heads, length, device)
            flops = 4.0 * heads * entries * dim
            reference, reference_name = None, None
            if length <= 16384:
                with torch.no_grad():
                    reference = attention(q, k, v, mask=mask, backend="sdpa").float()
                reference_name = "sdpa"
                clear_mask_cache()
                torch.cuda.empty_cache()
            baselines = ["flex"] if flex else []
            for backend in baselines:
                case = {"pattern": pattern, "length": length, "backend": backend}
                try:
                    case.update(
                        _timings(
                            lambda q=q, k=k, v=v, mask=mask, backend=backend: attention(
                                q, k, v, mask=mask, backend=backend
                            ),
                            repeats,
                        )
                    )
                    case["forward_tflops"] = flops / case["forward_ms"] * 1e-9
                except Exception as err:  # noqa: BLE001 - record and go on
                    case["error"] = f"{type(err).__name__}: {err}"[:500]
                results.append(case)
                log.info("%s", case)
                q.grad = k.grad = v.grad = None
                clear_mask_cache()
                torch.cuda.empty_cache()
            for block_m, block_n, fwd, bwd in BLOCK_SPARSE_CONFIGS:
                case: dict[str, Any] = {
                    "pattern": pattern,
                    "length": length,
                    "backend": "triton",
                    "block_m": block_m,
                    "block_n": block_n,
                    "forward_launch": fwd,
                    "backward_launch": bwd,
                }
                try:
                    index = bsa.build_block_index(
                        mask.mask_mod(device), length, length, block_m=block_m, block_n=block_n, device=device
                    )
                    with bsa.launch_config(forward=fwd, backward=bwd):
                        run = lambda q=q, k=k, v=v, index=index: bsa.block_sparse_attention(q, k, v, index)  # noqa: E731
                        with torch.no_grad():
                            out = run().float()
                        if reference is None:
                            reference, reference_name = out, "triton 64x64 default"
                        else:
                            case["max_abs_error"] = float((out - reference).abs().max())
                            case["error_reference"] = reference_name
                        del out
                        case.update(_timings(run, repeats))
                    case["forward_tflops"] = flops / case["forward_ms"] * 1e-9
                    del index
                except Exception as err:  # noqa: BLE001 - a config that fails to compile is a result
                    case["error"] = f"{type(err).__name__}: {err}"[:500]
                q.grad = k.grad = v.grad = None
                torch.cuda.empty_cache()
                results.append(case)
                log.info("%s", case)
                save()
            reference = None


def tune_linear(lengths: list[int], heads: int, dim: int, repeats: int, results: list, save):
    import kernels.linear_attention as la
    from shared_attention.layers.linear import linear_attention_parts as torch_parts

    device = torch.device("cuda")
    for length in lengths:
        for causal in (True, False):
            q, k, v = linear_inputs(heads, length, dim, device)
            variants = [
                (
                    "torch_chunked",
                    None,
                    lambda q=q, k=k, v=v, causal=causal: torch_parts(q, k, v, causal=causal, chunk_size=64),
                )
            ]
            for chunk, dv_block, warps, segments in LINEAR_CONFIGS:
                variants.append(
                    (
                        "triton",
                        {"chunk": chunk, "dv_block": dv_block, "num_warps": warps, "segments": segments},
                        functools.partial(
                            la.LinearAttentionFunction.apply, q, k, v, causal, chunk, dv_block, segments
                        ),
                    )
                )
            reference = None
            for name, config, fn in variants:
                case = {"length": length, "causal": causal, "backend": name, "config": config}

                def forward(fn=fn):
                    numerator, denominator = fn()
                    return numerator.float() + denominator.float().unsqueeze(-1)

                try:
                    with la.launch_config(**({"num_warps": config["num_warps"]} if config else {})):
                        with torch.no_grad():
                            got = forward()
                        if reference is None:
                            reference = got
                        else:
                            scale = reference.abs().max().clamp(min=1.0)
                            case["max_relative_error"] = float(((got - reference).abs().max() / scale).item())
                        del got
                        case.update(_timings(forward, repeats))
                except Exception as err:  # noqa: BLE001
                    case["error"] = f"{type(err).__name__}: {err}"[:500]
                q.grad = k.grad = v.grad = None
                results.append(case)
                log.info("%s", case)
                save()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--linear-lengths", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-flex", action="store_true")
    parser.add_argument("--no-linear", action="store_true", help="skip the linear-attention sweep")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        raise SystemExit("bench.kernel_tuning needs a CUDA device")
    from torch._dynamo import config as dynamo_config

    for knob in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(dynamo_config, knob):
            setattr(dynamo_config, knob, max(256, getattr(dynamo_config, knob)))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "kernel_tuning_cuda.json"
    report: dict[str, Any] = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "shape": {"batch": 1, "heads": args.heads, "head_dim": args.dim, "dtype": "bfloat16"},
        "block_sparse": [],
        "linear": [],
    }

    def save() -> None:
        path.write_text(json.dumps(report, indent=2) + "\n")

    if not args.no_linear:
        tune_linear(args.linear_lengths, args.heads, args.dim, args.repeats, report["linear"], save)
    tune_block_sparse(
        args.lengths, args.heads, args.dim, args.repeats, not args.no_flex, report["block_sparse"], save
    )
    save()
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
