"""What one training step is given: a batch's outer-head and joint-gamma augmentations, the target drawn per
sample, the inputs left available (the target nulled, input dropout on top), and the inputs' own look
(:func:`restyle_inputs`: what the generator's first pass sees, never the targets).

Every random number comes from the step's sampling stream ``gen``, in a fixed order, so a step's inputs follow
from (seed, step, rank) alone.

Example:
    >>> cfg = TrainConfig(contrasts=["t1n", "t1c", "t2f"], input_dropout_max_extra=0)
    >>> images, masks = torch.rand(2, 3, 8, 8), torch.ones(2, 8, 8, dtype=torch.bool)
    >>> _, target, available, _, _ = sample_inputs(images, masks, masks, cfg, torch.Generator().manual_seed(0))
    >>> available.sum(1).tolist(), bool(available[torch.arange(2), target].any())
    ([2, 2], False)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple

import torch

from . import augment, losses
from .config import TrainConfig

if TYPE_CHECKING:
    from .data_loader import SliceData


def volume_strip_factors(train: SliceData, cfg: TrainConfig) -> Optional[torch.Tensor]:
    """(S, R, N) re-scales of the outer-head augmentation where ``aug_strip_per_volume`` (one per (case, radius,
    contrast): :func:`.augment.volume_strip_factors`), else None."""
    if cfg.aug_strip_p > 0 and cfg.aug_strip_per_volume:
        return torch.from_numpy(augment.volume_strip_factors(
            train.images, train.masks, [case for case, _ in train.index], augment.strip_radii(cfg.aug_strip_radius)))
    return None


def sample_inputs(images: torch.Tensor, masks: torch.Tensor, lesions: torch.Tensor, cfg: TrainConfig,
                  gen: torch.Generator, strip_factors: Optional[torch.Tensor] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, target (B,), available (B, N), head masks, lesion masks) of a batch of (B, N, H, W) images and
    (B, H, W) masks: the outer-head augmentation applied here (it changes the masks; ``strip_factors`` the
    per-volume re-scales of :func:`.augment.volume_strip_factors`, if any), and with ``target_coverage_only``
    the head masks leave out where the real target has no data."""
    # Before any augmentation moves the zeros: where a contrast was never acquired (outside its field of view).
    nodata = losses.no_data(images) if cfg.target_coverage_only else None
    if cfg.aug_strip_p > 0:
        images, masks = augment.strip_outer_head(images, masks, gen, cfg.aug_strip_p, cfg.aug_strip_radius,
                                                 factors=strip_factors)
        lesions = lesions & masks
    if cfg.aug_joint_gamma_p > 0:  # before the target is chosen: inputs and target get the same level change
        images = augment.joint_gamma(images, gen, cfg.aug_joint_gamma_p, cfg.aug_joint_gamma_min)
    b, n = images.shape[:2]
    if cfg.target_weights:  # e.g. the hardest target (FLAIR) drawn more often
        target = torch.multinomial(torch.tensor(cfg.target_weights, dtype=torch.float), b, replacement=True,
                                   generator=gen)
    else:
        target = torch.randint(n, (b,), generator=gen)
    if nodata is not None:  # the real target has nothing to learn from there: out of every head-only term
        masks = masks & ~nodata[torch.arange(b), target]
        lesions = lesions & masks
    available = torch.ones(b, n, dtype=torch.bool)
    for i in range(b):
        others = [k for k in torch.randperm(n, generator=gen).tolist() if k != int(target[i])]
        if cfg.single_input:
            n_null = n - 1  # all but one input nulled: single-input translation
        else:  # input dropout (§7.1): null 0..max_extra more inputs besides the target, keep at least one
            top = max(0, min(cfg.input_dropout_max_extra, n - 2))
            n_null = 1 + int(torch.randint(top + 1, (1,), generator=gen))
            if cfg.input_dropout_p < 1 and float(torch.rand(1, generator=gen)) >= cfg.input_dropout_p:
                n_null = 1
        for k in [int(target[i])] + others[:n_null - 1]:
            available[i, k] = False
    return images, target, available, masks, lesions


def restyle_inputs(images: torch.Tensor, lesions: torch.Tensor, target: torch.Tensor, cfg: TrainConfig,
                   gen: torch.Generator) -> torch.Tensor:
    """The (B, N, H, W) inputs as the generator's first pass sees them: synthetic enhancement painted into the
    lesions (``aug_enhance_p``), tissue contrast (``aug_contrast_p``) and appearance (``aug_appearance_p``)
    changed; the targets and the cycles keep the images as they are."""
    given = images
    if cfg.aug_enhance_p > 0:  # before the looks: it is anatomy, not style
        given = augment.synthetic_enhancement(given, lesions, target, cfg.contrasts.index(cfg.aug_enhance_contrast),
                                              gen, cfg.aug_enhance_p)
    if cfg.aug_contrast_p > 0:  # inputs only, like the appearance below
        given = augment.input_contrast(given, gen, cfg.aug_contrast_p, cfg.aug_contrast)
    if cfg.aug_appearance_p > 0:
        given = augment.input_appearance(given, gen, cfg.aug_appearance_p, cfg.aug_gamma, cfg.aug_scale,
                                         cfg.aug_bias)
    return given
