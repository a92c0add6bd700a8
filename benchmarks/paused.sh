#!/usr/bin/env bash
# Run a command with the background training job paused, for clean timings on a shared 2-core machine.
#
# Usage: benchmarks/paused.sh python benchmarks/bench_inference.py
#
# The job is paused with SIGSTOP (never killed) and resumed with SIGCONT by a trap, so it resumes even when the
# command fails or is interrupted. Only processes running the training entry point are touched.
set -u
pids=""
for pid in $(pgrep -f "collagan_train.main train" || true); do
  # Only python processes (not a shell whose command line merely mentions the name), never ourselves.
  if [ "$pid" != "$$" ] && grep -q python "/proc/$pid/comm" 2>/dev/null; then
    pids="$pids $pid"
  fi
done
resume() {
  for pid in $pids; do kill -CONT "$pid" 2>/dev/null && echo "[paused.sh] resumed training pid $pid" >&2; done
}
trap resume EXIT
trap 'exit 130' INT TERM
for pid in $pids; do kill -STOP "$pid" && echo "[paused.sh] paused training pid $pid" >&2; done
"$@"
