"""The Slicer module's Compare section without Slicer: score a synthetic volume against the acquired one with
the evaluation protocol (the core's ``score_volume``), the signed error map, per-slice SSIM, table rows, CSV.

Example:
    >>> comparison = compare_to_reference(synthetic, real_t1c, {"t1n": t1n, "t2f": t2f}, lesion=seg)  # doctest: +SKIP
    >>> score_table(comparison.scores)[0]                                                   # doctest: +SKIP
    ('NMSE', '0.0412', 'lower is better')
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_path
from ..case import PreparedCase, prepare_case
from ..errors import InputError
from ..geometry import align_to_reference, to_canonical_array
from ..labels import METRIC_LABELS
from ..metrics import DEFAULT_PROTOCOL, error_map, per_slice_ssim, score_volume, scored_target, ssim_map


@dataclass
class Comparison:
    """Scores of a synthetic volume against the acquired one, as the evaluation protocol defines them."""

    scores: dict[str, float]
    error_image: sitk.Image
    slice_ssim: np.ndarray
    error_limit: float
    #: The case the synthetic volume was scored on (its inputs in p99 units, mask and grid).
    case: Optional[PreparedCase] = None
    #: Canonical arrays on the case grid: the synthetic volume, the acquired one in p99 units inside ``region``
    #: (M_t, where the scores are taken) and the lesion (None without one), for a picture of the comparison.
    synthetic: Optional[np.ndarray] = None
    real: Optional[np.ndarray] = None
    region: Optional[np.ndarray] = None
    lesion: Optional[np.ndarray] = None


def compare_to_reference(
    synthetic: sitk.Image,
    reference: sitk.Image,
    inputs: Mapping[str, sitk.Image],
    lesion: Optional[sitk.Image] = None,
    case: Optional[PreparedCase] = None,
    protocol: str = DEFAULT_PROTOCOL,
) -> Comparison:
    """Score ``synthetic`` (p99 units, as imputed) against the acquired ``reference`` volume with EVALUATION.md's
    ``protocol`` (v3; "v2" for earlier tables).

    The head mask and the reference's p99 scaling come from the ``inputs`` the synthetic was imputed from
    (or from ``case`` when the imputation result is at hand), never from the target: EVALUATION.md. The
    lesion label map, if any, is resampled nearest-neighbour onto the case grid. Returns NMSE/PSNR/SSIM (+
    lesion scores, contrast identity, lesion conspicuity: whatever :func:`score_volume` returns), the signed
    error map as an image on the case grid, and the per-slice SSIM.
    """
    if case is None:
        if not inputs:
            raise InputError("Comparing needs the input volumes the synthetic one was imputed from (for the mask).")
        case = prepare_case(inputs)
    grid = case.reference
    pred = to_canonical_array(align_to_reference({"ref": grid, "pred": synthetic}, reference="ref")["pred"])
    gt = case.normalize_like_inputs(reference)
    region = None
    if lesion is not None:
        on_grid = sitk.Resample(lesion, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, lesion.GetPixelID())
        region = to_canonical_array(on_grid) > 0
    # The inputs as the model saw them (p99 units on the case grid): contrast identity needs them.
    scores = score_volume(pred, gt, case.mask, lesion=region, inputs=list(case.arrays.values()), protocol=protocol)
    gt, scored = scored_target(gt, case.mask, protocol)  # the map and per-slice SSIM where the scores are taken
    errors = error_map(pred, gt, scored)
    error_image = case.to_image(errors)
    error_image.SetMetaData("collagan_error_map", "synthetic minus acquired, p99 units, 0 outside the head mask")
    inside = np.abs(errors[scored])
    limit = float(np.percentile(inside, 99)) if inside.size else 1.0
    return Comparison(scores=scores, error_image=error_image, slice_ssim=per_slice_ssim(
        ssim_map(pred, gt, scored), scored), error_limit=max(limit, 1e-3), case=case, synthetic=pred, real=gt,
        region=scored, lesion=region)


#: Labels of the results table: key in the core's score dict -> (label, unit / meaning), in display order (the
#: core's one table of labels). Keys :func:`score_volume` returns beyond these are shown too, under their own name.
SCORE_LABELS = {key: (metric.label, metric.note) for key, metric in METRIC_LABELS.items()}


def score_keys(scores: Mapping[str, float]) -> list[str]:
    """The keys of ``scores`` in display order: the labelled ones first, any others after, as given."""
    return [k for k in SCORE_LABELS if k in scores] + [k for k in scores if k not in SCORE_LABELS]


def format_score(key: str, value: Optional[float]) -> str:
    """A score as the table shows it: 4 decimals, counts as integers, NaN (not computable) as 'n/a'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if key == "lesion_voxels":
        return str(int(value))
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4f}"


def score_table(scores: Mapping[str, float]) -> list[tuple[str, str, str]]:
    """(metric, value, note) rows for a table node, one per score; NaN (e.g. no lesion) reads 'n/a'."""
    rows = []
    for key in score_keys(scores):
        label, note = SCORE_LABELS.get(key, (key, ""))
        rows.append((label, format_score(key, scores[key]), note))
    return rows


def write_scores_csv(path: Union[str, os.PathLike], scores: Mapping[str, float],
                     context: Optional[Mapping[str, str]] = None) -> Path:
    """Write the scores (and who/what produced them) as a two-column CSV, atomically."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise InputError(f"{path.name}: give a file name ending in .csv.")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "value"])
        for key, value in (context or {}).items():
            writer.writerow([key, value])
        for key in score_keys(scores):
            writer.writerow([key, repr(float(scores[key]))])
    return path


def slice_ssim_table(slice_ssim: Iterable[float]) -> np.ndarray:
    """(slice index, SSIM) rows for a plot, slices without head voxels left out."""
    values = np.asarray(list(slice_ssim), dtype=np.float64)
    index = np.arange(values.size, dtype=np.float64)
    keep = np.isfinite(values)
    return np.stack([index[keep], values[keep]], axis=1)
