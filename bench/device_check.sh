#!/usr/bin/env bash
# One call on a CUDA machine: environment, the GPU test suite of the kernels and the dispatcher,
# the launch-configuration sweep (bench/kernel_tuning.py), then the kernel benchmark
# (bench/kernels.py). Each step has its own time limit and writes under OUT, so a call stopped
# early still returns what it measured.
#   bash bench/device_check.sh OUT_DIR        (T1/T2/T3 override the step limits in seconds)
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
    python3 -c "import xformers, xformers.ops; print('xformers', xformers.__version__)" 2>&1 | tail -1
} | tee "$OUT/env.txt"

echo "== 1. GPU tests (kernels, dispatcher backends, layers)"
timeout "${T1:-110}" python3 -m pytest -p no:cacheprovider -q -n 8 -m "gpu or not slow" -rs \
    tests/kernels tests/shared_attention/test_attn_gpu.py tests/shared_attention/test_mech_linear.py \
    tests/shared_attention/test_attn_layers.py tests/shared_attention/test_attn_xformers_bias.py >"$OUT/tests.log" 2>&1
echo "rc=$?"; grep -E "passed|failed" "$OUT/tests.log" | tail -3; grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20

echo "== 2. launch-configuration sweep"
timeout "${T2:-130}" python3 -m bench.kernel_tuning --out "$OUT" >"$OUT/tuning.log" 2>&1
echo "rc=$?"

echo "== 3. block-sparse kernel vs SDPA (dense mask), FlexAttention, xformers; linear kernel"
timeout "${T3:-160}" python3 -m bench.kernels --out "$OUT" --lengths 16384 4096 65536 32768 8192 \
    --linear-lengths 16384 4096 65536 --repeats 10 >"$OUT/bench.log" 2>&1
echo "rc=$?"

python3 - "$OUT" <<'PY'
import json, sys, pathlib
for f in sorted(pathlib.Path(sys.argv[1]).glob("kernel_tuning_cuda.json")):
    r = json.loads(f.read_text())
    for c in r.get("linear", []):
        print(f"tune {c['length']:>6} linear causal={c['causal']!s:<5} {c['backend']:<13} {c['config']} "
              f"fwd {c.get('forward_ms', float('nan')):7.3f} fwd+bwd {c.get('forward_backward_ms', float('nan')):7.3f} "
              f"err {c.get('max_relative_error', 0):.1e} {c.get('error', '')[:80]}")
    for c in r.get("block_sparse", []):
        cfg = f"{c.get('block_m', '')}x{c.get('block_n', '')} {c.get('forward_launch', '')} {c.get('backward_launch', '')}"
        print(f"tune {c['length']:>6} {c['pattern']:<18} {c['backend']:<6} {cfg:<90} "
              f"fwd {c.get('forward_ms', float('nan')):7.3f} fwd+bwd {c.get('forward_backward_ms', float('nan')):7.3f} "
              f"{c.get('error', '')[:80]}")
for f in sorted(pathlib.Path(sys.argv[1]).glob("kernels_cuda*.json")):
    r = json.loads(f.read_text())
    for c in r.get("block_sparse", []):
        L = c["shape"][2]
        if "forward_ms" in c:
            print(f"{L:>6} {c['pattern']:<18} {c['backend']:<8} fwd {c['forward_ms']:9.3f} ms  fwd+bwd {c['forward_backward_ms']:9.3f} ms "
                  f"{c['forward_tflops']:7.1f} TF/s  err {c.get('max_abs_error_vs_reference', 0):.2e}  mem {c['peak_memory_mb']:.0f}MB")
        else:
            print(f"{L:>6} {c['pattern']:<18} {c['backend']:<8} {str(c.get('unsupported') or c.get('error'))[:150]}")
    for c in r.get("linear", []):
        print(f"{c['shape'][2]:>6} linear causal={c['causal']!s:<5} {c['backend']:<14} "
              f"fwd {c.get('forward_ms', float('nan')):8.3f} ms fwd+bwd {c.get('forward_backward_ms', float('nan')):8.3f} ms")
PY
