"""How much of what a synthetic contrast misses is smooth: the real image's own slow intensity changes.

For each patient, the residual real − synthetic inside the head M (EVALUATION.md v2 units) is split into its
smooth part (a Gaussian of ``--sigma`` px, normalized inside M, slice by slice) and the rest. Printed per patient:
R² = r(synthetic, real)², ρ = r(real, closest input), the smooth part's share of the residual's variance, the
slice means' share, I, and I and R² once the smooth part is put back (synthetic + smooth residual); then the
share of M where the real image has no data (not acquired, metrics.not_acquired), and I and NMSE over M and over
the part of M where it was acquired. A large smooth
share that stays on the patients the model was trained on is intensity non-uniformity of the real scans, which no
model of the inputs can predict; it lowers R² and so the contrast identity (see identity_counterfactual.py's bound).

``--n4`` adds SimpleITK's N4 bias-field correction twice. The inputs corrected before imputing (I against the
inputs as given, and R²): is it the inputs' own non-uniformity, copied into the synthetic image, that makes it
resemble them? And the real image corrected before scoring (R² and I against it): how much of the residual is the
real scan's own non-uniformity?

``--montage PNG`` draws the patient whose real image has the most voxels without data (metrics.not_acquired):
its first two, middle and last two slices of the input, the real and the synthetic image.

Usage:
    python -m research.identity_residual --data DATA/lgg --threads 2 \
        [--subset train --limit 12] [--n4] [--montage out.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from CollaGANImputeLib.case_files import read_case
from CollaGANImputeLib.evaluate import score_imputation
from CollaGANImputeLib.fidelity import contrast_identity, pearson
from CollaGANImputeLib.metrics import nmse, not_acquired
from scipy import ndimage

from . import add_study_arguments, study


def smooth_inside(values: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Per slice, the Gaussian average of ``values`` over the voxels of ``mask`` only (normalized convolution)."""
    out = np.zeros(values.shape, np.float64)
    for z in range(len(values)):
        weight = ndimage.gaussian_filter(mask[z].astype(np.float64), sigma)
        total = ndimage.gaussian_filter(np.where(mask[z], values[z], 0.0), sigma)
        out[z] = np.where(weight > 1e-3, total / np.maximum(weight, 1e-3), 0.0)
    return out


def residual_shares(pred: np.ndarray, real: np.ndarray, mask: np.ndarray, sigma: float) -> tuple[float, float,
                                                                                                 np.ndarray]:
    """(smooth share, slice-mean share) of the variance of real − pred inside ``mask``, and the smooth part."""
    residual = np.where(mask, real.astype(np.float64) - pred, 0.0)
    centre = residual[mask].mean()
    total = ((residual[mask] - centre) ** 2).sum()
    smooth = smooth_inside(residual, mask, sigma)
    slice_means = np.zeros_like(residual)
    for z in range(len(residual)):
        if mask[z].any():
            slice_means[z][mask[z]] = residual[z][mask[z]].mean()
    smooth_share = ((smooth[mask] - centre) ** 2).sum() / total
    slice_share = ((slice_means[mask] - centre) ** 2).sum() / total
    return float(smooth_share), float(slice_share), smooth


def n4_corrected(image: sitk.Image) -> sitk.Image:
    """``image`` divided by its N4 bias field (fitted at a quarter of the in-plane size inside an Otsu mask)."""
    values = sitk.Cast(image, sitk.sitkFloat32)
    head = sitk.OtsuThreshold(values, 0, 1, 200)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([50] * 3)
    corrector.Execute(sitk.Shrink(values, [4, 4, 1]), sitk.Shrink(head, [4, 4, 1]))
    return values / sitk.Exp(corrector.GetLogBiasFieldAsImage(values))


