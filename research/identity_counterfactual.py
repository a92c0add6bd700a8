"""Where a synthetic contrast loses its contrast identity I (EVALUATION.md v2): the lesion, the brain, or the scalp.

For each validation patient (or training patient, ``--subset train``), I of the model's output and of edits of
it that put back a part of the real image:
- "real lesion": the lesion voxels replaced by the real target's; "lesion at real C": the lesion scaled so that
  its contrast C to the rest of the head is the real one;
- "real tissue": every voxel outside the lesion replaced by the real target's;
- "real band d": only the head's outer band, the voxels within d pixels of the head's edge (scalp and skull);
  "real inner": the rest of the head (d > 12);
- "band affine/slice": the band mapped per slice by the affine map that fits the real target best (its level
  and contrast right, its structure the model's);
- "I inner only": I scored inside the inner head alone.
An edit that turns I positive shows where the resemblance to an input lies. Also: the band's share of the head's
squared error. Rows, then the mean and the count of cases with I > 0 per column.

A second table asks whether a regression could have I > 0 at all. For a prediction that is the conditional mean
of the real image given the inputs, r(pred, input) = ρ / R, with R = r(pred, real) and ρ = r(real, input): the
mean correlates with the input more than the real image does, by the share of the real image it cannot predict.
So such a prediction has I > 0 only where R² > ρ (for the input closest to the real image); the table lists R², ρ,
the measured r(pred, input) next to ρ / R, and I.

Usage:
    python -m research.identity_counterfactual --data DATA/lgg --threads 2 [--model MODEL.pt]
"""

from __future__ import annotations

import argparse

import numpy as np
from CollaGANImputeLib.case_files import read_case
from CollaGANImputeLib.evaluate import score_imputation
from CollaGANImputeLib.fidelity import contrast_identity, lesion_contrast, pearson
from CollaGANImputeLib.io import find_lesion_mask, read_lesion_mask
from scipy import ndimage

from . import add_study_arguments, study

COLUMNS = ("I", "real lesion", "lesion at real C", "real tissue", "real band 6", "real band 12", "real inner",
           "band affine/slice", "I inner only")


def edge_distance(mask: np.ndarray) -> np.ndarray:
    """Per slice, each head voxel's distance in pixels to the nearest voxel outside the head."""
    return np.stack([ndimage.distance_transform_edt(m) for m in mask])


def affine_per_slice(pred: np.ndarray, real: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``pred`` with its voxels in ``region`` mapped, slice by slice, by the least-squares affine fit to ``real``."""
    out = pred.astype(np.float64).copy()
    for z in range(len(pred)):
        where = region[z]
        if where.sum() > 50:
            design = np.stack([pred[z][where], np.ones(where.sum())], 1)
            out[z][where] = design @ np.linalg.lstsq(design, real[z][where], rcond=None)[0]
    return out


def identities(pred: np.ndarray, real: np.ndarray, given: list[np.ndarray], mask: np.ndarray,
               lesion: np.ndarray) -> list[float]:
    """I of ``pred`` and of each edit in :data:`COLUMNS`."""
    depth = edge_distance(mask)
    band6, band12 = mask & (depth <= 6), mask & (depth <= 12)
    inner = mask & ~band12
    scaled = pred.astype(np.float64).copy()
    if lesion.any():
        scaled[lesion] *= lesion_contrast(real, mask, lesion) / lesion_contrast(pred, mask, lesion)
    edits = (pred, np.where(lesion, real, pred), scaled, np.where(lesion, pred, real), np.where(band6, real, pred),
             np.where(band12, real, pred), np.where(inner, real, pred), affine_per_slice(pred, real, band12))
    return [contrast_identity(x, real, given, mask) for x in edits] + [contrast_identity(pred, real, given, inner)]


def regression_bound(pred: np.ndarray, real: np.ndarray, given: list[np.ndarray], mask: np.ndarray) -> list[float]:
    """R², ρ, measured r(pred, input) and the conditional mean's ρ / R, for the input closest to ``real``."""
    closest = max(given, key=lambda x: pearson(real, x, mask))
    fit, rho = pearson(pred, real, mask), pearson(real, closest, mask)
    return [fit**2, rho, pearson(pred, closest, mask), rho / fit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_study_arguments(parser, "the split's patients to score; train shows if I is lost in fitting or in "
                                "generalizing")
    args = parser.parse_args()
    run = study(args)
    model, inputs = run.model, run.inputs
    print(f"{args.target} from {'+'.join(inputs)}; columns: " + " | ".join(COLUMNS) + " | band share of error")
    table, bounds = [], []
    for folder in run.folders:
        case = folder.name
        images = read_case(folder, model.card.contrasts)
        lesion_path = find_lesion_mask(folder)
        lesion_image = read_lesion_mask(lesion_path) if lesion_path else None
        scored = score_imputation(model, images, args.target, inputs, lesion_image, device="cpu")
        mask, pred, real = scored.mask, scored.pred.astype(np.float64), scored.real.astype(np.float64)
        given = [scored.result.case.arrays[c] for c in inputs]
        lesion = (scored.lesion > 0) & mask if scored.lesion is not None else np.zeros_like(mask)
        row = identities(pred, real, given, mask, lesion)
        table.append(row)
        bounds.append((case, regression_bound(pred, real, given, mask), row[0]))
        error = (pred - real) ** 2
        band_share = error[mask & (edge_distance(mask) <= 12)].sum() / error[mask].sum()
        print(f"{case}  " + "  ".join(f"{v:+.3f}" for v in row) + f"  {band_share:.2f}", flush=True)
    values = np.array(table)
    print("mean          " + "  ".join(f"{v:+.3f}" for v in values.mean(0)))
    print("cases I > 0   " + "  ".join(f"{n:6d}" for n in (values > 0).sum(0)))
    print("\nI > 0 needs R² > ρ from a regression; columns: R² = r(pred, real)² | ρ = r(real, closest input) | "
          "r(pred, input) | ρ / R | I")
    for case, (fit2, rho, measured, expected), identity in bounds:
        print(f"{case}  {fit2:.3f}  {rho:.3f}  {measured:.3f}  {expected:.3f}  {identity:+.3f}")
    print(f"cases R² > ρ: {sum(b[0] > b[1] for _, b, _ in bounds)} of {len(bounds)}")


if __name__ == "__main__":
    main()
