"""Training data pipeline at scale: peak memory and training speed for 10, 100 and 1000 cases.

For each size the benchmark writes that many synthetic BraTS-like cases (four contrasts t1n/t1c/t2w/t2f and a
``-seg``, 240x240 slices at 1 mm, 16 slices each; a phantom head with per-case size, position, tissue levels and
noise; 50 distinct heads, the other cases copies of them) into a temporary folder, then runs the training pipeline
in a fresh process: the per-case slice stores are built through the core (padded to the model's 256x256 field),
and a small generator trains for a few steps with batches from DataLoader workers. It prints, per size::

    cases N: peak RSS X MB, Y slices/s

where the peak is the largest resident set of the training process (its own high-water mark, ``VmHWM``) and of
its DataLoader workers (``getrusage`` of the children: a forked worker's counts the pages it shares with the
trainer) and the speed counts training slices per second after the first step (worker start-up). The
data folder and its stores are removed after each size. From 100 to 1000 cases the peak may grow at most 1.3x;
the benchmark exits non-zero otherwise.

Example:
    nice python benchmarks/bench_training.py                       # 10, 100, 1000 cases; about 10 min on 2 cores
    python benchmarks/bench_training.py --sizes 10 100 --steps 10  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
CONTRASTS = ["t1n", "t1c", "t2w", "t2f"]
#: Tissue levels (background-free head, white matter, grey matter, fluid, lesion) per contrast.
LEVELS = {"t1n": (300, 520, 420, 150, 380), "t1c": (320, 560, 450, 160, 700),
          "t2w": (350, 300, 420, 900, 700), "t2f": (330, 380, 470, 200, 650)}
SLICES, SIZE = 16, 240
GROWTH_LIMIT = 1.3


def write_cases(folder: Path, count: int, seed: int = 0, distinct: int = 50) -> None:
    """``count`` phantom cases in BraTS 2023 layout under ``folder/complete``: ``distinct`` different heads, the
    others copies of them under their own names (each is still a case of its own to store and train on)."""
    from CollaGANImputeLib.io import write_volume

    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.linspace(-1, 1, SLICES), np.linspace(-1, 1, SIZE), np.linspace(-1, 1, SIZE),
                          indexing="ij")
    for number in range(count):
        name = f"BraTS-SYN-{number:05d}-000"
        case = folder / "complete" / name
        case.mkdir(parents=True)
        if number >= distinct:  # writing phantoms is not what is measured: copy one
            like = f"BraTS-SYN-{number % distinct:05d}-000"
            for contrast in [*CONTRASTS, "seg"]:
                shutil.copyfile(folder / "complete" / like / f"{like}-{contrast}.nii.gz",
                                case / f"{name}-{contrast}.nii.gz")
            continue
        cy, cx = rng.normal(0, 0.03, 2)
        ry, rx = rng.uniform(0.65, 0.8, 2)
        r = np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 + (z / 1.6) ** 2)
        lesion = ((y - cy - 0.2) ** 2 + (x - cx + 0.2) ** 2 + z ** 2 / 4) < rng.uniform(0.01, 0.03)
        labels = np.select([lesion, r < 0.25, r < 0.55, r < 0.85, r < 1.0], [4, 3, 1, 2, 0], -1)
        scale = rng.uniform(0.8, 1.2)
        for contrast in CONTRASTS:
            levels = np.array(LEVELS[contrast], dtype=np.float32) * scale
            volume = np.where(labels >= 0, levels[np.clip(labels, 0, 4)], 0.0)
            volume = volume + (labels >= 0) * rng.normal(0, 12, volume.shape)
            write_volume(sitk.GetImageFromArray(np.clip(volume, 0, None).astype(np.int16)),
                         case / f"{name}-{contrast}.nii.gz")
        write_volume(sitk.GetImageFromArray(lesion.astype(np.uint8)), case / f"{name}-seg.nii.gz")


def child(args: argparse.Namespace) -> None:
    """Build the stores and train in this process; print one JSON line with the figures."""
    import torch

    sys.path.insert(0, str(REPO))
    torch.set_num_threads(1)
    from benchlib import peak_rss_mb  # this process's own peak: ru_maxrss would carry the parent's over exec

    from training.collagan_train.cases import list_cases
    from training.collagan_train.config import load_config
    from training.collagan_train.data_loader import SliceData
    from training.collagan_train.solver import Solver

    folder = Path(args.data) / "complete"
    cfg = load_config(str(REPO / "training/collagan_train/configs/tiny.json"), [
        f"contrasts={json.dumps(CONTRASTS)}", f"cache_dir={Path(args.data) / 'cache'}",
        f"out_dir={Path(args.data) / 'run'}", f"batch_size={args.batch}", "crop=128", f"steps={args.steps + 1}",
        f"loader_workers={args.workers}", "clsf_warmup_steps=0"])
    start = time.perf_counter()
    train = SliceData.build(list_cases(folder), cfg, folder)
    built = time.perf_counter() - start
    data_mb = peak_rss_mb()  # stores built, index made, no model yet
    solver = Solver(cfg, train, None, out_dir=cfg.out_dir)
    solver.train_step()  # the workers start here: not timed
    start = time.perf_counter()
    for _ in range(args.steps):
        solver.train_step()
    seconds = time.perf_counter() - start
    del solver  # the DataLoader workers end, so their peak is in RUSAGE_CHILDREN
    import gc

    gc.collect()
    time.sleep(0.5)
    own = peak_rss_mb()
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"slices": len(train), "build_s": built, "peak_mb": max(own, workers), "own_mb": own,
                      "workers_mb": workers, "slices_per_s": args.steps * args.batch / seconds, "data_mb": data_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--tmp", default=None, help="where the cases are written (default: the system's temp)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    sys.path.insert(0, str(REPO / "CollaGANImpute"))
    peaks = {}
    for count in args.sizes:
        data = Path(tempfile.mkdtemp(prefix=f"bench-training-{count}-", dir=args.tmp))
        try:
            start = time.perf_counter()
            write_cases(data, count)
            written = time.perf_counter() - start
            # A fresh process per size: its peak is that size's alone. This checkout's core and training tree.
            path = os.pathsep.join([str(REPO / "CollaGANImpute"), str(REPO), os.environ.get("PYTHONPATH", "")])
            run = subprocess.run([sys.executable, __file__, "--child", "--data", str(data), "--steps",
                                  str(args.steps), "--batch", str(args.batch), "--workers", str(args.workers)],
                                 capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path})
            if run.returncode:
                sys.exit(f"cases {count}: the training process failed:\n{run.stderr[-3000:]}")
            result = json.loads(run.stdout.strip().splitlines()[-1])
        finally:
            shutil.rmtree(data, ignore_errors=True)
        peaks[count] = result["peak_mb"]
        print(f"cases {count}: peak RSS {result['peak_mb']:.0f} MB, {result['slices_per_s']:.1f} slices/s",
              flush=True)
        print(f"  ({result['slices']} slices; cases written in {written:.0f} s, stores built in "
              f"{result['build_s']:.0f} s; peak RSS {result['data_mb']:.0f} MB when the stores were built, "
              f"trainer {result['own_mb']:.0f} MB, largest DataLoader worker {result['workers_mb']:.0f} MB)",
              file=sys.stderr, flush=True)
    if 100 in peaks and 1000 in peaks:
        growth = peaks[1000] / peaks[100]
        print(f"peak RSS 1000 / 100 cases: {growth:.2f}x (limit {GROWTH_LIMIT}x)")
        if growth > GROWTH_LIMIT:
            sys.exit(1)


if __name__ == "__main__":
    main()
