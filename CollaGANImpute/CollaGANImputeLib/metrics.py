"""The evaluation protocol of docs/EVALUATION.md (v3), implemented once for CLI, training, Slicer and web.

Arrays are canonical volumes (S, H, W) of axial slices in p99 units; ``mask`` is the inputs-only head mask M.
v3 scores inside ``M_t`` (M less the voxels where the real target was not acquired) and judges contrast identity
on tissue profiles (``I_T``); v2's voxel identity ``I`` stays as a diagnostic. ``protocol="v2"`` reproduces v2's
numbers (M everywhere). Lesion conspicuity: kept share ``K`` of the real lesion-to-tissue contrast.

Example:
    >>> scores = score_volume(pred, gt, mask, lesion=seg > 0, inputs=[t1n, t1c])   # doctest: +SKIP
    >>> scores["nmse"], scores["ssim"], scores["identity_t"], scores["lesion_kept"]   # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from skimage.metrics import structural_similarity

from .labels import METRIC_LABELS, Metric  # noqa: F401  (the labels of these scores)
from .normalization import normalize

SSIM_SIGMA = 1.5


METRIC_NAMES = ("nmse", "psnr", "ssim", "lesion_nmse", "lesion_ssim", "identity_t", "identity", "lesion_kept",
                "lesion_contrast_real", "lesion_contrast_pred")
#: The protocols :func:`score_volume` implements (docs/EVALUATION.md); the first is the default.
PROTOCOLS = ("v3", "v2")
DEFAULT_PROTOCOL = PROTOCOLS[0]
#: v3: a target with no data in more than this share of M is not scored (EVALUATION.md, Masks).
NOT_SCORED_SHARE = 0.5
#: v3's tissue cells cut each input at its octiles.
TISSUE_BINS = 8
#: The uncertainty scores of EVALUATION.md (:func:`uncertainty_scores`, besides its ``error_rate``).
UNCERTAINTY_NAMES = ("rho_u", "auroc_u", "lesion_rho_u", "lesion_auroc_u")
#: Lesion scores need at least this many lesion voxels inside M (EVALUATION.md).
LESION_MIN_VOXELS = 50
#: The real target counts as not acquired inside a square of this many pixels of exact zeros (no_data_share).
NO_DATA_PATCH = 7
#: ``collagan-impute evaluate`` warns when the real target has no data in more than this share of M.
NO_DATA_WARN_SHARE = 0.01
#: K is computed only where the real lesion differs from the tissue around it by more than this (|C_real − 1|).
MIN_LESION_CONTRAST = 0.05


def nmse(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """Σ_M (pred − gt)² / Σ_M gt², no clipping."""
    p, g = pred[mask].astype(np.float64), gt[mask].astype(np.float64)
    denominator = float(np.sum(g * g))
    return float(np.sum((p - g) ** 2) / denominator) if denominator > 0 else float("nan")


def psnr(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """10·log10(1 / MSE_M) on images clipped to [0, 1]; infinite for identical images."""
    p = np.clip(pred[mask].astype(np.float64), 0, 1)
    g = np.clip(gt[mask].astype(np.float64), 0, 1)
    mse = float(np.mean((p - g) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim_map(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-voxel SSIM, computed per axial slice on [0, 1]-clipped images with the background set to 0."""
    p = np.where(mask, np.clip(pred, 0, 1), 0).astype(np.float64)
    g = np.where(mask, np.clip(gt, 0, 1), 0).astype(np.float64)
    out = np.ones(p.shape, dtype=np.float64)
    for index in range(p.shape[0]):
        if not mask[index].any():
            continue  # such slices carry no weight in the masked mean
        _, out[index] = structural_similarity(
            g[index], p[index], data_range=1.0, gaussian_weights=True, sigma=SSIM_SIGMA,
            use_sample_covariance=False, full=True,
        )
    return out


def masked_mean(values: np.ndarray, region: np.ndarray) -> float:
    return float(values[region].mean()) if region.any() else float("nan")


