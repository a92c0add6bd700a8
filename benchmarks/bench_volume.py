"""One BraTS-sized volume, warm, in memory: what a GPU (or the CPU) takes from images to the imputed image.

The CUDA figure is timed "warm, end to end excluding file IO": the 240x240x155 case (the sample case,
as in bench_inference.py) is read once; then ``pipeline.impute`` (align, mask + normalize, infer on
the device, back to an image labelled synthetic) runs ``--repeats`` times after one warm-up call. On CUDA the
mask and the p99 scales are computed on the GPU too (``CollaGANImputeLib.device_mask``). Printed: each
stage's best time, slices per second of the inference, the naive path (eager fp32 generator, slice by slice, on
the same device) for the ratio, peak GPU memory, and the quality rule (masked SSIM within 0.002 and NMSE within
1 % of the fp32 output, scored against the real T1+Gd), for each precision asked for; on CUDA also ONNX
Runtime's CUDA provider where the installed onnxruntime has it.

    python benchmarks/bench_volume.py --device cuda --precisions auto,fp32,bf16,fp16   # on a GPU machine
    python benchmarks/bench_volume.py --device cpu --repeats 2

The CPU figure is a warm in-memory twin of bench_inference.py's fresh-process end-to-end run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from benchlib import eager_from_model, peak_rss_mb, write_brats_sized_case
from CollaGANImputeLib import default_model, load_model
from CollaGANImputeLib import imputation_steps as steps_module
from CollaGANImputeLib import pipeline as pipeline_module
from CollaGANImputeLib.geometry import pad_or_crop, undo_pad_or_crop
from CollaGANImputeLib.inference import build_input, describe_device, resolve_device
from CollaGANImputeLib.metrics import score_volume
from CollaGANImputeLib.models import sample_case_dir

INPUTS, TARGET = ["t1n", "t2f"], "t1c"


def timed_stages(times: dict[str, list[float]]) -> Callable[[], None]:
    """Wrap the functions ``pipeline.impute`` calls (through :mod:`.imputation_steps`) with timers; returns the
    function that undoes it."""
    originals = {name: getattr(steps_module, name) for name in ("prepare_case", "impute_slices", "label_synthetic")}
    stages = {"prepare_case": "mask + normalize", "impute_slices": "infer", "label_synthetic": "label"}

    def wrap(name: str) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                times[stages[name]][-1] += time.perf_counter() - start
        return timed

    for name in originals:
        setattr(steps_module, name, wrap(name))
    return lambda: [setattr(steps_module, name, function) for name, function in originals.items()]


def naive_slices_per_second(generator: torch.nn.Module, inputs: dict[str, np.ndarray], contrasts: list[str],
                            device: torch.device, size: tuple[int, int], slices: int = 32) -> float:
    """The eager fp32 generator called on one slice at a time (the path before any acceleration)."""
    generator = generator.to(device)
    shape = next(iter(inputs.values())).shape[1:]
    batches = [pad_or_crop(build_input({c: torch.from_numpy(a[i:i + 1]) for c, a in inputs.items()}, contrasts,
                                       TARGET, (1, *shape)), size) for i in range(slices)]
    with torch.inference_mode():
        undo_pad_or_crop(generator(batches[0].to(device)).cpu(), shape)  # warm-up
        start = time.perf_counter()
        for x in batches:
            undo_pad_or_crop(generator(x.to(device)).cpu(), shape)
    return slices / (time.perf_counter() - start)


def timed_imputations(images: dict, model, device: torch.device, precision: str, repeats: int,
                       runtime: str = "auto") -> tuple[dict[str, list[float]], object]:
    """``pipeline.impute`` ``repeats + 1`` times (the first is the warm-up); each stage's times and the last result."""
    times: dict[str, list[float]] = defaultdict(list)
    undo = timed_stages(times)
    try:
        for _ in range(repeats + 1):
            for stage in ("mask + normalize", "infer", "label", "total"):
                times[stage].append(0.0)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            result = pipeline_module.impute(images, model, targets=[TARGET], device=device, batch_size=None,
                                            precision=precision, runtime=runtime)
            times["total"][-1] = time.perf_counter() - start
    finally:
        undo()
    times["other (align, to image)"] = [total - sum(times[s][i] for s in ("mask + normalize", "infer", "label"))
                                        for i, total in enumerate(times["total"])]
    return times, result


