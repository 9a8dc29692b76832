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
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
    python3 bench/xformers_operators.py 2>&1 | grep -v "^WARNING\[XFORMERS\]\|^ \+\(PyTorch\|Python\|Please\|Memory-efficient\|Set XFORMERS\)"
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
