"""Scores of an uncertainty map against the real error (docs/EVALUATION.md): Spearman's rho and the AUROC of U
ranking the wrong voxels first, over the head and inside the lesion, and the error per uncertainty decile.

Example:
    >>> s = uncertainty_scores(u, pred, gt, mask, lesion=seg > 0)   # doctest: +SKIP
    >>> s["rho_u"], s["auroc_u"]                                    # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .metrics import DEFAULT_PROTOCOL, scored_target

#: |pred − gt| above this (p99 units) is a "wrong" voxel for AUROC_U (EVALUATION.md).
UNCERTAINTY_ERROR_THRESHOLD = 0.2


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (what Spearman's rho and the Mann-Whitney AUROC need)."""
    from scipy.stats import rankdata  # scipy comes with scikit-image

    return rankdata(values.astype(np.float64), method="average")


def spearman(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """Spearman rank correlation of two volumes over the voxels of ``region`` (NaN when either is constant).

    Example:
        >>> spearman(uncertainty, np.abs(pred - gt), mask)   # doctest: +SKIP
    """
    region = region.astype(bool)
    if region.sum() < 2:
        return float("nan")
    x, y = _ranks(a[region]), _ranks(b[region])
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    return float(np.dot(x, y) / denominator) if denominator > 0 else float("nan")


def auroc(scores: np.ndarray, positive: np.ndarray, region: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` ranking the ``positive`` voxels of ``region`` above the others
    (ties count one half; Mann-Whitney U). NaN when ``region`` has no positive or no negative voxel.

    Example:
        >>> auroc(uncertainty, np.abs(pred - gt) > 0.2, mask)   # 0.5: chance, 1: perfect   # doctest: +SKIP
    """
    region = region.astype(bool)
    labels = positive.astype(bool)[region]
    n_pos = int(labels.sum())
    n_neg = int(labels.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _ranks(scores[region])
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def uncertainty_scores(uncertainty: np.ndarray, pred: np.ndarray, gt: np.ndarray, mask: np.ndarray,
                       lesion: Optional[np.ndarray] = None, threshold: float = UNCERTAINTY_ERROR_THRESHOLD,
                       lesion_min_voxels: int = 50, protocol: str = DEFAULT_PROTOCOL) -> dict[str, float]:
    """EVALUATION.md uncertainty scores of one case and target: ``rho_u`` (Spearman between U and |pred − gt|
    over ``M_t``, or M with ``protocol="v2"``), ``auroc_u`` (U ranking its voxels with |pred − gt| >
    ``threshold`` above the others), both again inside the lesion (``lesion_rho_u``, ``lesion_auroc_u``; NaN
    below ``lesion_min_voxels``), and ``error_rate`` (share of the region above the threshold).

    Example:
        >>> s = uncertainty_scores(u, pred, gt, mask, lesion=seg > 0)   # doctest: +SKIP
        >>> s["rho_u"], s["auroc_u"], s["lesion_rho_u"], s["lesion_auroc_u"]   # doctest: +SKIP
    """
    if not (uncertainty.shape == pred.shape == gt.shape == mask.shape):
        raise ValueError(f"Shapes differ: uncertainty {uncertainty.shape}, pred {pred.shape}, gt {gt.shape}, "
                         f"mask {mask.shape}.")
    gt, mask = scored_target(gt, mask, protocol)
    error = np.abs(pred.astype(np.float64) - gt.astype(np.float64))
    wrong = error > threshold
    nan = float("nan")
    scores = {"rho_u": spearman(uncertainty, error, mask), "auroc_u": auroc(uncertainty, wrong, mask),
              "error_rate": float(wrong[mask].mean()) if mask.any() else nan,
              "lesion_rho_u": nan, "lesion_auroc_u": nan}
    if lesion is not None:
        region = mask & (lesion > 0)
        if region.sum() >= lesion_min_voxels:
            scores["lesion_rho_u"] = spearman(uncertainty, error, region)
            scores["lesion_auroc_u"] = auroc(uncertainty, wrong, region)
    return scores


def error_by_uncertainty_quantile(uncertainty: np.ndarray, pred: np.ndarray, gt: np.ndarray, mask: np.ndarray,
                                  bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Mean |pred − gt| in each of ``bins`` equal-count bins of U over M (deciles by default), lowest U first,
    and each bin's mean U: a calibration-style curve (a useful map rises monotonically).

    Example:
        >>> mean_error, mean_u = error_by_uncertainty_quantile(u, pred, gt, mask)   # doctest: +SKIP
    """
    mask = mask.astype(bool)
    u = uncertainty[mask].astype(np.float64)
    error = np.abs(pred[mask].astype(np.float64) - gt[mask].astype(np.float64))
    order = np.argsort(u, kind="stable")
    parts = np.array_split(order, bins)
    return (np.array([error[p].mean() if p.size else np.nan for p in parts]),
            np.array([u[p].mean() if p.size else np.nan for p in parts]))
