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


# Per-pass sweep (--passes): (block_m, block_n, num_warps, num_stages) of each pass, timed alone.
PASS_CONFIGS = {
    "forward": [
        (64, 64, 4, 3),
        (128, 64, 4, 3),
        (128, 64, 4, 4),
        (128, 64, 4, 2),
        (128, 128, 4, 3),
        (128, 64, 8, 3),
        (64, 128, 4, 3),
    ],
    "dq": [
        (64, 64, 4, 3),
        (64, 32, 4, 3),
        (64, 32, 4, 4),
        (32, 32, 4, 3),
        (64, 16, 4, 3),
        (128, 32, 8, 3),
        (128, 64, 4, 3),
    ],
    "dkdv": [
        (64, 64, 4, 3),
        (64, 64, 4, 4),
        (64, 64, 8, 3),
        (128, 64, 8, 3),
        (64, 32, 4, 3),
        (32, 32, 4, 3),
        (64, 128, 8, 3),
    ],
}
# End-to-end plans (forward, dq, dkdv), each (block_m, block_n, num_warps, num_stages).
PASS_PLANS = {
    "square64": ((64, 64, 4, 3), (64, 64, 4, 3), (64, 64, 4, 3)),
    "default": ((128, 64, 4, 3), (64, 32, 4, 3), (64, 64, 4, 3)),
    "flex_like": ((128, 128, 4, 3), (128, 64, 8, 3), (64, 128, 8, 3)),
}


def _launch(config: tuple[int, int, int, int]) -> dict[str, int]:
    return {"num_warps": config[2], "num_stages": config[3]}


def tune_passes(
    lengths: list[int],
    heads: int,
    dim: int,
    repeats: int,
    flex: bool,
    results: list,
    save,
    patterns: list[str] | None = None,
):
    """Each pass of the block-sparse kernel timed alone for every tile shape / launch in
    ``PASS_CONFIGS`` (differences against the 64 x 64 result), then whole forward+backward plans
    with a tile shape per pass, beside FlexAttention."""
    from shared_attention.masks import clear_mask_cache

    device = torch.device("cuda")
    for length in lengths:
        for pattern, mask in _patterns().items():
            if patterns and pattern not in patterns:
                continue
            clear_mask_cache()
            torch.cuda.empty_cache()
            _passes_case(pattern, mask, length, heads, dim, repeats, flex, results, device)
            save()


def _passes_case(
    pattern, mask, length, heads, dim, repeats, flex, results, device, dtype=torch.bfloat16
) -> None:
    import kernels.block_sparse_attention as bsa
    from shared_attention import attention
    from shared_attention.backends.triton import block_index_for
    from shared_attention.masks import clear_mask_cache

    generator = torch.Generator(device=device).manual_seed(length)
    q, k, v, grad = (
        torch.randn(1, heads, length, dim, device=device, dtype=dtype, generator=generator) for _ in range(4)
    )
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    entries = _allowed_entries(mask, heads, length, device)
    flops = 4.0 * heads * entries * dim
    head = {"pattern": pattern, "length": length, "allowed_entries_per_head": entries}

    def record(case: dict, run) -> None:
        try:
            run(case)
        except Exception as err:  # noqa: BLE001 - a config that fails to compile is a result
            case["error"] = f"{type(err).__name__}: {err}"[:500]
        results.append(case)
        log.info("%s", case)

    def flex_case(case: dict) -> None:
        case.update(_timings(functools.partial(attention, *leaves, mask=mask, backend="flex"), repeats))
        case["forward_tflops"] = flops / case["forward_ms"] * 1e-9

    if flex:
        record(dict(head, backend="flex"), flex_case)
        clear_mask_cache()
        torch.cuda.empty_cache()

    def index_of(bm: int, bn: int):
        return block_index_for(mask, 1, heads, length, length, device, tile=(bm, bn))

    scale = dim**-0.5
    base = index_of(64, 64)
    out, lse = bsa._forward(q, k, v, base, scale)
    delta, dq_ref = bsa.backward_dq(grad, q, k, v, out, lse, base, scale)
    dkdv_ref = torch.cat(bsa.backward_dkdv(grad, q, k, v, lse, delta, base, scale), -1)
    passes = {
        "forward": (lambda index: bsa._forward(q, k, v, index, scale), lambda r: r[0], out),
        "dq": (lambda index: bsa.backward_dq(grad, q, k, v, out, lse, index, scale), lambda r: r[1], dq_ref),
        "dkdv": (
            lambda index: bsa.backward_dkdv(grad, q, k, v, lse, delta, index, scale),
            lambda r: torch.cat(r, -1),
            dkdv_ref,
        ),
    }

    def pass_case(case: dict) -> None:
        kind, config = case["kind"], case["config"]
        call, pick, want = passes[kind]
        index = index_of(config[0], config[1])
        case["visited_vs_64x64"] = index.visited_entries() / base.visited_entries()
        run = functools.partial(call, index)
        with bsa.launch_config(**{kind: _launch(config)}):
            case["max_abs_diff_vs_64x64"] = float((pick(run()).float() - want.float()).abs().max())
            case["ms"] = median_time(run, device, repeats) * 1e3

    for kind, configs in PASS_CONFIGS.items():
        for config in configs:
            record(dict(head, backend="triton", kind=kind, config=list(config)), pass_case)

    def plan_case(case: dict) -> None:
        fwd_i, dq_i, dkdv_i = (index_of(c[0], c[1]) for c in case["configs"])
        launch = dict(zip(("forward", "dq", "dkdv"), (_launch(c) for c in case["configs"])))
        run = functools.partial(bsa.block_sparse_attention, *leaves, fwd_i, dq_index=dq_i, dkdv_index=dkdv_i)
        with bsa.launch_config(**launch):
            case.update(_timings(run, repeats))
        case["forward_tflops"] = flops / case["forward_ms"] * 1e-9
        for t in leaves:
            t.grad = None

    for name, plan in PASS_PLANS.items():
        record(
            dict(head, backend="triton", kind="plan", plan=name, configs=[list(c) for c in plan]), plan_case
        )


