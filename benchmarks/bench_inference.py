"""Inference speed, memory and quality of the CollaGAN generator, every way of running it, in one run.

Prints, on this machine and in this run: the naive fp32 eager slice-by-slice loop, the path used before this
benchmark existed (TorchScript fp32, batches of 8), each option, the CPU runtimes (the fast export as ONNX on
ONNX Runtime and OpenVINO) and the project's default (``impute_slices`` with its defaults, ``runtime="auto"``, on a
model exported as training exports it: "fast export" with its ONNX file beside): ms per 256x256 slice, seconds per
BraTS-sized volume (155 slices), GFLOP/s and the share of the limit that an fp32 matrix product timed in the same
run sets (its GFLOP/s over the generator's FLOPs: the ms/slice no fp32 runtime can beat), peak RSS, speed-up over
the naive loop, and the quality rule (masked SSIM within 0.002 and NMSE within 1 % of
the fp32 eager output on the sample case, scored with CollaGANImputeLib.metrics). Then two end-to-end runs
(read, normalize, infer, write) of a 240x240x155 case written as NIfTI, each in a fresh process for an honest
peak RSS.

Run it on an otherwise idle machine (pause or finish training runs first):
    python benchmarks/bench_inference.py                                      # ~1-2 min
    python benchmarks/bench_inference.py --full --rounds 5 --json out.json

Weights: ``--checkpoint bundled`` (default) times the bundled model's weights (its fast export turned back into
the eager generator for the naive path); ``auto`` takes the newest paper-sized (base 16, 5 levels) checkpoint under
runs/*/; ``none`` random weights (timings are the same; the quality check then means nothing).

bf16 rows are skipped where the CPU only emulates bf16 (no AVX512-BF16/AMX: slower than fp32, never chosen).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np
import SimpleITK as sitk
import torch
from benchlib import (
    BRATS_SHAPE,
    CpuLoad,
    load_weights,
    matmul_gflops,
    model_gflop,
    peak_rss_mb,
    reset_peak_rss,
    wait_until_quiet,
    write_brats_sized_case,
)
from CollaGANImputeLib import (
    LoadedModel,
    ModelCard,
    ccnr_export,
    hardware,
    load_model,
    runtime,
    runtime_choice,
    save_model,
)
from CollaGANImputeLib import case_files as case_files_module
from CollaGANImputeLib import imputation_steps as steps_module
from CollaGANImputeLib import pipeline as pipeline_module
from CollaGANImputeLib import provenance as provenance_module
from CollaGANImputeLib.acceleration import InferencePlan, cpu_has_native_bf16, plan_inference
from CollaGANImputeLib.case import prepare_case
from CollaGANImputeLib.case_files import read_case
from CollaGANImputeLib.ccnr_export import count_fast_units, optimize_for_inference
from CollaGANImputeLib.contract import onnx_path_for, save_onnx
from CollaGANImputeLib.geometry import pad_or_crop, to_canonical_array, undo_pad_or_crop
from CollaGANImputeLib.inference import build_input, impute_slices
from CollaGANImputeLib.metrics import nmse, score_volume
from CollaGANImputeLib.models import sample_case_dir

CONTRASTS = ["t1n", "t1c", "t2f"]
INPUTS, TARGET = ["t1n", "t2f"], "t1c"
SSIM_TOLERANCE, NMSE_TOLERANCE = 0.002, 0.01  # the quality rule the README states for bf16
CPU = torch.device("cpu")

Runner = Callable[[Mapping[str, np.ndarray], str], np.ndarray]


def run_plan(plan: InferencePlan, card: ModelCard, inputs: Mapping[str, np.ndarray], target: str,
             batch: int) -> np.ndarray:
    """The model over every slice, ``batch`` slices per ``plan`` call, with no other work (no empty-slice
    reuse): how ``impute_slices`` ran before this benchmark when given the fp32 NCHW plan."""
    n, height, width = next(iter(inputs.values())).shape
    out = np.zeros((n, height, width), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            slices = {c: torch.from_numpy(np.ascontiguousarray(a[start:stop])) for c, a in inputs.items()}
            x = pad_or_crop(build_input(slices, card.contrasts, target, (stop - start, height, width)),
                            card.in_plane_size)
            out[start:stop] = undo_pad_or_crop(plan(x), (height, width))[:, 0].numpy()
    return out


def before_impute_slices(model: LoadedModel, inputs: Mapping[str, np.ndarray], target: str, **kwargs) -> np.ndarray:
    """``impute_slices`` as it was: fp32 TorchScript in NCHW, batches of ``batch_size`` (default 8)."""
    plan = InferencePlan(model.module, CPU, "fp32", False, "fp32")
    usable = {c: a for c, a in inputs.items() if c != target}
    return run_plan(plan, model.card, usable, target, int(kwargs.get("batch_size") or 8))


@dataclass
class Option:
    name: str
    run: Runner
    times: list[float] = field(default_factory=list)
    peak_mb: float = 0.0
    output: Optional[np.ndarray] = None
    scores: dict = field(default_factory=dict)


def build_options(eager: torch.nn.Module, models: Mapping[str, LoadedModel], full: bool) -> list[Option]:
    plain, fast = models["plain"], models["fast"]
    card = plain.card
    bf16 = cpu_has_native_bf16()  # emulated bf16 is slower than fp32 and never chosen: not timed

    def lib(model: LoadedModel, **kwargs) -> Runner:
        kwargs.setdefault("runtime", "torch")
        return lambda inputs, target: impute_slices(model, inputs, target, device="cpu", **kwargs)

    def planned(plan: InferencePlan, batch: int) -> Runner:
        return lambda inputs, target: run_plan(plan, card, inputs, target, batch)

    eager_plan = InferencePlan(eager, CPU, "fp32", False, "fp32")
    options = [
        Option("naive: eager fp32, slice by slice", planned(eager_plan, 1)),
        Option("before: TorchScript fp32, batch 8", planned(InferencePlan(plain.module, CPU, "fp32", False, "fp32"),
                                                            8)),
        *([Option("TorchScript bf16 NCHW", lib(plain, precision="bf16", channels_last=False)),
           Option("TorchScript bf16 channels-last", lib(plain, precision="bf16", channels_last=True))] if bf16 else []),
        Option("fast export, fp32 channels-last", lib(fast, precision="fp32")),
        *([Option("fast export, bf16 autocast channels-last",
                  planned(InferencePlan(fast.module, CPU, "bf16", True, "autocast", True), 1)),
           Option("fast export, torch bf16 (precision auto)", lib(fast))] if bf16 else []),
    ]
    threads = hardware.num_threads()

    def one_engine(name: str) -> Runner:  # all threads in one engine: how the ONNX runtimes ran before
        engine = runtime.onnx_runner(fast, name, "fp32", engines=1)
        return planned(lambda x: torch.from_numpy(engine(x.numpy())), 8)  # type: ignore[arg-type]

    for name in runtime.ONNX_RUNTIMES:
        if hardware.installed(name):
            if threads > 1:
                options.append(Option(f"ONNX {name} fp32, one {threads}-thread engine", one_engine(name)))
            options.append(Option(f"ONNX {name} fp32", lib(fast, runtime=name, precision="fp32")))
            if name == "openvino" and bf16:
                options.append(Option("ONNX openvino bf16", lib(fast, runtime=name, precision="bf16")))
            if full:
                options.append(Option(f"ONNX {name} fp32, no CCNR rewrite", lib(plain, runtime=name,
                                                                                 precision="fp32")))
                options.append(Option(f"ONNX {name} fp32, batch 1", lib(fast, runtime=name, precision="fp32",
                                                                       batch_size=1)))
    chosen = runtime_choice.choose_runtime(fast, "auto", "cpu", "auto")  # measured once per machine, then remembered
    options.append(Option(f"DEFAULT: runtime auto ({chosen}), precision auto", lib(fast, runtime="auto")))
    if full:
        # torch's own TorchScript inference pass: freezes, folds and moves what it can to MKLDNN layout.
        jit_optimized = torch.jit.optimize_for_inference(torch.jit.freeze(copy.deepcopy(plain.module).eval()))
        options += [
            Option("TorchScript fp32, one slice at a time", lib(plain, precision="fp32")),
            Option("TorchScript fp32, jit.optimize_for_inference",
                   planned(InferencePlan(jit_optimized, CPU, "fp32", False, "fp32"), 1)),
            Option("DEFAULT with batch_size 1", lib(fast, runtime="auto", batch_size=1)),
            Option("fast export with every CCNR merged, auto", lib(models["all merged"])),
            Option("fast export with no CCNR merged, auto", lib(models["none merged"])),
        ]
    if full and bf16:
        bf16_fast = plan_inference(fast.module, CPU, "bf16")
        frozen = torch.jit.freeze(bf16_fast.module.eval())
        options += [
            Option("fast export, bf16 CL, batch 8 per call",
                   planned(InferencePlan(bf16_fast.module, CPU, "bf16", True, "weights", False), 8)),
            Option("fast export, bf16 CL, frozen",
                   planned(InferencePlan(frozen, CPU, "bf16", True, "weights", True), 1)),
        ]
    if torch.cuda.is_available():  # CUDA rows (no CUDA figure is published yet)
        options += [Option("CUDA fp32, batch 32", lambda i, t: impute_slices(plain, i, t, device="cuda",
                                                                             batch_size=32, precision="fp32")),
                    Option("CUDA DEFAULT (autocast, channels-last), batch 32",
                           lambda i, t: impute_slices(fast, i, t, device="cuda", batch_size=32))]
    return options


def sample_arrays() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, Optional[np.ndarray]]:
    """The sample case in p99 units: inputs (mask from the inputs only), every contrast, mask, lesion."""
    folder = sample_case_dir()
    images = read_case(folder, CONTRASTS)
    case = prepare_case(images, mask_from=INPUTS)
    lesion = None
    seg = folder / f"{folder.name}-seg.nii.gz"
    if seg.is_file():
        lesion = to_canonical_array(sitk.ReadImage(str(seg))) > 0
    return {c: case.arrays[c] for c in INPUTS}, case.arrays, case.mask, lesion


def time_options(options: list[Option], inputs: Mapping[str, np.ndarray], rounds: int) -> float:
    """Round-robin timing (rounds interleave the options, so a disturbance hits all alike); returns the cores
    other processes used meanwhile."""
    warm = {c: a[:2] for c, a in inputs.items()}
    for option in options:  # oneDNN builds its kernels for each new shape on the first call
        option.run(warm, TARGET)
    load = CpuLoad()
    for _ in range(rounds):
        for option in options:
            reset_peak_rss()
            start = time.perf_counter()
            option.output = option.run(inputs, TARGET)
            option.times.append(time.perf_counter() - start)
            option.peak_mb = max(option.peak_mb, peak_rss_mb())
    return load.others_cores()


def quality(options: list[Option], truth: np.ndarray, mask: np.ndarray, lesion: Optional[np.ndarray]) -> None:
    reference = options[0].output
    base = score_volume(reference, truth, mask, lesion)
    for option in options:
        scores = score_volume(option.output, truth, mask, lesion)
        d_ssim = abs(scores["ssim"] - base["ssim"])
        d_nmse = abs(scores["nmse"] - base["nmse"]) / base["nmse"]
        option.scores = {"ssim": scores["ssim"], "nmse": scores["nmse"], "d_ssim": d_ssim, "d_nmse": d_nmse,
                         "nmse_vs_fp32": nmse(option.output, reference, mask),
                         "max_abs_vs_fp32": float(np.abs(option.output - reference)[mask].max()),
                         "ok": d_ssim <= SSIM_TOLERANCE and d_nmse <= NMSE_TOLERANCE}


def quality_every_target(naive: Option, default: Option, slices: int) -> dict[str, dict]:
    """The default against fp32 eager on every target of the sample case (mask from that target's inputs)."""
    results = {}
    for target in CONTRASTS:
        used = [c for c in CONTRASTS if c != target]
        case = prepare_case(read_case(sample_case_dir(), CONTRASTS), mask_from=used)
        given = {c: case.arrays[c][:slices] for c in used}
        mask, truth = case.mask[:slices], case.arrays[target][:slices]
        a = score_volume(naive.run(given, target), truth, mask)
        b = score_volume(default.run(given, target), truth, mask)
        row = {"ssim": b["ssim"], "ssim_fp32": a["ssim"], "d_ssim": abs(b["ssim"] - a["ssim"]),
               "nmse": b["nmse"], "nmse_fp32": a["nmse"], "d_nmse": abs(b["nmse"] - a["nmse"]) / a["nmse"]}
        row["ok"] = row["d_ssim"] <= SSIM_TOLERANCE and row["d_nmse"] <= NMSE_TOLERANCE
        results[target] = row
    return results


def e2e_child(args: argparse.Namespace) -> None:
    """One end-to-end imputation in this (fresh) process; prints a JSON line of stage times and peak RSS."""
    times: dict[str, float] = defaultdict(float)

    def timed(stage: str, function: Callable) -> Callable:
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                times[stage] += time.perf_counter() - start
        return wrapper

    # Stage timers around the functions impute_case calls (by the names its modules call them).
    case_files_module.read_volume = timed("read", case_files_module.read_volume)
    steps_module.prepare_case = timed("normalize", steps_module.prepare_case)
    infer = before_impute_slices if args.mode == "before" else steps_module.impute_slices
    steps_module.impute_slices = timed("infer", infer)
    provenance_module.write_volume = timed("write", provenance_module.write_volume)
    load = CpuLoad()
    start = time.perf_counter()
    model = timed("load model", load_model)(args.model)
    written = pipeline_module.impute_case(args.e2e_child, model, out_dir=args.out, targets=[TARGET], device="cpu")
    total = time.perf_counter() - start
    print(json.dumps({"total_s": total, **{f"{k}_s": v for k, v in times.items()},
                      "peak_rss_mb": peak_rss_mb(),  # VmHWM: ru_maxrss would carry the parent's over exec
                      "others_cores": load.others_cores(), "written": str(written[TARGET])}))


def end_to_end(model_path: Path, work: Path, threads: int) -> dict[str, dict]:
    case = write_brats_sized_case(sample_case_dir(), work / "e2e", INPUTS)
    results = {}
    for mode in ("before", "default"):
        os.sync()  # the previous run's dirty pages would otherwise be written back during this run's write
        command = [sys.executable, str(Path(__file__).resolve()), "--e2e-child", str(case), "--model",
                   str(model_path), "--mode", mode, "--out", str(work / f"out-{mode}"), "--threads", str(threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if done.returncode != 0:
            raise RuntimeError(f"end-to-end run '{mode}' failed:\n{done.stderr[-3000:]}")
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def report(args, weights, options, gflop, peaks, others, e2e, quality_targets) -> dict:
    naive_ms = min(options[0].times) / args.slices * 1000
    limit_ms = gflop / peaks["fp32"] * 1000
    bf16 = peaks.get("bf16", float("nan"))
    print(f"\nfp32 limit: {peaks['fp32']:.0f} GFLOP/s (2048x2048 matrix product, this run) / {gflop:.2f} GFLOP per "
          f"slice = {limit_ms:.1f} ms/slice; %limit = limit / ms/slice")
    print(f"\n{'option':44s} {'ms/slice':>8s} {'median':>7s} {'s/vol':>6s} {'GFLOP/s':>7s} {'%limit':>7s} "
          f"{'%bf16mm':>7s} {'speedup':>7s} {'peakMB':>7s} {'SSIM':>7s} {'dSSIM':>7s} {'NMSE':>7s} "
          f"{'dNMSE%':>6s} rule")
    rows = []
    for option in options:
        best = min(option.times) / args.slices * 1000
        median = float(np.median(option.times)) / args.slices * 1000
        s = option.scores
        row = {"option": option.name, "ms_per_slice": best, "median_ms_per_slice": median,
               "s_per_volume": best * BRATS_SHAPE[0] / 1000, "gflops": gflop / best * 1000,
               "speedup_vs_naive": naive_ms / best, "peak_rss_mb": option.peak_mb, **s}
        rows.append(row)
        print(f"{option.name:44s} {best:8.1f} {median:7.1f} {row['s_per_volume']:6.2f} {row['gflops']:7.1f} "
              f"{100 * row['gflops'] / peaks['fp32']:6.0f}% {100 * row['gflops'] / bf16:6.0f}% "
              f"{row['speedup_vs_naive']:6.2f}x {option.peak_mb:7.0f} {s['ssim']:7.4f} {s['d_ssim']:7.4f} "
              f"{s['nmse']:7.4f} {100 * s['d_nmse']:6.2f} {'ok' if s['ok'] else 'FAIL'}")
    print(f"\ns/vol = ms/slice x {BRATS_SHAPE[0]} slices (inference only); GFLOP/s = {gflop:.2f} GFLOP of the "
          f"paper's generator per 256x256 slice / time; peakMB = process peak RSS during that option "
          f"(reset before each call; includes everything this process holds).")
    print(f"other processes used {others:.2f} cores on average during the timing"
          + ("  (WARNING: timings disturbed; re-run on a quiet machine)" if others > 0.2 else ""))
    if quality_targets:
        print("\nquality of the default on every target (vs fp32 eager, sample case):")
        for target, q in quality_targets.items():
            print(f"  {target}: SSIM {q['ssim']:.4f} (fp32 {q['ssim_fp32']:.4f}, d {q['d_ssim']:.4f}), NMSE "
                  f"{q['nmse']:.4f} (fp32 {q['nmse_fp32']:.4f}, d {100 * q['d_nmse']:.2f} %) "
                  f"{'ok' if q['ok'] else 'FAIL'}")
    if e2e:
        print(f"\nend to end, {BRATS_SHAPE[2]}x{BRATS_SHAPE[1]}x{BRATS_SHAPE[0]} case (2 inputs -> {TARGET}), "
              "NIfTI in and out, fresh process each:")
        for mode, r in e2e.items():
            stages = ", ".join(f"{k[:-2]} {r[k]:.2f}" for k in ("load model_s", "read_s", "normalize_s",
                                                                  "infer_s", "write_s") if k in r)
            print(f"  {mode:8s} total {r['total_s']:.2f} s ({stages}); peak RSS {r['peak_rss_mb']:.0f} MB; "
                  f"others used {r['others_cores']:.2f} cores")
    return {"machine": {"cpu": hardware.cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "native_bf16": cpu_has_native_bf16(), "python": platform.python_version()},
            "weights": weights.source, "gflop_per_slice": gflop, "matmul_gflops": peaks,
            "others_cores": others, "rows": rows, "quality_targets": quality_targets, "end_to_end": e2e}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per option (the best is reported)")
    parser.add_argument("--slices", type=int, default=32, help="sample-case slices per timed round (max 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--checkpoint", default="bundled",
                        help="bundled (the bundled model's weights) | auto (newest under runs/) | none | a path")
    parser.add_argument("--full", action="store_true", help="also time the options that lost (slower)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end runs")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="first wait up to this long for other processes to leave the CPU (shared machines)")
    parser.add_argument("--e2e-child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.e2e_child:
        e2e_child(args)
        return
    wall = time.perf_counter()
    weights = load_weights(args.checkpoint)
    print(f"machine: {hardware.cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"native bf16 {cpu_has_native_bf16()}; weights: {weights.source}")
    if not weights.trained:
        print("note: random weights - the quality check must be re-run on the bundled model")
    if args.wait_quiet > 0:
        print(f"other processes use {wait_until_quiet(args.wait_quiet):.2f} cores; starting")
    work = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    try:
        # The weights' own outside-head rule: a zeroed background also makes the written file quicker to gzip.
        card = ModelCard(name="bench", contrasts=CONTRASTS, licence="benchmark only",
                         outside_head=weights.outside_head)
        # As training/collagan_train/export.py exports: TorchScript, and the same module as ONNX beside it.
        example = torch.rand(2, 2 * len(CONTRASTS), 256, 256)
        for name, module in (("plain", weights.generator), ("fast", optimize_for_inference(weights.generator))):
            save_model(module, card, work / f"{name}.pt")
            save_onnx(module, load_model(work / f"{name}.pt").card, onnx_path_for(work / f"{name}.pt"), example)
        models = {"plain": load_model(work / "plain.pt"), "fast": load_model(work / "fast.pt")}
        if args.full:  # the merge threshold's two extremes
            default_threshold = ccnr_export.MERGE_BELOW_CHANNELS
            for name, threshold in (("all merged", 10**6), ("none merged", 0)):
                ccnr_export.MERGE_BELOW_CHANNELS = threshold
                save_model(optimize_for_inference(weights.generator), card, work / f"{name}.pt")
                models[name] = load_model(work / f"{name}.pt")
            ccnr_export.MERGE_BELOW_CHANNELS = default_threshold
        fast = models["fast"]
        print(f"fast export: {count_fast_units(fast.module)} CCNR units rewritten; default plan: "
              f"{plan_inference(fast.module, CPU).describe()}")
        peaks = {"fp32": matmul_gflops(torch.float32)}
        if cpu_has_native_bf16():
            peaks["bf16"] = matmul_gflops(torch.bfloat16)
        gflop = model_gflop(weights.generator, 2 * len(CONTRASTS))
        print(f"matrix product 2048x2048: fp32 {peaks['fp32']:.0f} GFLOP/s"
              + (f", bf16 {peaks['bf16']:.0f} GFLOP/s" if "bf16" in peaks else " (bf16 emulated here: not timed)")
              + f"; model: {gflop:.2f} GFLOP per 256x256 slice -> fp32 limit {gflop / peaks['fp32'] * 1000:.1f} "
              "ms/slice")
        inputs, arrays, mask, lesion = sample_arrays()
        inputs = {c: a[:args.slices] for c, a in inputs.items()}
        truth, mask = arrays[TARGET][:args.slices], mask[:args.slices]
        lesion = lesion[:args.slices] if lesion is not None else None
        options = build_options(weights.generator, models, args.full)
        others = time_options(options, inputs, args.rounds)
        quality(options, truth, mask, lesion)
        default = next(o for o in options if o.name.startswith("DEFAULT"))
        quality_targets = quality_every_target(options[0], default, args.slices)
        e2e = None if args.no_e2e else end_to_end(work / "fast.pt", work, args.threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # models, the 240x240x155 case and its outputs
    results = report(args, weights, options, gflop, peaks, others, e2e, quality_targets)
    print(f"\nbenchmark wall time {time.perf_counter() - wall:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