def draw_end_slices(path: Path, case: str, given: np.ndarray, real: np.ndarray, pred: np.ndarray, mask: np.ndarray,
                    names: tuple[str, str, str]) -> None:
    """Rows: an input, the real and the synthetic image; columns: the first two, middle and last two slices with
    head, each titled with its mean inside the head (p99 units)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slices = [z for z in range(len(mask)) if mask[z].any()]
    picks = slices[:2] + [slices[len(slices) // 2]] + slices[-2:]
    fig, axes = plt.subplots(3, len(picks), figsize=(2.6 * len(picks), 8.2))
    for row, (volume, name) in enumerate(zip((given, real, pred), names)):
        for column, z in enumerate(picks):
            axis = axes[row, column]
            axis.imshow(volume[z], cmap="gray", vmin=0, vmax=1.2)
            axis.set_title(f"{name}, slice {z + 1}/{len(mask)}: mean {volume[z][mask[z]].mean():.2f}", fontsize=7)
            axis.axis("off")
    fig.suptitle(f"{case}: where the real image was not acquired (black), the scores compare the synthetic one "
                 "with zeros", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_study_arguments(parser)
    parser.add_argument("--sigma", type=float, default=8.0, help="the smooth part's Gaussian, in pixels")
    parser.add_argument("--n4", action="store_true", help="also with the inputs, then the real image, N4-corrected")
    parser.add_argument("--montage", type=Path, help="draw the patient with the most voxels without data here")
    args = parser.parse_args()
    run = study(args)
    model, inputs = run.model, run.inputs
    header = ("R² | ρ | smooth share | slice-mean share | I | I smooth put back | R² smooth put back | no data | "
              "I acquired part | NMSE | NMSE acquired part")
    print(f"{args.target} from {'+'.join(inputs)}, smooth = Gaussian {args.sigma:g} px; columns: {header}"
          + (" | I from N4 inputs | R² from N4 inputs | R² to N4 real | I to N4 real" if args.n4 else ""))
    table, worst = [], None
    for folder in run.folders:
        case = folder.name
        images = read_case(folder, model.card.contrasts)
        scored = score_imputation(model, images, args.target, inputs, device="cpu")
        mask, pred, real = scored.mask, scored.pred.astype(np.float64), scored.real.astype(np.float64)
        given = [scored.result.case.arrays[c] for c in inputs]
        smooth_share, slice_share, smooth = residual_shares(pred, real, mask, args.sigma)
        restored = pred + smooth
        closeness = [pearson(real, x, mask) for x in given]
        closest = int(np.argmax(closeness))
        row = [pearson(pred, real, mask) ** 2, closeness[closest], smooth_share,
               slice_share, contrast_identity(pred, real, given, mask), contrast_identity(restored, real, given, mask),
               pearson(restored, real, mask) ** 2]
        unacquired = not_acquired(real)  # what metrics.no_data_share counts, computed once for all three uses
        missing = float(unacquired[mask].mean())
        acquired = mask & ~unacquired
        row += [missing, contrast_identity(pred, real, given, acquired), nmse(pred, real, mask),
                nmse(pred, real, acquired)]
        if args.n4:
            corrected = {c: n4_corrected(images[c]) if c in inputs else images[c] for c in images}
            other = score_imputation(model, corrected, args.target, inputs, device="cpu")
            both = mask & other.mask
            real_n4 = scored.result.case.normalize_like_inputs(n4_corrected(images[args.target]))
            row += [contrast_identity(other.pred, real, given, both), pearson(other.pred, real, both) ** 2,
                    pearson(pred, real_n4, mask) ** 2, contrast_identity(pred, real_n4, given, mask)]
        table.append(row)
        print(f"{case}  " + "  ".join(f"{v:+.3f}" for v in row), flush=True)
        if args.montage and (worst is None or missing > worst[0]):
            worst = (missing, case, given[closest], real, pred, mask,
                     (inputs[closest], f"real {args.target}", f"synthetic {args.target}"))
    values = np.array(table)
    print("mean          " + "  ".join(f"{v:+.3f}" for v in values.mean(0)))
    if worst is not None:
        draw_end_slices(args.montage, *worst[1:])
    counts = (f"cases I > 0: as given {(values[:, 4] > 0).sum()} | smooth put back {(values[:, 5] > 0).sum()} | "
              f"acquired part {(values[:, 8] > 0).sum()}; cases with no data > 1 %: {(values[:, 7] > 0.01).sum()}")
    print(counts + (f" | from N4 inputs {(values[:, 12] > 0).sum()} | to N4 real {(values[:, 15] > 0).sum()}"
                    if args.n4 else ""))


if __name__ == "__main__":
    main()
