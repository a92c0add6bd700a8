"""What a misaligned input does to the scores, with and without rigid co-registration (``--register``).

Usage:
    python benchmarks/bench_registration.py [--slices 32] [--threads 2] [--montage docs/images/registration_x.png]

For the bundled sample case and the two OpenMS patients (``../shared/data/openms``), with the bundled model in
fp32 on the CPU: the target (default t2f) is imputed from the other two contrasts, one input (default t1c, not the
reference t1n) moved as a patient moves between scans (3 mm towards anterior, or 5 degrees of nodding about the
left-right axis through the volume's centre) by its header only, as a scanner records it. It is imputed with the
inputs placed by their headers, or co-registered (``impute(..., register=True)``: aligned to t1n by mutual
information), and scored as ``evaluate`` scores (EVALUATION.md) against the real target as acquired, placed by its
header in both arms so that only the inputs' placement differs. Prints a Markdown table: the scores, the motion
the registration found, and the seconds each run took. ``--slices`` keeps the central slices of each case (all:
0) so that the table takes minutes on two cores.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "CollaGANImpute"))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402
from CollaGANImputeLib import impute  # noqa: E402
from CollaGANImputeLib.io import find_lesion_mask, read_lesion_mask  # noqa: E402
from CollaGANImputeLib.metrics import score_volume  # noqa: E402
from CollaGANImputeLib.models import default_model, sample_case_dir  # noqa: E402
from CollaGANImputeLib.pipeline import read_case  # noqa: E402
from CollaGANImputeLib.registration import moved  # noqa: E402

OPENMS = REPO.parent / "shared" / "data" / "openms"
SHIFT_MM = 3.0
ROTATION_DEG = 5.0


def central_slab(image: sitk.Image, slices: int) -> sitk.Image:
    """The central ``slices`` axial slices (same physical place; all of them when the volume has fewer)."""
    size = list(image.GetSize())
    if not slices or size[2] <= slices:
        return image
    start = (size[2] - slices) // 2
    return sitk.RegionOfInterest(image, size[:2] + [slices], [0, 0, start])


def motions(image: sitk.Image) -> dict[str, Optional[sitk.Euler3DTransform]]:
    """No motion, 3 mm towards anterior (-y in LPS), 5 degrees about the left-right axis through the centre."""
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    return {"none": None,
            f"shift {SHIFT_MM:g} mm": sitk.Euler3DTransform(centre, 0.0, 0.0, 0.0, (0.0, -SHIFT_MM, 0.0)),
            f"rotation {ROTATION_DEG:g} deg": sitk.Euler3DTransform(centre, math.radians(ROTATION_DEG), 0.0, 0.0,
                                                                    (0.0, 0.0, 0.0))}


def cases() -> list[Path]:
    return [sample_case_dir()] + sorted(p for p in OPENMS.glob("OpenMS-*") if p.is_dir())


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="t2f", help="contrast imputed (default: t2f)")
    parser.add_argument("--move", default="t1c", help="input that moves (default: t1c; t1n is the reference)")
    parser.add_argument("--slices", type=int, default=32, help="central slices kept per case (0: all; default 32)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and ITK (default 2)")
    parser.add_argument("--montage", help="also write a PNG of the moved input before and after alignment")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    model = default_model()
    inputs = [c for c in model.card.contrasts if c != args.target]
    if args.move not in inputs or args.move == inputs[0]:
        parser.error(f"--move must be one of {inputs[1:]} (the first input, {inputs[0]}, is the reference)")
    print(f"Model {model.card.name}, fp32 on the CPU ({args.threads} threads); {args.target} imputed from "
          f"{'+'.join(inputs)}, {args.move} moved; central {args.slices or 'all'} slices.\n")
    print("| case | motion of " + args.move + " | inputs placed by | NMSE | SSIM | PSNR | lesion NMSE | "
          "registration found | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    pictures = []
    for folder in cases():
        images = {c: central_slab(im, args.slices) for c, im in read_case(folder, model.card.contrasts).items()}
        lesion_path = find_lesion_mask(folder)
        lesion = central_slab(read_lesion_mask(lesion_path), args.slices) if lesion_path else None
        for motion_name, motion in motions(images[args.move]).items():
            given = dict(images)
            if motion is not None:
                given[args.move] = moved(images[args.move], motion)
            for register in (False, True):
                start = time.perf_counter()
                result = impute({c: given[c] for c in inputs}, model, targets=[args.target], device="cpu",
                                precision="fp32", register=register)
                seconds = time.perf_counter() - start
                case = result.case  # scored as evaluate scores (score_imputation), the real target by its header
                s = score_volume(result.arrays[args.target], case.normalize_like_inputs(images[args.target]),
                                 case.mask, case.lesion_like_inputs(lesion) if lesion is not None else None,
                                 [case.arrays[c] for c in inputs])
                alignment = case.registration.get(args.move)
                found = f"{alignment.shift_mm:.2f} mm, {alignment.rotation_deg:.2f} deg" if alignment else "-"
                print(f"| {folder.name} | {motion_name} | {'registration' if register else 'headers'} | "
                      f"{s['nmse']:.4f} | {s['ssim']:.4f} | {s['psnr']:.2f} | {s['lesion_nmse']:.4f} | {found} | "
                      f"{seconds:.0f} |", flush=True)
                if motion is not None and folder == sample_case_dir():
                    pictures.append((motion_name, register, case.arrays[inputs[0]], case.arrays[args.move]))
    if args.montage:
        write_montage(Path(args.montage), pictures, inputs[0], args.move)
        print(f"\nMontage: {args.montage}")
    return 0


def write_montage(path: Path, pictures: list, reference: str, name: str) -> None:
    """Rows: the motions; columns: the moved input placed by its header, then aligned; the reference's edges
    drawn over both (red) so that misalignment shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.feature import canny

    rows = sorted({p[0] for p in pictures}, key=[p[0] for p in pictures].index)
    fig, axes = plt.subplots(len(rows), 2, figsize=(8, 4 * len(rows)), squeeze=False)
    for motion_name, register, ref, image in pictures:
        index = image.shape[0] // 2
        edges = canny(ref[index], sigma=2.0, low_threshold=0.05, high_threshold=0.15)
        axis = axes[rows.index(motion_name)][int(register)]
        axis.imshow(image[index], cmap="gray", vmin=0, vmax=1.2)
        axis.imshow(np.ma.masked_where(~edges, edges), cmap="autumn", alpha=0.9, interpolation="nearest")
        axis.set_title(f"{name}, {motion_name}: {'after alignment' if register else 'headers only'}", fontsize=9)
        axis.axis("off")
    fig.suptitle(f"{name} moved (middle axial slice) with the edges of {reference} in red", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
