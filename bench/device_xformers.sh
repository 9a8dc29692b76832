#!/usr/bin/env bash
# One call on a CUDA machine for the xformers comparison: installs the xformers wheel from .whl/,
# lets our backend run xformers' PyTorch-backed operators (SHARED_ATTENTION_XFORMERS_TORCH_OPS=1,
# for a wheel whose C++ library was built for another torch), prints which xformers operator
# serves each bias kind, runs the CUDA backend tests, then the block-sparse benchmark with every
# backend (SDPA with a dense mask, Triton, FlexAttention, xformers).
#   bash bench/device_xformers.sh OUT_DIR      (T1/T2 override the step limits; LENGTHS the lengths)
set -u
OUT=${1:-${OUT:-/tmp/device_xformers}}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD SHARED_ATTENTION_XFORMERS_TORCH_OPS=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 - <<'PY' 2>&1 | grep -v "WARNING\[XFORMERS\]\|^ \+\(PyTorch\|Python\|Please\|Memory-efficient\|Set XFORMERS\)"
import torch, triton
from shared_attention.backends import xformers as xb
import xformers
from xformers.ops import fmha
print("torch", torch.__version__, "triton", triton.__version__, "xformers", xformers.__version__, torch.cuda.get_device_name())
xb._xformers_ops()
print("xformers C++ library:", xb._cpp_library_error() or "loaded")
x = torch.randn(1, 256, 2, 64, device="cuda", dtype=torch.bfloat16)
for name, bias in (("none", None), ("causal window", fmha.attn_bias.LowerTriangularFromBottomRightLocalAttentionMask(64)),
                   ("window", fmha.attn_bias.LocalAttentionFromBottomRightMask(63, 63)),
                   ("dense", torch.zeros(1, 2, 256, 256, device="cuda", dtype=torch.bfloat16))):
    try:
        inp = fmha.Inputs(query=x, key=x, value=x, attn_bias=bias)
        print("xformers", name, "fw", fmha._dispatch_fw(inp, True).NAME, "bw", fmha._dispatch_bw(inp, None).NAME)
    except Exception as err:
        print("xformers", name, type(err).__name__, str(err)[:1200])
PY
} | tee "$OUT/env.txt"
echo "== 1. CUDA backend tests"
timeout "${T1:-100}" python3 -m pytest -p no:cacheprovider -q -n 8 -m "gpu or not slow" -rs \
    tests/shared_attention/test_attn_gpu.py tests/shared_attention/test_attn_xformers_bias.py >"$OUT/tests.log" 2>&1
echo "rc=$?"; grep -E "passed|failed" "$OUT/tests.log" | tail -2; grep -E "^(FAILED|ERROR|SKIPPED)" "$OUT/tests.log" | head -20
echo "== 2. block-sparse benchmark, every backend"
timeout "${T2:-190}" python3 -m bench.kernels --out "$OUT" --no-linear --lengths ${LENGTHS:-16384 65536 4096 32768} \
    --repeats 10 >"$OUT/bench.log" 2>&1
echo "rc=$?"
python3 bench/device_summary.py "$OUT"
