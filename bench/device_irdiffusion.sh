#!/usr/bin/env bash
# One call on a CUDA machine for IR-Diffusion's processor overhead on the full SD 1.5 UNet layout
# (random weights, `--width-divisor 1`): installs diffusers and its dependencies from wheels in
# .whl/ (the machine has torch but not diffusers), then runs bench.irdiffusion per RUNS (dtype,
# forwards per generation), with a profile of plain and both for single-forward runs.
#   bash bench/device_irdiffusion.sh OUT_DIR   (RUNS="float16:1 float16:10 float32:10": dtype and
#                                               forwards per generation of each run, the 1-forward
#                                               runs profiled; T the limit of each run in seconds;
#                                               TESTS=1 first runs the GPU tests of the kernels and
#                                               the dispatcher)
# Fill .whl/ here with: pip download --only-binary=:all: --python-version 3.12 \
#   --platform manylinux_2_28_x86_64 -d .whl diffusers "huggingface_hub>=1.32,<2" "httpx<1"
# (then drop filelock, fsspec, typing_extensions). The machine's transformers needs a hub below 2.0.
set -u
OUT=${1:-${OUT:-/tmp/device_irdiffusion}}
mkdir -p "$OUT"
rm -rf /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >"$OUT/pip.log" 2>&1 || { tail "$OUT/pip.log"; exit 1; }
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())"
} | tee "$OUT/env.txt"
if [ "${TESTS:-0}" = 1 ]; then
    echo "== GPU tests (kernels, dispatcher backends)"
    timeout "${T_TESTS:-120}" python3 -m pytest -p no:cacheprovider -q -n 8 -m "gpu or not slow" -rs \
        tests/kernels tests/shared_attention/test_attn_gpu.py tests/shared_attention/test_attn_layers.py \
        >"$OUT/tests.log" 2>&1
    echo "rc=$?"; grep -E "passed|failed" "$OUT/tests.log" | tail -2; grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20
fi
for run in ${RUNS:-float16:1 float16:10 float32:10}; do
    dtype=${run%%:*} steps=${run##*:}
    name=irdiffusion_cuda_$( [ "$dtype" = float16 ] && echo fp16 || echo fp32 )$( [ "$steps" = 1 ] || echo "_gen$steps" )
    profile=$( [ "$steps" = 1 ] && [ "${PROFILE:-1}" = 1 ] && echo --profile )
    echo "== $name"
    timeout "${T:-150}" python3 -m bench.irdiffusion --no-base --width-divisor 1 --dtype "$dtype" \
        --repeats "${REPEATS:-5}" --steps "$( [ "$steps" = 1 ] && echo 2 || echo 1 )" \
        --generation-steps "$steps" $profile --name "$name" --out "$OUT" >"$OUT/$name.log" 2>&1
    echo "rc=$?"; grep "^|" "$OUT/$name.log"
    grep -A16 "^profile" "$OUT/$name.log" | head -34
done
