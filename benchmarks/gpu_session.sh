#!/usr/bin/env bash
# The CUDA checks of issue 6 in one call of the session tool `device` (an H200 lent to some sessions; 15 minutes
# of device time in all). Run on the device machine from the repository root; writes its logs to $OUT.
#
# The device image has torch, numpy, scikit-image, scipy, matplotlib and tqdm, but not SimpleITK, and nothing
# can be fetched there. Prepare here, once per session (the tracked tree, 16 MB, plus the 53 MB wheel is over
# the tool's 64 MiB, so the 4.7 MB stage-1 checkpoint stays behind for the call):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl SimpleITK
#   git rm -q --cached training/checkpoints/lgg_v2_stage1_g.pt
#   echo /training/checkpoints/lgg_v2_stage1_g.pt >> .git/info/exclude
# then call the tool's run with command "bash benchmarks/gpu_session.sh", carry [".whl"], timeout_s 540, and
# afterwards undo the two lines of .git/info/exclude and `git reset -q training/checkpoints/lgg_v2_stage1_g.pt`.
#
# DEVICE=cpu OUT=/tmp/out bash benchmarks/gpu_session.sh   runs the same steps on a machine without a GPU.
set -uo pipefail
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-$(mktemp -d)}
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 1
if ! python3 -c "import SimpleITK" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$REPO/CollaGANImpute:$REPO"
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$OUT/environment.txt"
status=0
# 1. The device rule on this device: the same mask and p99 scales as the CPU rule (and the inference tests).
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs Testing/Python/test_core_device_mask.py \
  Testing/Python/test_core_acceleration.py 2>&1 | tee "$OUT/pytest.log" || status=1
# 2. The issue's CUDA target: one 240x240x155 volume, warm, in memory; slices/s; quality rule.
timeout 150 python3 benchmarks/bench_volume.py --device "$DEVICE" --repeats 10 2>&1 | tee "$OUT/bench_volume.log" \
  || status=1
# 3. Every way of running the generator (CUDA rows where there is a GPU), without the CPU end-to-end runs.
timeout 200 python3 benchmarks/bench_inference.py --no-e2e --rounds 3 --json "$OUT/bench_inference.json" 2>&1 \
  | tee "$OUT/bench_inference.log" || status=1
echo "logs in $OUT; exit status $status"
exit $status
