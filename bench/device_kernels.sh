#!/usr/bin/env bash
# One short call on a CUDA machine for the block-sparse kernel only: the kernel GPU tests, the
# block-sparse launch-configuration sweep (16k, 64k) and the block-sparse benchmark (4k-64k).
#   bash bench/device_kernels.sh OUT_DIR        (T1/T2/T3 override the step limits in seconds)
set -u
OUT=${1:-${OUT:-/tmp/device_kernels}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} | tee "$OUT/env.txt"
echo "== 1. kernel GPU tests"
timeout "${T1:-90}" python3 -m pytest -p no:cacheprovider -q -n 8 -m "gpu or not slow" tests/kernels >"$OUT/tests.log" 2>&1
echo "rc=$?"; grep -E "passed|failed" "$OUT/tests.log" | tail -2; grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -10
echo "== 2. block-sparse launch-configuration sweep"
timeout "${T2:-220}" python3 -m bench.kernel_tuning --out "$OUT" --no-linear --lengths 16384 65536 >"$OUT/tuning.log" 2>&1
echo "rc=$?"
echo "== 3. block-sparse benchmark"
timeout "${T3:-200}" python3 -m bench.kernels --out "$OUT" --no-linear --lengths 16384 65536 4096 32768 8192 \
    --repeats 10 >"$OUT/bench.log" 2>&1
echo "rc=$?"
python3 bench/device_summary.py "$OUT"
