"""Appearance augmentation: make skull-stripped, non-windowed scans (BraTS-like, OpenMS) look in distribution.

The LGG training slices are 8-bit windowed heads with skull. Scans from other sources are often skull-stripped
and keep their scanner's intensity curve. Two augmentations cover that, both on batches of p99-unit slices:

- :func:`strip_outer_head`: the head mask eroded by a random radius (the scalp and skull go), every contrast
  zeroed outside it and re-scaled by the ratio of its 99th percentiles inside the old and the new mask, as the
  core's normalization would do for a scan that arrives stripped. The target is treated the same way, so the
  loss mask and the target's units stay what evaluation uses.
- :func:`input_appearance`: per input, a random gamma, global scale and smooth multiplicative bias field. Inputs
  only: the target keeps its appearance, so the model learns to map any input look to the training target look.

Example:
    >>> gen = torch.Generator().manual_seed(0)
    >>> images, masks = torch.rand(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.bool)
    >>> images, masks = strip_outer_head(images, masks, gen, p=1.0, radius=(2, 6))
    >>> images = input_appearance(images, gen, p=1.0, gamma=0.3, scale=0.15, bias=0.2)
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F


def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary erosion of (H, W) by a square of side 2r+1 (a min-pool: background spreads r pixels)."""
    if radius <= 0:
        return mask
    background = (~mask).float()[None, None]
    grown = F.max_pool2d(background, 2 * radius + 1, stride=1, padding=radius)[0, 0] > 0
    return mask & ~grown


def strip_outer_head(images: torch.Tensor, masks: torch.Tensor, gen: torch.Generator, p: float,
                     radius: Tuple[int, int] = (6, 18), min_keep: float = 0.3) -> Tuple[torch.Tensor, torch.Tensor]:
    """With probability ``p`` per slice, remove an outer shell of the head (see the module docstring).

    A slice keeps its original head when the eroded mask would hold less than ``min_keep`` of it (small top or
    bottom slices), so no slice loses all its tissue.
    """
    if p <= 0:
        return images, masks
    images, masks = images.clone(), masks.clone()
    for i in range(images.shape[0]):
        if float(torch.rand(1, generator=gen)) >= p:
            continue
        r = int(torch.randint(radius[0], radius[1] + 1, (1,), generator=gen))
        inner = _erode(masks[i], r)
        if inner.sum() < min_keep * masks[i].sum() or inner.sum() < 64:
            continue
        for c in range(images.shape[1]):
            before = torch.quantile(images[i, c][masks[i]].float(), 0.99)
            after = torch.quantile(images[i, c][inner].float(), 0.99)
            factor = float(before / after) if after > 0 else 1.0
            images[i, c] = torch.where(inner, images[i, c] * factor, torch.zeros_like(images[i, c]))
        masks[i] = inner
    return images, masks


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