def per_slice_ssim(map_: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean SSIM over the mask of each slice (NaN where a slice has no mask voxel)."""
    return np.array([masked_mean(map_[i], mask[i]) for i in range(map_.shape[0])])


def error_map(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Signed error pred − gt in p99 units inside the mask, 0 outside."""
    return np.where(mask, pred.astype(np.float32) - gt.astype(np.float32), 0).astype(np.float32)


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


def no_data_share(gt: np.ndarray, mask: np.ndarray, patch: int = NO_DATA_PATCH) -> float:
    """The share of M where the real target has no data: voxels inside a ``patch`` x ``patch`` square (per slice)
    of exact zeros, which an MR image's noise inside the head never is. It is where the target was not acquired,
    e.g. the end slices of a FLAIR slab shorter than the T1's; every score there compares the synthetic image
    with zeros. Not a score of the model: a caveat on the real image (not in EVALUATION.md).

    Example:
        >>> gt = np.ones((2, 16, 16)); gt[0] = 0        # the first slice was not acquired
        >>> no_data_share(gt, np.ones_like(gt, bool))
        0.5
    """
    mask = mask.astype(bool)
    if not mask.any():
        return float("nan")
    return float(not_acquired(gt, patch)[mask].mean())


def not_acquired(gt: np.ndarray, patch: int = NO_DATA_PATCH) -> np.ndarray:
    """The voxels :func:`no_data_share` counts: inside a ``patch`` x ``patch`` square of exact zeros, per slice."""
    from scipy import ndimage  # scipy comes with scikit-image

    zero = (gt <= 0).astype(np.float32)
    return ndimage.uniform_filter(zero, size=(1, patch, patch), mode="constant", cval=1.0) > 0.999


def check_protocol(protocol: str) -> str:
    """``protocol`` if :func:`score_volume` implements it, else a ValueError naming the choices."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown evaluation protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}.")
    return protocol


def target_mask(gt: np.ndarray, mask: np.ndarray, protocol: str = DEFAULT_PROTOCOL) -> np.ndarray:
    """Where a target is scored: ``M_t`` (v3: M less the voxels where the real target was not acquired) or M (v2).

    Example:
        >>> gt = np.ones((2, 16, 16)); gt[0] = 0        # the first slice was not acquired
        >>> int(target_mask(gt, np.ones_like(gt, bool)).sum()), int(target_mask(gt, gt > -1, "v2").sum())
        (256, 512)
    """
    mask = mask.astype(bool)
    if check_protocol(protocol) == "v2":
        return mask
    return mask & ~not_acquired(gt)


def scored_target(gt: np.ndarray, mask: np.ndarray, protocol: str = DEFAULT_PROTOCOL,
                  absent: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """The real target as the protocol scores it, and where: v3 re-scales ``gt`` (p99 units inside M) to its own
    p99 inside ``M_t`` and returns ``M_t``; v2 returns both as given. Unchanged where nothing is missing.
    ``absent``: :func:`not_acquired` of ``gt``, when the caller has it already."""
    if absent is None or check_protocol(protocol) == "v2":
        region = target_mask(gt, mask, protocol)
    else:
        region = mask.astype(bool) & ~absent
    if region.any() and not np.array_equal(region, mask.astype(bool)):
        gt = normalize(gt, region)
    return gt, region


def score_volume(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, lesion: Optional[np.ndarray] = None,
                 inputs: Sequence[np.ndarray] = (), protocol: str = DEFAULT_PROTOCOL) -> dict[str, float]:
    """The protocol's scores of one case and target. ``gt`` is the real target in p99 units inside M.

    v3 (default): everything inside ``M_t`` (:func:`target_mask`), the real target re-scaled to its own p99
    inside ``M_t``; NMSE, PSNR, masked SSIM; lesion NMSE/SSIM and conspicuity (``lesion_contrast_real/pred``,
    ``lesion_kept``) inside ``M_t ∩ lesion`` when it holds at least 50 voxels; tissue-contrast identity
    ``identity_t`` and voxel identity ``identity`` against ``inputs`` (the input volumes in p99 units, NaN
    without them); ``real_no_data`` = 1 − |M_t| / |M|. A target with ``real_no_data`` above 50 % is not scored
    (every score NaN, ``not_scored`` 1). v2: the same inside M, the real target as given.
    """
    if pred.shape != gt.shape or gt.shape != mask.shape:
        raise ValueError(f"Shapes differ: pred {pred.shape}, gt {gt.shape}, mask {mask.shape}.")
    for x in inputs:
        if x.shape != gt.shape:
            raise ValueError(f"Shapes differ: input {x.shape}, gt {gt.shape}.")
    mask = mask.astype(bool)
    nan = float("nan")
    absent = not_acquired(gt)  # once: for real_no_data and M_t
    missing = float(absent[mask].mean()) if mask.any() else nan
    scores = {"nmse": nan, "psnr": nan, "ssim": nan, "lesion_nmse": nan, "lesion_ssim": nan, "lesion_voxels": 0.0,
              "identity_t": nan, "identity": nan, "lesion_kept": nan, "lesion_contrast_real": nan,
              "lesion_contrast_pred": nan, "real_no_data": missing, "not_scored": 0.0}
    if check_protocol(protocol) == "v3" and not missing <= NOT_SCORED_SHARE:  # NaN: no head mask at all
        scores["not_scored"] = 1.0
        return scores
    gt, mask = scored_target(gt, mask, protocol, absent)
    map_ = ssim_map(pred, gt, mask)
    scores.update(nmse=nmse(pred, gt, mask), psnr=psnr(pred, gt, mask), ssim=masked_mean(map_, mask),
                  identity_t=tissue_identity(pred, gt, inputs, mask),
                  identity=contrast_identity(pred, gt, inputs, mask))
    if lesion is not None:
        lesion = lesion > 0
        region = mask & lesion
        scores["lesion_voxels"] = float(region.sum())
        if region.sum() >= LESION_MIN_VOXELS:
            scores["lesion_nmse"] = nmse(pred, gt, region)
            scores["lesion_ssim"] = masked_mean(map_, region)
            c_real, c_pred = lesion_contrast(gt, mask, lesion), lesion_contrast(pred, mask, lesion)
            scores.update(lesion_contrast_real=c_real, lesion_contrast_pred=c_pred,
                          lesion_kept=kept_share(c_pred, c_real))
    return scores


def summarize(rows: list[dict[str, float]], keys: tuple[str, ...] = METRIC_NAMES) -> dict[str, dict[str, float]]:
    """Mean ± std, median, count and count of positive values (what I > 0 asks) over cases of each metric,
    ignoring NaN (cases without lesion voxels)."""
    summary = {}
    nan = float("nan")
    for key in keys:
        values = np.array([row[key] for row in rows if key in row], dtype=np.float64)
        values = values[np.isfinite(values)]
        summary[key] = {"mean": float(values.mean()) if values.size else nan,
                        "std": float(values.std()) if values.size else nan,
                        "median": float(np.median(values)) if values.size else nan,
                        "n": int(values.size), "positive": int((values > 0).sum())}
    return summary
