#!/usr/bin/env bash
# One call on a CUDA machine: environment, the GPU test suite of the kernels and the dispatcher,
# the launch-configuration sweep (bench/kernel_tuning.py), then the kernel benchmark
# (bench/kernels.py). Each step has its own time limit and writes under OUT, so a call stopped
# early still returns what it measured.
#   bash bench/device_check.sh OUT_DIR        (T1/T2/T3 override the step limits in seconds; T2=0
#                                             skips the sweep)
# Wheels of packages the machine lacks (xformers) may be put in .whl/ beside this repository.
set -u
OUT=${1:-${OUT:-/tmp/device_check}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
        export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
    # the xformers version and which operator serves each bias kind, with the full reason when none does
    python3 bench/xformers_operators.py 2>&1 | grep -v "^WARNING\[XFORMERS\]\|^ \+\(PyTorch\|Python\|Please\|Memory-efficient\|Set XFORMERS\)"
} | tee "$OUT/env.txt"

echo "== 1. GPU tests (kernels, dispatcher backends, layers)"
timeout "${T1:-110}" python3 -m pytest -p no:cacheprovider -q -n 8 -m "gpu or not slow" -rs \
    tests/kernels tests/shared_attention/test_attn_gpu.py tests/shared_attention/test_mech_linear.py \
    tests/shared_attention/test_attn_layers.py tests/shared_attention/test_attn_xformers_bias.py >"$OUT/tests.log" 2>&1
echo "rc=$?"; grep -E "passed|failed" "$OUT/tests.log" | tail -3; grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20

echo "== 2. launch-configuration sweep"
if [ "${T2:-130}" -gt 0 ]; then
    timeout "${T2:-130}" python3 -m bench.kernel_tuning --out "$OUT" >"$OUT/tuning.log" 2>&1
    echo "rc=$?"
else
    echo "skipped (T2=0)"
fi

echo "== 3. block-sparse kernel vs SDPA (dense mask), FlexAttention, xformers; linear kernel"
# BENCH_ARGS replaces the lengths and linear options, e.g. BENCH_ARGS="--no-linear --lengths 16384 65536"
timeout "${T3:-160}" python3 -m bench.kernels --out "$OUT" ${BENCH_ARGS:---lengths 16384 4096 65536 32768 8192 \
    --linear-lengths 16384 4096 65536} --repeats 10 >"$OUT/bench.log" 2>&1
echo "rc=$?"

python3 bench/device_summary.py "$OUT"
