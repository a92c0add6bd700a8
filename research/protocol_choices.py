"""How far the choices that EVALUATION.md leaves open move the scores of the written synthetic images.

Each target of each patient is imputed from the other contrasts once; its written output (0 outside the product's
head mask M) is then scored with M made three ways: the product's rule (SimpleITK's Otsu threshold, holes filled
in 3-D, largest component, holes filled in each axial slice), scikit-image's Otsu threshold instead of ITK's (a
bin's centre, not its upper edge), and holes filled in 3-D only. I_T is also computed with the octile bins closed
on the right (as ``pandas.qcut``) and cut by rank instead of the product's ``np.digitize``. Printed per target: the
mean NMSE, SSIM and I_T of each variant with M's size against the product's, and the largest per-patient change
of I_T. The figures of docs/RESULTS.md, "Scoring with your own implementation of the protocol".

Usage:
    python -m research.protocol_choices --data DATA/lgg --threads 2 [--limit 3]
"""

from __future__ import annotations

import argparse
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk
from CollaGANImputeLib.case_files import read_case
from CollaGANImputeLib.evaluate import score_imputation
from CollaGANImputeLib.fidelity import TISSUE_BINS, tissue_identity
from CollaGANImputeLib.io import find_lesion_mask, read_lesion_mask
from CollaGANImputeLib.metrics import score_volume, scored_target
from CollaGANImputeLib.normalization import fill_holes_3d, fill_holes_in_plane, normalize, p99
from scipy.stats import rankdata
from skimage.filters import threshold_otsu

from . import add_study_arguments, study

OCTILES = np.arange(1, TISSUE_BINS) / TISSUE_BINS
#: Other ways to cut an input's values inside M_t into octile bins (the product: ``np.digitize``, left-closed).
BINNINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "right-closed": lambda v: np.digitize(v, np.quantile(v, OCTILES), right=True),
    "by rank": lambda v: np.minimum((rankdata(v, method="ordinal") - 1) * TISSUE_BINS // v.size, TISSUE_BINS - 1),
}


def mask_variant(inputs: list[np.ndarray], otsu: str, in_plane: bool) -> np.ndarray:
    """M by the product's rule except for the Otsu threshold (``"itk"`` or ``"skimage"``) and, without
    ``in_plane``, the per-slice hole filling."""
    mean = np.zeros(inputs[0].shape, np.float32)
    for array in inputs:
        mean += array / np.float32(p99(array))
    mean /= len(inputs)
    if otsu == "skimage":
        above = mean > threshold_otsu(mean, nbins=256)
    else:
        above = sitk.GetArrayFromImage(sitk.OtsuThreshold(sitk.GetImageFromArray(mean), 0, 1, 256)) != 0
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(
        fill_holes_3d(above).view(np.uint8))), sortByObjectSize=True)
    largest = sitk.GetArrayFromImage(labels) == 1
    return fill_holes_in_plane(largest) if in_plane else largest


def binned_identity(pred: np.ndarray, gt: np.ndarray, inputs: list[np.ndarray], region: np.ndarray,
                    binning: Callable[[np.ndarray], np.ndarray]) -> float:
    """I_T with the cells cut by ``binning``."""
    cells = np.zeros(int(region.sum()), np.int64)
    for image in inputs:
        cells = cells * TISSUE_BINS + binning(image[region].astype(np.float64))
    return tissue_identity(pred, gt, inputs, region, cells=cells)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_arguments(parser)
    args = parser.parse_args(argv)
    run = study(args)
    contrasts = run.model.card.contrasts
    rows: list[dict] = []
    for folder in run.folders:
        images = read_case(folder, contrasts)
        lesion_path = find_lesion_mask(folder)
        lesion_image = read_lesion_mask(lesion_path) if lesion_path else None
        for target in contrasts:
            inputs = [c for c in contrasts if c != target]
            scored = score_imputation(run.model, images, target, inputs, lesion_image, device="cpu")
            given = [scored.result.case.arrays[c] for c in inputs]
            row = {"target": target}
            for name, mask in (("product", scored.mask),
                               ("skimage Otsu", mask_variant(given, "skimage", in_plane=True)),
                               ("3-D fill only", mask_variant(given, "itk", in_plane=False))):
                scores = score_volume(scored.pred, normalize(scored.real, mask), mask, scored.lesion,
                                      [normalize(x, mask) for x in given])
                row[name] = (int(mask.sum()), scores["nmse"], scores["ssim"], scores["identity_t"])
            real, region = scored_target(scored.real, scored.mask)  # inside M_t, as the product scores I_T
            for name, binning in BINNINGS.items():
                row[name] = binned_identity(scored.pred, real, given, region, binning)
            rows.append(row)
            print(f"{folder.name} {target} done", flush=True)
    print("target  variant         M voxels  NMSE     SSIM     I_T      largest |ΔI_T|")
    for target in contrasts:
        mine = [r for r in rows if r["target"] == target]
        for name in ("product", "skimage Otsu", "3-D fill only"):
            size = np.mean([r[name][0] / r["product"][0] for r in mine])
            means = [np.nanmean([r[name][k] for r in mine]) for k in (1, 2, 3)]
            change = max(abs(r[name][3] - r["product"][3]) for r in mine)
            print(f"{target:7s} {name:15s} x{size:.4f}  {means[0]:.4f}  {means[1]:.4f}  {means[2]:+.4f}  {change:.4f}")
        for name in BINNINGS:
            change = max(abs(r[name] - r["product"][3]) for r in mine)
            mean = np.nanmean([r[name] for r in mine])
            print(f"{target:7s} {'I_T ' + name:15s} {'':9s} {'':7s}  {'':7s}  {mean:+.4f}  {change:.4f}")


if __name__ == "__main__":
    main()
