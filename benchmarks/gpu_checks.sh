#!/usr/bin/env bash
# Every CUDA check in one run of at most about 9.5 minutes, for a machine with an NVIDIA GPU:
#   1. the device-rule tests: the mask and p99 scales computed on the GPU equal the CPU rule, and the fast
#      inference paths keep the quality rule (core/test_device_mask.py, core/test_acceleration.py);
#   2. one 240x240x155 volume, warm, in memory, at fp32, bf16, fp16 and the default (bench_volume.py): each
#      stage's time, slices per second, peak GPU memory, each precision's output against fp32's, and ONNX
#      Runtime's CUDA provider where onnxruntime-gpu is installed;
#   3. training (bench_training_device.py): slices per second and peak GPU memory of the brats recipe's step at
#      batch 8, 32 and 64 with bf16 autocast, torch.compile off and on, and the CPU for comparison;
#   4. every way of running the generator, its CUDA rows included (bench_inference.py --no-e2e).
# Each step has a time limit; the logs go to $OUT (default: a new temporary folder) and the exit status is
# non-zero when a step failed. docs/PERFORMANCE.md says where the figures go.
#
#   bash benchmarks/gpu_checks.sh                              # from a clone, on the GPU machine
#   OUT=/path/to/logs bash benchmarks/gpu_checks.sh            # logs in a folder of your choice
#   DEVICE=cpu OUT=/tmp/out bash benchmarks/gpu_checks.sh      # the same steps on a machine without a GPU
#
# Needs torch with CUDA, numpy, scipy, scikit-image, matplotlib, pytest and SimpleITK. On a machine that cannot
# install SimpleITK (no network), put its wheel in the clone's .whl/ folder first, downloaded elsewhere with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl SimpleITK
# (the Python version of the GPU machine); the script then installs it into /tmp/site for this run only.
set -uo pipefail
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1  # absolute: the script changes folder
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 1
if ! python3 -c "import SimpleITK" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$REPO/CollaGANImpute:$REPO"
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$OUT/environment.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee -a "$OUT/environment.txt"
status=0
# 1. The device rule on this device: the same mask and p99 scales as the CPU rule (and the inference tests).
timeout 90 python3 -m pytest -q -p no:cacheprovider -rs Testing/Python/core/test_device_mask.py \
  Testing/Python/core/test_acceleration.py 2>&1 | tee "$OUT/pytest.log" || status=1
# 2. Inference: one 240x240x155 volume, warm, in memory, each precision against fp32.
precisions=auto,fp32,bf16,fp16
[ "$DEVICE" = cpu ] && precisions=auto,fp32
timeout 120 python3 benchmarks/bench_volume.py --device "$DEVICE" --repeats 5 --precisions "$precisions" 2>&1 \
  | tee "$OUT/bench_volume.log" || status=1
# 3. Training: slices/s and peak GPU memory by batch size, torch.compile off and on, and the CPU.
if [ "$DEVICE" = cuda ]; then
  timeout 240 python3 benchmarks/bench_training_device.py --limit-s 200 --json "$OUT/bench_training_device.json" \
    2>&1 | tee "$OUT/bench_training_device.log" || status=1
else
  timeout 240 python3 benchmarks/bench_training_device.py --device cpu --batches 8 --compile off --steps 3 \
    --cases 4 2>&1 | tee "$OUT/bench_training_device.log" || status=1
fi
# 4. Every way of running the generator (CUDA rows where there is a GPU), without the CPU end-to-end runs.
timeout 110 python3 benchmarks/bench_inference.py --no-e2e --rounds 3 --json "$OUT/bench_inference.json" 2>&1 \
  | tee "$OUT/bench_inference.log" || status=1
echo "logs in $OUT; exit status $status"
exit $status
