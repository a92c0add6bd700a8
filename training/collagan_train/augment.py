"""Appearance augmentation: make skull-stripped, non-windowed scans (BraTS-like, OpenMS) look in distribution.

The LGG training slices are 8-bit windowed heads with skull. Scans from other sources are often skull-stripped
and keep their scanner's intensity curve. Two augmentations cover that, both on batches of p99-unit slices:

- :func:`strip_outer_head`: the head mask eroded by a random radius (the scalp and skull go), every contrast
  zeroed outside it and re-scaled by the ratio of its 99th percentiles inside the old and the new mask, as the
  core's normalization would do for a scan that arrives stripped. The ratio is the *volume's* (one factor per
  case, contrast and radius, :func:`volume_strip_factors`): the core normalizes a stripped scan by its volume
  p99, and a per-slice ratio biased the intensities (too bright on intact heads, too dark on stripped ones).
  The target is treated the same way, so the loss mask and the target's units stay what evaluation uses.
- :func:`input_appearance`: per input, a random gamma, global scale and smooth multiplicative bias field. Inputs
  only: the target keeps its appearance, so the model learns to map any input look to the training target look.
- :func:`brain_only_volume`: a brain-only copy of a whole case (scalp, skull and neck removed by a morphological
  brain mask, every contrast re-normalized by its 99th percentile inside the brain), as a skull-stripped scan
  reaches the core. Slices where the mask fails (skull base, vertex) are left out of the copy.
- :func:`input_contrast`: per input, the tissue contrast stretched or flattened around the slice's median
  (inputs only): a 3-D gradient-echo T1 (MPRAGE) separates grey and white matter far more than the LGG spin-echo
  T1, and a model that saw one T1 contrast extrapolates wildly from another.
- :func:`joint_gamma`: one gamma < 1 for every contrast of a slice, the target included: p99 units stay p99
  units (0 and 1 are fixed) while the tissue level rises, as in a brain-only scan (an LGG head averages
  0.35-0.49 of its p99, a skull-stripped scan 0.6-0.75). The model learns to follow the inputs' level, which
  input-only augmentation teaches it to ignore.

Example:
    >>> gen = torch.Generator().manual_seed(0)
    >>> images, masks = torch.rand(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool)
    >>> images, masks = strip_outer_head(images, masks, gen, p=1.0, radius=(2, 6))
    >>> images = input_appearance(images, gen, p=1.0, gamma=0.3, scale=0.15, bias=0.2)
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from CollaGANImputeLib.normalization import p99
from scipy import ndimage


def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary erosion of (..., H, W) by a square of side 2r+1, the image edge not counted as background
    (scipy's separable minimum filter, the same erosion the brain mask below uses a library for)."""
    if radius <= 0:
        return mask
    size = (1,) * (mask.dim() - 2) + (2 * radius + 1,) * 2
    return torch.from_numpy(ndimage.minimum_filter(mask.cpu().numpy(), size=size, mode="nearest")).to(mask.device)


def strip_radii(radius: Sequence[int], count: int = 4) -> List[int]:
    """The erosion radii drawn from: ``count`` evenly spaced integers over the configured range."""
    return sorted({int(round(r)) for r in np.linspace(radius[0], radius[1], count)})


def volume_strip_factors(images: np.ndarray, masks: np.ndarray, cases: Sequence[str], radii: Sequence[int]
                         ) -> np.ndarray:
    """(S, R, N) float32: for every slice, radius and contrast, p99(volume in its head) / p99(volume in the head
    eroded by that radius), computed over all slices of the slice's case (``cases``: its case per slice)."""
    factors = np.ones((images.shape[0], len(radii), images.shape[1]), dtype=np.float32)
    names = np.asarray(cases)
    for case in dict.fromkeys(cases):
        rows = np.flatnonzero(names == case)
        volume = np.asarray(images[rows], dtype=np.float32)
        head = torch.from_numpy(np.asarray(masks[rows], dtype=bool))
        for j, r in enumerate(radii):
            inner = _erode(head, r).numpy()
            if inner.sum() < 64:
                continue
            for c in range(images.shape[1]):
                before = np.percentile(volume[:, c][head.numpy()], 99)
                after = np.percentile(volume[:, c][inner], 99)
                factors[rows, j, c] = before / after if after > 0 else 1.0
    return factors


