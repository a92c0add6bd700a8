"""Training speed on one device: slices per second and peak memory of the ``brats`` recipe's training step.

For each batch size and torch.compile off and on, a Solver trains on synthetic BraTS-like cases (4 contrasts,
240x240 slices padded to the model's field, written by the benchmark and removed after) with bf16 autocast
on CUDA: a few untimed steps (compilation happens there, and is reported), then ``--steps`` timed ones.
After the uncompiled settings, a CPU row at the smallest batch for comparison. One line per setting::

    cuda  batch 32  compile off  bf16: 412.3 slices/s, peak GPU memory 5120 MiB (first steps 3.1 s)

    python benchmarks/bench_training_device.py                         # a GPU machine: batch 8/32/64, CPU row
    python benchmarks/bench_training_device.py --device cpu --batches 8 --compile off --steps 3
    python benchmarks/bench_training_device.py --device cpu --batches 2 --compile off --precision fp32,bf16

``--precision auto`` is the trainer's own choice: bf16 autocast on CUDA and on CPUs that multiply bf16 natively
(AVX-512-BF16, AMX), fp32 elsewhere. ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` in the environment
makes torch use AVX2 code only, as on a CPU without AVX-512: there bf16 is emulated.

Each setting stops early past ``--limit-s`` seconds in all (the remaining ones are listed as skipped), so the
run fits a fixed time slot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from bench_training import CONTRASTS, REPO, write_cases

sys.path[:0] = [str(REPO / "CollaGANImpute"), str(REPO)]
from training.collagan_train.cases import list_cases  # noqa: E402
from training.collagan_train.config import load_config  # noqa: E402
from training.collagan_train.data_loader import SliceData  # noqa: E402
from training.collagan_train.precision import torch_native_bf16, uses_bf16  # noqa: E402
from training.collagan_train.solver import Solver  # noqa: E402


def timed_steps(solver: Solver, count: int, device: torch.device) -> float:
    """Seconds for ``count`` training steps, the GPU's queued work included."""
    start = time.perf_counter()
    for _ in range(count):
        solver.train_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(train: SliceData, cfg, device: torch.device, compile_model: bool, steps: int, warmup: int) -> dict:
    """Train ``warmup`` untimed then ``steps`` timed steps; slices/s, peak memory and the warm-up's seconds."""
    solver = Solver(cfg, train, None, out_dir=cfg.out_dir, device=device)
    if compile_model:
        solver.G.compile()  # in place: the training step calls the same module, its weights keep their names
        solver.D.compile()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first = timed_steps(solver, warmup, device)
    seconds = timed_steps(solver, steps, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    del solver
    return {"slices_per_s": steps * cfg.batch_size / seconds, "peak_gpu_mib": peak, "first_steps_s": first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda | cpu (a CPU row follows a CUDA run anyway)")
    parser.add_argument("--batches", default="8,32,64", help="comma-separated batch sizes")
    parser.add_argument("--compile", default="off,on", help="off, on or off,on")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--cases", type=int, default=8, help="synthetic cases, 16 slices each")
    parser.add_argument("--precision", default="auto",
                        help="auto (the trainer's default: bf16 on CUDA and on CPUs with native bf16), fp32, bf16 "
                             "or fp32,bf16")
    parser.add_argument("--limit-s", type=float, default=420, help="skip the settings left after this long")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("No CUDA GPU here: use --device cpu.")
    batches = [int(b) for b in args.batches.split(",")]
    modes = [c == "on" for c in args.compile.split(",")]
    # Uncompiled first, then the CPU row, then compiled (its first steps compile, the longest part of the run).
    precisions = args.precision.split(",")
    settings = [(device, b, False, p) for b in batches if False in modes for p in precisions]
    if device.type == "cuda":
        settings += [(torch.device("cpu"), min(batches), False, p) for p in precisions]
    settings += [(device, b, True, p) for b in batches if True in modes for p in precisions]
    started, rows = time.perf_counter(), []
    data = Path(tempfile.mkdtemp(prefix="bench-training-device-"))
    try:
        write_cases(data, args.cases)
        folder = data / "complete"
        base = load_config(str(REPO / "training/collagan_train/configs/brats.json"), [
            f"contrasts={json.dumps(CONTRASTS)}", f"cache_dir={data / 'cache'}", f"out_dir={data / 'run'}",
            f"loader_workers={min(8, os.cpu_count() or 1)}"])
        train = SliceData.build(list_cases(folder), base, folder)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"{name}; torch {torch.__version__}; recipe brats ({len(train)} training slices, {base.g_base}-channel "
              f"U-Net, {base.g_levels} levels); CPU threads {torch.get_num_threads()}", flush=True)
        print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, bf16 native for torch: "
              f"{torch_native_bf16()}", flush=True)
        for where, batch, compiled, precision in settings:
            label = f"{where.type:4s}  batch {batch:2d}  compile {'on ' if compiled else 'off'}"
            if time.perf_counter() - started > args.limit_s:
                print(f"{label}: skipped (past --limit-s {args.limit_s:g})", flush=True)
                continue
            cfg = replace(base, batch_size=batch, bf16=None if precision == "auto" else precision == "bf16",
                          device=where.type)
            bf16 = uses_bf16(cfg, where)
            try:
                row = measure(train, cfg, where, compiled, args.steps if where.type == "cuda" else 3, args.warmup)
            except Exception as exc:  # e.g. out of memory or no compiler: reported, the other settings still run
                print(f"{label}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})", flush=True)
                continue
            memory = f", peak GPU memory {row['peak_gpu_mib']:.0f} MiB" if row["peak_gpu_mib"] is not None else ""
            print(f"{label}  {'bf16' if bf16 else 'fp32'}: {row['slices_per_s']:.1f} slices/s{memory} "
                  f"(first {args.warmup} steps {row['first_steps_s']:.1f} s)", flush=True)
            rows.append({"device": where.type, "batch": batch, "compile": compiled, "bf16": bf16, **row})
    finally:
        shutil.rmtree(data, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