def summarise_passes(path: Path | str) -> str:
    """A text table of a ``kernel_passes_cuda.json``: per pattern and length, Flex's times, each
    pass's configs (ms, relative to the 64 x 64 default) and the end-to-end plans."""
    cases = json.loads(Path(path).read_text())["passes"]
    lines = []
    keys = sorted({(c["pattern"], c["length"]) for c in cases}, key=lambda t: (t[1], t[0]))
    for pattern, length in keys:
        group = [c for c in cases if (c["pattern"], c["length"]) == (pattern, length)]
        lines.append(f"## {pattern} {length}")
        for c in group:
            if "error" in c:
                what = c.get("kind", c["backend"]), c.get("config") or c.get("plan")
                lines.append(f"  {what}: {c['error'][:100]}")
            elif c["backend"] == "flex" or c.get("kind") == "plan":
                name = "flex" if c["backend"] == "flex" else f"plan {c['plan']}"
                lines.append(f"  {name}: fwd {c['forward_ms']:.3f} f+b {c['forward_backward_ms']:.3f}")
        for kind in PASS_CONFIGS:
            rows = [c for c in group if c.get("kind") == kind and "ms" in c]
            if not rows:
                continue
            base = rows[0]["ms"]
            cells = [
                f"{'x'.join(map(str, c['config'][:2]))}/w{c['config'][2]}s{c['config'][3]} {c['ms']:.3f} "
                f"({c['ms'] / base:.2f}, area {c['visited_vs_64x64']:.2f}, diff {c['max_abs_diff_vs_64x64']:.1e})"
                for c in rows
            ]
            lines.append(f"  {kind}: " + "; ".join(cells))
    return "\n".join(lines)


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
    parser.add_argument("--patterns", nargs="+", default=None, help="subset of the patterns (--passes)")
    parser.add_argument(
        "--passes",
        action="store_true",
        help="only the per-pass tile sweep of the block-sparse kernel (kernel_passes_cuda.json)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        raise SystemExit("bench.kernel_tuning needs a CUDA device")
    from torch._dynamo import config as dynamo_config

    for knob in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(dynamo_config, knob):
            setattr(dynamo_config, knob, max(256, getattr(dynamo_config, knob)))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("kernel_passes_cuda.json" if args.passes else "kernel_tuning_cuda.json")
    report: dict[str, Any] = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "shape": {"batch": 1, "heads": args.heads, "head_dim": args.dim, "dtype": "bfloat16"},
        "block_sparse": [],
        "linear": [],
    }

    def save() -> None:
        path.write_text(json.dumps(report, indent=2) + "\n")

    if args.passes:
        report["passes"] = report.pop("block_sparse")
        del report["linear"]
        tune_passes(
            args.lengths,
            args.heads,
            args.dim,
            args.repeats,
            not args.no_flex,
            report["passes"],
            save,
            args.patterns,
        )
        log.info("wrote %s", path)
        return

    if not args.no_linear:
        tune_linear(args.linear_lengths, args.heads, args.dim, args.repeats, report["linear"], save)
    tune_block_sparse(
        args.lengths, args.heads, args.dim, args.repeats, not args.no_flex, report["block_sparse"], save
    )
    save()
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
