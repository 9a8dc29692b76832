#!/usr/bin/env bash
# One call on a CUDA machine for the per-pass tile shapes of the block-sparse kernel: its GPU tests
# (every tile plan against the math backend), then `bench.kernel_tuning --passes` (each pass alone
# for every tile shape / launch, whole plans, FlexAttention in the same process) and its summary,
# then the dispatcher's `triton` backend (per-pass default tiles) against FlexAttention.
#   bash bench/device_passes.sh OUT_DIR      (T1/T2 override the step limits in seconds; LENGTHS)
set -u
OUT=${1:-${OUT:-/tmp/device_passes}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} | tee "$OUT/env.txt"
echo "== 1. block-sparse kernel GPU tests"
timeout "${T1:-100}" python3 -m pytest -p no:cacheprovider -q -n 8 -m gpu tests/kernels/test_block_sparse_attention.py \
    >"$OUT/tests.log" 2>&1
echo "rc=$?"; grep -E "passed|failed" "$OUT/tests.log" | tail -2; grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -10
echo "== 2. per-pass tile sweep"
timeout "${T2:-300}" python3 -m bench.kernel_tuning --out "$OUT" --passes --lengths ${LENGTHS:-16384 65536 32768} \
    --repeats 10 >"$OUT/passes.log" 2>&1
echo "rc=$?"; grep -E "Error|error" "$OUT/passes.log" | grep -v '"error"' | tail -3
python3 -c "import sys; from bench.kernel_tuning import summarise_passes; print(summarise_passes(sys.argv[1]))" \
    "$OUT/kernel_passes_cuda.json"
echo "== 3. dispatcher: triton (per-pass default tiles) vs flex"
timeout "${T3:-200}" python3 -m bench.kernels --out "$OUT" --no-linear --backends triton flex --lengths 65536 32768 16384 \
    --repeats 10 --name kernels_cuda_passes.json >"$OUT/bench.log" 2>&1
echo "rc=$?"
python3 bench/device_summary.py "$OUT" 2>&1 | tail -20