def strip_outer_head(images: torch.Tensor, masks: torch.Tensor, gen: torch.Generator, p: float,
                     radius: Sequence[int] = (6, 18), min_keep: float = 0.3,
                     factors: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """With probability ``p`` per slice, remove an outer shell of the head (see the module docstring).

    ``factors`` (B, R, N) are the volume re-scale factors of :func:`volume_strip_factors` for the radii
    :func:`strip_radii` (``radius``); without them each slice is re-scaled by its own p99 ratio (biased; kept for
    slices without a case). A slice keeps its original head when the eroded mask would hold less than
    ``min_keep`` of it (small top or bottom slices), so no slice loses all its tissue.
    """
    if p <= 0:
        return images, masks
    radii = strip_radii(radius)
    images, masks = images.clone(), masks.clone()
    for i in range(images.shape[0]):
        if float(torch.rand(1, generator=gen)) >= p:
            continue
        j = int(torch.randint(len(radii), (1,), generator=gen))
        inner = _erode(masks[i], radii[j])
        if inner.sum() < min_keep * masks[i].sum() or inner.sum() < 64:
            continue
        for c in range(images.shape[1]):
            if factors is not None:
                factor = float(factors[i, j, c])
            else:
                before = torch.quantile(images[i, c][masks[i]].float(), 0.99)
                after = torch.quantile(images[i, c][inner].float(), 0.99)
                factor = float(before / after) if after > 0 else 1.0
            images[i, c] = torch.where(inner, images[i, c] * factor, torch.zeros_like(images[i, c]))
        masks[i] = inner
    return images, masks


def joint_gamma(images: torch.Tensor, gen: torch.Generator, p: float, lowest: float = 0.4) -> torch.Tensor:
    """With probability ``p`` per slice: x -> x**g for every contrast of it, g ~ log-uniform in [lowest, 1]."""
    if p <= 0:
        return images
    b = images.shape[0]
    pick = torch.rand(b, generator=gen) < p
    g = torch.exp(torch.rand(b, generator=gen) * math.log(lowest))
    g = torch.where(pick, g, torch.ones_like(g))[:, None, None, None]
    return images.clamp_min(0) ** g


def input_contrast(images: torch.Tensor, gen: torch.Generator, p: float, stretch: float = 1.8) -> torch.Tensor:
    """With probability ``p`` per (slice, input): inside the head (x > 0), x -> (m + s (x - m)) / (m + s (1 - m)),
    with m the median of the slice's non-zero voxels and log s ~ U(-log stretch, log stretch); 1 (the p99) stays
    1, zero stays zero, and tissue never drops below 0.01 (it must not look like background)."""
    if p <= 0 or stretch <= 1:
        return images
    b, n = images.shape[:2]
    pick = torch.rand(b, n, generator=gen) < p
    log_s = (torch.rand(b, n, generator=gen) * 2 - 1) * math.log(stretch)
    inside = images > 0
    pick &= inside.sum(dim=(2, 3)) >= 64  # too little tissue for a median
    # One batched median of every image's tissue (NaN elsewhere), as torch.median gives it per image.
    m = torch.where(inside, images, torch.nan).flatten(2).nanmedian(dim=2).values[:, :, None, None]
    s = torch.exp(log_s)[:, :, None, None]
    stretched = ((m + s * (images - m)) / (m + s * (1 - m))).clamp_min(0.01)
    return torch.where(pick[:, :, None, None] & inside, stretched, images)


def input_appearance(images: torch.Tensor, gen: torch.Generator, p: float, gamma: float = 0.3,
                     scale: float = 0.15, bias: float = 0.2) -> torch.Tensor:
    """With probability ``p`` per (slice, input): x -> s * b(y, x) * x**g, with log g ~ U(-gamma, gamma),
    s ~ U(1-scale, 1+scale) and b a smooth linear bias field of relative amplitude up to ``bias``.

    Apply it to inputs only (before the target slot is emptied it does no harm to the target: the caller passes
    the input channels). Zero stays zero, so the background and emptied slots are unchanged.
    """
    if p <= 0:
        return images
    b, n, h, w = images.shape
    pick = (torch.rand(b, n, generator=gen) < p).float()[:, :, None, None]
    log_g = (torch.rand(b, n, generator=gen) * 2 - 1) * gamma
    s = 1 + (torch.rand(b, n, generator=gen) * 2 - 1) * scale
    ys = torch.linspace(-1, 1, h)[:, None]
    xs = torch.linspace(-1, 1, w)[None, :]
    angle = torch.rand(b, n, generator=gen) * 2 * math.pi
    amp = torch.rand(b, n, generator=gen) * bias
    field = 1 + amp[:, :, None, None] * (torch.cos(angle)[:, :, None, None] * xs + torch.sin(angle)[:, :, None, None]
                                         * ys)
    warped = s[:, :, None, None] * field * images.clamp_min(0) ** torch.exp(log_g)[:, :, None, None]
    return pick * warped + (1 - pick) * images


def synthetic_enhancement(images: torch.Tensor, lesions: torch.Tensor, target: torch.Tensor, channel: int,
                          gen: torch.Generator, p: float, amplitude: Tuple[float, float] = (0.2, 0.6),
                          min_voxels: int = 200) -> torch.Tensor:
    """With probability ``p`` per slice with a lesion (and ``channel`` not its target): contrast enhancement painted
    into that input (T1+Gd) inside the lesion mask, a rim 2-5 pixels wide 1-3 pixels inside its border (70 %) or a
    solid core (30 %), softened by a 5x5 mean and ``amplitude`` p99 units high. Inputs only.

    Why: the LGG training set has few enhancing tumours, and the model learned that what is bright on T1+Gd
    (vessels, fat) is dark on FLAIR, so an enhancing rim became a dark ring inside a FLAIR-bright lesion. The lesion
    masks are the FLAIR abnormality, and enhancement lies inside it: with the target unchanged (still bright
    there), the model learns that enhancement inside an abnormality does not make it dark.

    Example:
        >>> images, lesions = torch.rand(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool)
        >>> lesions[0, 20:40, 20:40] = True
        >>> out = synthetic_enhancement(images, lesions, torch.tensor([2]), 1, torch.Generator(), p=1.0)
        >>> bool((out[0, 1] >= images[0, 1]).all()) and bool((out[0, 1] > images[0, 1]).any())
        True
    """
    if p <= 0:
        return images
    b = images.shape[0]
    pick = (torch.rand(b, generator=gen) < p) & (target != channel) & (lesions.sum(dim=(1, 2)) >= min_voxels)
    inset = torch.randint(1, 4, (b,), generator=gen)
    width = torch.randint(2, 6, (b,), generator=gen)
    solid = torch.rand(b, generator=gen) < 0.3
    level = amplitude[0] + torch.rand(b, generator=gen) * (amplitude[1] - amplitude[0])
    if not bool(pick.any()):
        return images
    out = images.clone()
    for i in torch.nonzero(pick)[:, 0].tolist():
        inner = _erode(lesions[i], int(inset[i]))
        paint = inner if bool(solid[i]) else inner & ~_erode(lesions[i], int(inset[i] + width[i]))
        soft = F.avg_pool2d(paint.float()[None, None], 5, stride=1, padding=2)[0, 0]
        x = images[i, channel]
        out[i, channel] = torch.where(x > 0, x + level[i] * soft, x)
    return out


def brain_mask_slice(tissue: np.ndarray, head: np.ndarray, erode: int = 5, min_share: float = 0.3
                     ) -> Optional[np.ndarray]:
    """A brain mask of one slice, or None where it fails: the tissue mask eroded by ``erode`` pixels (the dark
    skull then separates brain from scalp), the pieces that stay clear of the head's outer band kept, grown back
    inside the tissue, holes (ventricles) filled. None when the brain holds less than ``min_share`` of the head."""
    cross = ndimage.generate_binary_structure(2, 1)
    eroded = ndimage.binary_erosion(ndimage.binary_opening(tissue, cross), cross, iterations=erode)
    labels, count = ndimage.label(eroded)
    if count == 0:
        return None
    band = head & ~ndimage.binary_erosion(head, cross, iterations=erode + 4)
    touching = set(np.unique(labels[band & eroded]).tolist())
    sizes = ndimage.sum(eroded, labels, range(1, count + 1))
    keep = [k + 1 for k in range(count) if k + 1 not in touching and sizes[k] >= 200]
    if not keep:
        return None
    brain = ndimage.binary_dilation(np.isin(labels, keep), cross, iterations=erode) & tissue
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(brain, cross, iterations=3)) & head
    if brain.sum() < max(min_share * head.sum(), 3000):
        return None
    return brain


def brain_only_volume(images: np.ndarray, head: np.ndarray, threshold: float = 0.15, erode: int = 5
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, N, H, W) p99-unit slices of one case and their (S, H, W) head masks -> the brain-only copy: images
    (zero outside the brain, each contrast divided by its 99th percentile inside the brain of the whole case),
    brain masks, and (S,) which slices have a usable brain mask (the others are all zero).

    Example:
        >>> images, head = np.random.rand(4, 3, 64, 64).astype(np.float32), np.ones((4, 64, 64), bool)
        >>> copy, brain, ok = brain_only_volume(images, head)
    """
    # The darkest contrast of a voxel: bone is dark in all of them, so the skull splits brain from scalp.
    tissue = (images.min(axis=1) > threshold) & head
    brain = np.zeros_like(head, dtype=bool)
    ok = np.zeros(len(images), dtype=bool)
    for s in range(len(images)):
        mask = brain_mask_slice(tissue[s], head[s], erode)
        if mask is not None:
            brain[s], ok[s] = mask, True
    out = np.zeros_like(images, dtype=np.float32)
    if ok.any():
        for c in range(images.shape[1]):
            out[:, c] = np.where(brain, images[:, c] / p99(images[:, c], brain), 0)
    return out, brain, ok
