"""The evaluation protocol of ../shared/docs/EVALUATION.md, implemented once for CLI, training and Slicer.

Arrays are canonical volumes (S, H, W) of axial slices in p99 units; ``mask`` is the inputs-only head mask.

Example:
    >>> scores = score_volume(pred, gt, mask, lesion=seg > 0)   # doctest: +SKIP
    >>> scores["nmse"], scores["psnr"], scores["ssim"], scores["lesion_ssim"]   # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from skimage.metrics import structural_similarity

SSIM_SIGMA = 1.5
METRIC_NAMES = ("nmse", "psnr", "ssim", "lesion_nmse", "lesion_ssim")


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


def score_volume(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, lesion: Optional[np.ndarray] = None
                 ) -> dict[str, float]:
    """NMSE, PSNR and masked SSIM of one case and target; lesion NMSE/SSIM inside ``M ∩ lesion``."""
    if pred.shape != gt.shape or gt.shape != mask.shape:
        raise ValueError(f"Shapes differ: pred {pred.shape}, gt {gt.shape}, mask {mask.shape}.")
    mask = mask.astype(bool)
    map_ = ssim_map(pred, gt, mask)
    scores = {"nmse": nmse(pred, gt, mask), "psnr": psnr(pred, gt, mask), "ssim": masked_mean(map_, mask),
              "lesion_nmse": float("nan"), "lesion_ssim": float("nan"), "lesion_voxels": 0.0}
    if lesion is not None:
        region = mask & (lesion > 0)
        scores["lesion_voxels"] = float(region.sum())
        if region.any():
            scores["lesion_nmse"] = nmse(pred, gt, region)
            scores["lesion_ssim"] = masked_mean(map_, region)
    return scores


def summarize(rows: list[dict[str, float]], keys: tuple[str, ...] = METRIC_NAMES) -> dict[str, dict[str, float]]:
    """Mean ± std (and count) over cases of each metric, ignoring NaN (cases without lesion voxels)."""
    summary = {}
    for key in keys:
        values = np.array([row[key] for row in rows if key in row], dtype=np.float64)
        values = values[np.isfinite(values)]
        summary[key] = {"mean": float(values.mean()) if values.size else float("nan"),
                        "std": float(values.std()) if values.size else float("nan"),
                        "n": int(values.size)}
    return summary