def quality_line(name: str, prediction: np.ndarray, exact: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> str:
    """The quality rule against the fp32 output: masked SSIM within 0.002 and NMSE within 1 % (real T1+Gd)."""
    scores, fp32_scores = score_volume(prediction, truth, mask), score_volume(exact, truth, mask)
    d_ssim = abs(scores["ssim"] - fp32_scores["ssim"])
    d_nmse = abs(scores["nmse"] - fp32_scores["nmse"]) / fp32_scores["nmse"]
    verdict = "ok" if d_ssim <= 0.002 and d_nmse <= 0.01 else "BROKEN"
    return (f"  quality, {name} vs fp32: SSIM {scores['ssim']:.4f} vs {fp32_scores['ssim']:.4f}, NMSE "
            f"{scores['nmse']:.4f} vs {fp32_scores['nmse']:.4f} (dSSIM {d_ssim:.4f}, dNMSE {d_nmse * 100:.2f} %), "
            f"largest voxel difference {float(np.abs(prediction - exact).max()):.2e} p99 units: {verdict}")


def onnxruntime_cuda_line(model, case, repeats: int) -> str:
    """ONNX Runtime's CUDA provider on the model's ONNX file, when the installed onnxruntime has it (the
    onnxruntime-gpu package): the inference of the volume's slices, timed warm."""
    try:
        import onnxruntime
    except ImportError:
        return "ONNX Runtime CUDA provider: onnxruntime is not installed"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers() or model.onnx is None:
        return (f"ONNX Runtime CUDA provider: not available (providers {onnxruntime.get_available_providers()}; "
                "it comes with the onnxruntime-gpu package)")
    session = onnxruntime.InferenceSession(str(model.onnx), providers=["CUDAExecutionProvider"])
    name = session.get_inputs()[0].name
    shape = next(iter(case.arrays.values())).shape[1:]
    x = pad_or_crop(build_input({c: torch.from_numpy(case.arrays[c]) for c in INPUTS}, model.card.contrasts,
                                TARGET, next(iter(case.arrays.values())).shape), model.card.in_plane_size).numpy()
    batch = 32
    run = [lambda i=i: session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    out = [r() for r in run]  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = [r() for r in run]
        best = min(best, time.perf_counter() - start)
    output = undo_pad_or_crop(torch.from_numpy(np.concatenate(out)), shape).numpy()
    return (f"ONNX Runtime {onnxruntime.__version__} CUDA provider, fp32, batches of {batch}: inference "
            f"{best * 1000:.1f} ms for {len(x)} slices ({len(x) / best:.0f} slices/s); output range "
            f"{output.min():.3f}..{output.max():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cuda | cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--model", help="a model file (default: the bundled model)")
    parser.add_argument("--precisions", default="auto",
                        help="comma-separated: auto, fp32, bf16, fp16 (each timed, each checked against fp32)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = load_model(args.model) if args.model else default_model()
    with tempfile.TemporaryDirectory(prefix="bench-volume-") as work:
        case = write_brats_sized_case(sample_case_dir(), Path(work), INPUTS + [TARGET])
        images = pipeline_module.read_case(case, INPUTS + [TARGET])
    truth_image = images.pop(TARGET)
    print(f"{describe_device(device)}, torch {torch.__version__}; model {model.card.name}; "
          f"case {truth_image.GetSize()} ({len(INPUTS)} inputs -> {TARGET}), read once")
    exact = pipeline_module.impute(images, model, targets=[TARGET], device=device, precision="fp32")
    truth = exact.case.normalize_like_inputs(truth_image)
    rate = {}
    for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
        times, result = timed_imputations(images, model, device, precision, args.repeats)
        slices = result.case.mask.shape[0]
        print(f"\nprecision {precision}: warm, in memory, best of {args.repeats} (median):")
        for stage, values in times.items():
            best, median = min(values[1:]), float(np.median(values[1:]))
            print(f"  {stage:24s} {best * 1000:8.1f} ms ({median * 1000:.1f})")
        rate[precision] = slices / min(times["infer"][1:])
        print(f"  inference: {rate[precision]:.0f} slices/s")
        if device.type == "cuda":
            print(f"  peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
        print(quality_line(precision, result.arrays[TARGET], exact.arrays[TARGET], truth, exact.case.mask))
    generator = eager_from_model(model.module, len(model.card.contrasts), model.card.architecture["base_channels"],
                                 model.card.architecture["levels"])
    naive = naive_slices_per_second(generator, {c: exact.case.arrays[c] for c in INPUTS}, model.card.contrasts,
                                    device, model.card.in_plane_size)
    print(f"\nnaive eager fp32, slice by slice: {naive:.0f} slices/s; "
          + ", ".join(f"{p} {r / naive:.2f}x" for p, r in rate.items()))
    if device.type == "cuda":
        print(onnxruntime_cuda_line(model, exact.case, args.repeats))
    print(f"peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
