"""The evaluation protocol of docs/EVALUATION.md (v3), implemented once for CLI, training, Slicer and web.

Arrays are canonical volumes (S, H, W) of axial slices in p99 units; ``mask`` is the inputs-only head mask M.
v3 scores inside ``M_t`` (M less the voxels where the real target was not acquired) and judges contrast identity
on tissue profiles (``I_T``); v2's voxel identity ``I`` stays as a diagnostic. ``protocol="v2"`` reproduces v2's
numbers (M everywhere). Lesion conspicuity: kept share ``K`` of the real lesion-to-tissue contrast. ``I_T``, ``I``
and ``K`` are :mod:`.fidelity`.

Example:
    >>> scores = score_volume(pred, gt, mask, lesion=seg > 0, inputs=[t1n, t1c])   # doctest: +SKIP
    >>> scores["nmse"], scores["ssim"], scores["identity_t"], scores["lesion_kept"]   # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from skimage.metrics import structural_similarity

from .fidelity import contrast_identity, kept_share, lesion_contrast, tissue_identity
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
#: The uncertainty scores of EVALUATION.md (:func:`uncertainty_scores`, besides its ``error_rate``).
UNCERTAINTY_NAMES = ("rho_u", "auroc_u", "lesion_rho_u", "lesion_auroc_u")
#: Lesion scores need at least this many lesion voxels inside M (EVALUATION.md).
LESION_MIN_VOXELS = 50
#: The real target counts as not acquired inside a square of this many pixels of exact zeros (no_data_share).
NO_DATA_PATCH = 7
#: ``collagan-impute evaluate`` warns when the real target has no data in more than this share of M.
NO_DATA_WARN_SHARE = 0.01


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
