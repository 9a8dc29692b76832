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
python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
f = out / "kernel_tuning_cuda.json"
if f.exists():
    for c in json.loads(f.read_text()).get("block_sparse", []):
        cfg = f"{c.get('block_m', '')}x{c.get('block_n', '')} {c.get('forward_launch', '')} {c.get('backward_launch', '')}"
        print(f"tune {c['length']:>6} {c['pattern'][:12]:<12} {c['backend']:<6} {cfg:<86} "
              f"f {c.get('forward_ms', float('nan')):6.3f} fb {c.get('forward_backward_ms', float('nan')):6.3f} "
              f"e {c.get('max_abs_error', 0):.0e} {c.get('error', '')[:60]}")
f = out / "kernels_cuda.json"
if f.exists():
    for c in json.loads(f.read_text()).get("block_sparse", []):
        L = c["shape"][2]
        if "forward_ms" in c:
            print(f"{L:>6} {c['pattern']:<18} {c['backend']:<8} fwd {c['forward_ms']:8.3f} fb {c['forward_backward_ms']:8.3f} "
                  f"{c['forward_tflops']:6.1f} TF/s err {c.get('max_abs_error_vs_reference', 0):.1e}")
        else:
            print(f"{L:>6} {c['pattern']:<18} {c['backend']:<8} {str(c.get('unsupported') or c.get('error'))[:100]}")
PY
