"""Which xformers operator serves each bias kind on this CUDA machine, with xformers' full reason
when none does: ``python3 bench/xformers_operators.py`` (device scripts; no project environment
needed beyond torch and xformers). With ``SHARED_ATTENTION_XFORMERS_TORCH_OPS=1`` it first lets
xformers run its PyTorch-backed operators, as the ``xformers`` backend does."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    try:
        import torch
        import xformers
        from xformers.ops import fmha
    except Exception as err:  # xformers can fail at import with errors other than ImportError
        print("xformers diagnostics failed:", type(err).__name__, err)
        return
    if os.environ.get("SHARED_ATTENTION_XFORMERS_TORCH_OPS", "0") == "1":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from shared_attention.backends import xformers as backend

        print("torch-backed operators enabled:", backend._allow_torch_backed_operators())
        print("xformers C++ library:", str(backend._cpp_library_error() or "loaded").splitlines()[0])
    print("xformers", xformers.__version__, "torch", torch.__version__)
    if not torch.cuda.is_available():
        print("no CUDA device: xformers has no CPU operator")
        return
    x = torch.randn(1, 256, 2, 64, device="cuda", dtype=torch.bfloat16)
    biases = {
        "none": None,
        "causal window": fmha.attn_bias.LowerTriangularFromBottomRightLocalAttentionMask(64),
        "window": fmha.attn_bias.LocalAttentionFromBottomRightMask(63, 63),
        "dense": torch.zeros(1, 2, 256, 256, device="cuda", dtype=torch.bfloat16),
    }
    for name, bias in biases.items():
        try:
            inp = fmha.Inputs(query=x, key=x, value=x, attn_bias=bias)
            forward, backward = fmha._dispatch_fw(inp, True), fmha._dispatch_bw(inp, None)
            print("xformers", name, "fw", forward.NAME, "bw", backward.NAME)
        except Exception as err:
            print("xformers", name, type(err).__name__, str(err)[:1500])


if __name__ == "__main__":
    main()
