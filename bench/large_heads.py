"""Launch settings of the block-sparse kernel for head dims 128 and 256 on a GPU
(`python -m bench.large_heads OUT_DIR [--defaults]`).

Without ``--defaults``: every pass together under ``num_warps`` in {4, 8} and two ``num_stages``
values, through ``attention(backend="triton")``, window 1024 and sink 64 + window 1024 at 64k
tokens (B = 1, H = 16, bf16, median of 10); writes ``warps_large_heads_cuda.json``. With
``--defaults``: the kernels' default launch against compiled FlexAttention on the window;
writes ``large_heads_defaults_cuda.json``. The defaults in ``kernels/block_sparse_attention.py``
(``_launch_options``) come from these runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.common import machine, median_time


def _inputs(dim: int, length: int, device: torch.device):
    generator = torch.Generator(device=device).manual_seed(0)
    q, k, v = (
        torch.randn(
            1, 16, length, dim, device=device, dtype=torch.bfloat16, generator=generator
        ).requires_grad_()
        for _ in range(3)
    )
    return q, k, v, torch.randn_like(q)


def _time(q, k, v, grad, mask, backend: str, device: torch.device, repeats: int) -> dict[str, float]:
    from shared_attention import attention

    def forward():
        return attention(q, k, v, mask=mask, backend=backend)

    def forward_backward():
        forward().backward(grad)

    result = {
        "fwd_ms": median_time(forward, device, repeats) * 1e3,
        "fwd_bwd_ms": median_time(forward_backward, device, repeats) * 1e3,
    }
    q.grad = k.grad = v.grad = None
    return result


def _release() -> None:
    from shared_attention.masks import clear_mask_cache

    clear_mask_cache()
    torch.cuda.empty_cache()


def launch_sweep(length: int, repeats: int) -> list[dict]:
    import kernels.block_sparse_attention as bsa
    from shared_attention.masks import SinkWindow, SlidingWindow

    device, cases = torch.device("cuda"), []
    for dim in (128, 256):
        for name, mask in (("window1024", SlidingWindow(1024)), ("sink64_window1024", SinkWindow(64, 1024))):
            q, k, v, grad = _inputs(dim, length, device)
            for warps in (4, 8):
                for stages in (3, 2) if dim == 128 else (2, 1):
                    case = {"dim": dim, "pattern": name, "warps": warps, "stages": stages}
                    launch = {"num_warps": warps, "num_stages": stages}
                    try:
                        with bsa.launch_config(forward=launch, backward=launch):
                            case.update(_time(q, k, v, grad, mask, "triton", device, repeats))
                    except Exception as err:  # noqa: BLE001 - a launch that does not fit is a result
                        case["error"] = f"{type(err).__name__}: {err}"[:200]
                    print(case, flush=True)
                    cases.append(case)
            del q, k, v, grad
            _release()
    return cases


def defaults_vs_flex(length: int, repeats: int) -> list[dict]:
    from shared_attention.masks import SlidingWindow

    device, cases = torch.device("cuda"), []
    for dim in (128, 256):
        q, k, v, grad = _inputs(dim, length, device)
        for backend in ("triton", "flex"):
            case = {
                "dim": dim,
                "backend": backend,
                **_time(q, k, v, grad, SlidingWindow(1024), backend, device, repeats),
            }
            print(case, flush=True)
            cases.append(case)
        del q, k, v, grad
        _release()
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--defaults", action="store_true", help="the default launch against FlexAttention")
    parser.add_argument("--length", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.large_heads needs a CUDA device")
    args.out.mkdir(parents=True, exist_ok=True)
    cases = (defaults_vs_flex if args.defaults else launch_sweep)(args.length, args.repeats)
    name = "large_heads_defaults_cuda.json" if args.defaults else "warps_large_heads_cuda.json"
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "cases": cases}
    (args.out / name).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
