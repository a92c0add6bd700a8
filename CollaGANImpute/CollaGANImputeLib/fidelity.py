"""Fidelity scores of docs/EVALUATION.md: does the synthetic image have the target's contrast, and does it keep
the lesion? Tissue-contrast identity ``I_T`` (v3), voxel identity ``I`` (a diagnostic) and the lesion's kept share
``K``. :func:`.metrics.score_volume` scores them with the rest.

Example:
    >>> tissue_identity(t1_copy, flair, [t1, t1c], mask_t) <= 0      # a copy of an input   # doctest: +SKIP
    True
    >>> kept_share(lesion_contrast(pred, mask, lesion), lesion_contrast(real, mask, lesion))  # doctest: +SKIP
    0.74
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

#: v3's tissue cells cut each input at its octiles.
TISSUE_BINS = 8
#: K is computed only where the real lesion differs from the tissue around it by more than this (|C_real − 1|).
MIN_LESION_CONTRAST = 0.05


def pearson(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of two volumes over the voxels of ``mask`` (NaN when either is constant there)."""
    x, y = a[mask].astype(np.float64), b[mask].astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    return float(np.dot(x, y) / denominator) if denominator > 0 else float("nan")


def contrast_identity(pred: np.ndarray, gt: np.ndarray, inputs: Sequence[np.ndarray], mask: np.ndarray) -> float:
    """``I = r(pred, gt) − max_i r(pred, input_i)`` over M: > 0 when the prediction resembles the real target
    more than it resembles any input; < 0 when it is closer to a copy of an input.

    Example:
        >>> contrast_identity(t1_copy, flair, [t1, t1c], mask) < 0   # doctest: +SKIP
        True
    """
    if not len(inputs):
        return float("nan")
    return pearson(pred, gt, mask) - max(pearson(pred, x, mask) for x in inputs)


def tissue_cells(inputs: Sequence[np.ndarray], region: np.ndarray, bins: int = TISSUE_BINS) -> np.ndarray:
    """The tissue cell of each voxel of ``region``: its tuple of octile bins of every input (EVALUATION.md v3),
    as one integer per voxel (in the order of ``region``'s voxels).

    A value on an octile goes to the bin above it. It matters little: 8-bit inputs put 7-17 % of the voxels on an
    octile, yet bins closed on the right (as ``pandas.qcut``) or cut by rank changed the bundled model's I_T by at
    most 0.006 per patient and 0.0011 in the per-target mean over the 12 LGG validation patients.

    Example:
        >>> t1 = np.arange(16.0).reshape(1, 4, 4)
        >>> np.unique(tissue_cells([t1], np.ones_like(t1, bool))).size   # 8 octile bins of one input
        8
    """
    cells = np.zeros(int(region.sum()), dtype=np.int64)
    quantiles = np.arange(1, bins) / bins
    for image in inputs:
        values = image[region].astype(np.float64)
        cells = cells * bins + np.digitize(values, np.quantile(values, quantiles))
    return cells


def tissue_profile(values: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """``P(a)``: each value replaced by the mean of ``values`` over its tissue cell (only non-empty cells are read).

    Example:
        >>> tissue_profile(np.array([1.0, 3.0, 10.0]), np.array([0, 0, 5]))
        array([ 2.,  2., 10.])
    """
    sums = np.bincount(cells, weights=values.astype(np.float64))
    counts = np.bincount(cells, minlength=sums.size)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty cells: 0 / 0, never indexed
        return (sums / counts)[cells]


def tissue_identity(pred: np.ndarray, gt: np.ndarray, inputs: Sequence[np.ndarray], region: np.ndarray,
                    cells: Optional[np.ndarray] = None) -> float:
    """``I_T = r(P pred, P gt) − max_i r(P pred, P input_i)`` over ``region`` (EVALUATION.md v3), with ``P`` the
    mean over cells of input octiles (:func:`tissue_profile`). The conditional mean of the target given the
    inputs has ``P pred = P gt`` (``I_T > 0``) however much detail it misses; a copy of an input has ``I_T ≤ 0``.
    ``cells``: ``tissue_cells(inputs, region)`` where the caller scores many predictions of one target (the cells
    depend on the inputs and region alone, and binning them is most of the work).

    Example:
        >>> tissue_identity(t1_copy, flair, [t1, t1c], mask_t) <= 0   # doctest: +SKIP
        True
    """
    region = region.astype(bool)
    if not len(inputs) or not region.any():
        return float("nan")
    if cells is None:
        cells = tissue_cells(inputs, region)
    counts = np.bincount(cells).astype(np.float64)
    filled = counts > 0
    weights = counts[filled]

    def cell_means(image: np.ndarray) -> np.ndarray:
        return np.bincount(cells, weights=image[region].astype(np.float64), minlength=counts.size)[filled] / weights

    # P(a) is constant on each cell: the voxel-wise Pearson correlation of two profiles is the cell-count weighted
    # correlation of their cell means (one value per cell instead of one per voxel).
    own = cell_means(pred)
    return _weighted_pearson(own, cell_means(gt), weights) - max(
        _weighted_pearson(own, cell_means(x), weights) for x in inputs)


def _weighted_pearson(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> float:
    x = x - np.average(x, weights=weights)
    y = y - np.average(y, weights=weights)
    denominator = math.sqrt(float(np.sum(weights * x * x)) * float(np.sum(weights * y * y)))
    return float(np.sum(weights * x * y) / denominator) if denominator > 0 else float("nan")


def lesion_contrast(image: np.ndarray, mask: np.ndarray, lesion: np.ndarray) -> float:
    """``C = mean(lesion) / mean(M minus lesion)`` (NaN where either region is empty or the tissue mean is 0)."""
    inside, outside = mask & lesion, mask & ~lesion
    if not inside.any() or not outside.any():
        return float("nan")
    tissue = float(image[outside].astype(np.float64).mean())
    return float(image[inside].astype(np.float64).mean()) / tissue if tissue != 0 else float("nan")


def kept_share(c_pred: float, c_real: float) -> float:
    """``K = (C_pred − 1) / (C_real − 1)``: 1 as conspicuous as the real lesion, 0 vanished, < 0 inverted;
    NaN where the real lesion has no contrast to keep (``|C_real − 1| <= 0.05``)."""
    if not (math.isfinite(c_pred) and math.isfinite(c_real)) or abs(c_real - 1) <= MIN_LESION_CONTRAST:
        return float("nan")
    return (c_pred - 1) / (c_real - 1)
