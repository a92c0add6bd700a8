"""CollaGAN loss terms: cycle L1 + SSIM loss (eq. 2-3, 7-8), LSGAN, domain classification; the direct, lesion
and identity terms, weighted as a config sets them (:func:`direct_terms`, :func:`identity_terms`).

Example:
    >>> x = torch.rand(2, 1, 32, 32)
    >>> abs(float(ssim_loss(x, x)))     # identical images: SSIM 1, loss -log((1+1)/2) = 0
    0.0
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from CollaGANImputeLib.metrics import NO_DATA_PATCH

from .config import TrainConfig

#: SSIM constants of EVALUATION.md (Gaussian window sigma 1.5, 11x11, K1 0.01, K2 0.03, data range 1).
SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
K1, K2 = 0.01, 0.03


def _gaussian_window(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(SSIM_WINDOW, device=device, dtype=dtype) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of (B, 1, H, W) images (Gaussian window, population statistics, valid region only)."""
    window = _gaussian_window(x.device, x.dtype)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    sxx = F.conv2d(x * x, window) - mu_x**2
    syy = F.conv2d(y * y, window) - mu_y**2
    sxy = F.conv2d(x * y, window) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).mean()


def ssim_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Paper eq. 7: -log((1 + SSIM) / 2); 0 for identical images, log 2 at SSIM 0."""
    return -torch.log((1 + ssim(x, y)).clamp_min(1e-6) / 2)


def edge_band(masks: torch.Tensor, width: int) -> torch.Tensor:
    """(B, H, W) bool masks -> the voxels of each mask within ``width`` pixels (chessboard distance) of its
    outer edge: the scalp and skull of a head mask, the cortex and outer CSF of a brain mask.

    Example:
        >>> mask = torch.zeros(1, 9, 9, dtype=torch.bool); mask[:, 1:8, 1:8] = True
        >>> int(edge_band(mask, 2).sum())   # 7x7 square minus its 3x3 core
        40
    """
    inside = -F.max_pool2d(-masks[:, None].float(), 2 * width + 1, stride=1, padding=width)[:, 0]
    return masks & (inside < 0.5)


def no_data(images: torch.Tensor, size: int = NO_DATA_PATCH) -> torch.Tensor:
    """(B, N, H, W) images in p99 units -> the voxels inside a ``size`` x ``size`` patch of exact zeros: where a
    contrast was not acquired (outside its field of view, e.g. a FLAIR slab that ends before the T1's), which an
    MR image's noise never is inside the head. The batched torch form of the core's ``metrics.not_acquired``
    (the rule ``evaluate`` reports as ``real_no_data``), for the training loss.

    Example:
        >>> image = torch.rand(1, 1, 12, 12) + 0.1; image[..., :, :5] = 0   # the first 5 columns never acquired
        >>> no_data(image, 3)[0, 0, 0].tolist()[:6]
        [True, True, True, True, False, False]
    """
    zero = (images <= 0).float().flatten(0, 1)[:, None]
    share = F.avg_pool2d(zero, size, stride=1, padding=size // 2, count_include_pad=False)
    return (share > 0.999).reshape(images.shape)


def l1(x: torch.Tensor, y: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean absolute error, each voxel's error times ``weight`` where given (e.g. lesion voxels up-weighted)."""
    error = (x - y).abs()
    return (error * weight if weight is not None else error).mean()


def l2(x: torch.Tensor, y: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared error, weighted like :func:`l1`."""
    error = (x - y) ** 2
    return (error * weight if weight is not None else error).mean()


def lesion_contrast_loss(fake: torch.Tensor, real: torch.Tensor, head: torch.Tensor, lesion: torch.Tensor,
                         min_voxels: int = 50) -> torch.Tensor:
    """Mean over slices with a lesion of |Δ_fake − Δ_real| / t_real, Δ = mean(lesion) − mean(head minus lesion),
    t_real = the real tissue mean: the error of EVALUATION.md's conspicuity C = mean(lesion) / mean(tissue),
    linearised around the real image so that a dark or blank early output cannot make it explode. A lesion the
    direct loss blurs away still costs; 0 without lesions."""
    inside = (head & lesion).to(fake.dtype)
    outside = (head & ~lesion).to(fake.dtype)
    n_in, n_out = inside.sum(dim=(1, 2, 3)), outside.sum(dim=(1, 2, 3))
    use = (n_in >= min_voxels) & (n_out >= min_voxels)
    if not bool(use.any()):
        return fake.sum() * 0

    def means(x: torch.Tensor):
        lesion_mean = (x * inside).sum(dim=(1, 2, 3)) / n_in.clamp_min(1)
        return lesion_mean, (x * outside).sum(dim=(1, 2, 3)) / n_out.clamp_min(1)

    les_f, tis_f = means(fake)
    les_r, tis_r = means(real)
    error = ((les_f - tis_f) - (les_r - tis_r)).abs() / tis_r.clamp_min(0.1)
    return error[use].mean()


def _pearson(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-sample Pearson r of (B, 1, H, W) images over the voxels where ``weight`` (B, 1, H, W) is 1."""
    n = weight.sum(dim=(1, 2, 3)).clamp_min(1)

    def centred(z: torch.Tensor) -> torch.Tensor:
        return (z - (z * weight).sum(dim=(1, 2, 3), keepdim=True) / n[:, None, None, None]) * weight

    xc, yc = centred(x), centred(y)
    num = (xc * yc).sum(dim=(1, 2, 3))
    return num / ((xc**2).sum(dim=(1, 2, 3)) * (yc**2).sum(dim=(1, 2, 3))).clamp_min(1e-8).sqrt()


def _excess_resemblance(fake: torch.Tensor, real: torch.Tensor, given: torch.Tensor, weight: torch.Tensor
                        ) -> torch.Tensor:
    """Per sample, max(0, r(fake, given) − r(real, given)): how much more the fake resembles an input than the
    real target does (the real side is a constant, not a path for gradients)."""
    return (_pearson(fake, given, weight) - _pearson(real, given, weight).detach()).clamp_min(0)


def identity_loss(fake: torch.Tensor, real: torch.Tensor, inputs: torch.Tensor, available: torch.Tensor,
                  head: torch.Tensor) -> torch.Tensor:
    """EVALUATION.md's voxel identity I as a loss, per slice over the head: 1 − r(fake, real) plus, for every
    available input, how much more the fake resembles that input than the real target does,
    max(0, r(fake, input) − r(real, input)). A regression to the mean of the target given the inputs resembles
    the inputs more than the target does (its unexplained part is shrunk away); this term asks the output to keep
    the target's own share of variance (``inputs`` (B, N, H, W), ``available`` (B, N) bool, ``head`` (B, 1, H, W)).
    """
    weight = head.to(fake.dtype)
    loss = 1 - _pearson(fake, real, weight)
    for k in range(inputs.shape[1]):
        loss = loss + _excess_resemblance(fake, real, inputs[:, k:k + 1], weight) * available[:, k].to(fake.dtype)
    return loss.mean()


def _pool(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The (B, 1, H, W) slices picked by ``rows`` stacked into one (1, 1, n*H, W) sample."""
    return x[rows].transpose(0, 1).reshape(1, 1, -1, x.shape[-1])


def identity_loss_pooled(fake: torch.Tensor, real: torch.Tensor, inputs: torch.Tensor, available: torch.Tensor,
                         head: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`identity_loss` with the slices of one target pooled, as EVALUATION.md scores a whole volume.
    The per-slice term cannot see whether the output's brightness from slice to slice follows the target or an
    input; pooled, it does (``target`` (B,) the target index of each slice). Each input is compared over the
    slices that had it. Groups of one slice add nothing."""
    weight = head.to(fake.dtype)
    terms = []
    for t in torch.unique(target).tolist():
        group = target == t
        if int(group.sum()) < 2:
            continue
        loss = 1 - _pearson(_pool(fake, group), _pool(real, group), _pool(weight, group))[0]
        for k in range(inputs.shape[1]):
            rows = group & available[:, k]
            if int(rows.sum()) < 2:
                continue
            loss = loss + _excess_resemblance(_pool(fake, rows), _pool(real, rows), _pool(inputs[:, k:k + 1], rows),
                                              _pool(weight, rows))[0]
        terms.append(loss)
    return torch.stack(terms).mean() if terms else fake.sum() * 0


def lsgan_d(real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
    """Discriminator LSGAN loss: E[(D(real) - 1)^2] + E[D(fake)^2]."""
    return ((real_out - 1) ** 2).mean() + (fake_out**2).mean()


def lsgan_g(fake_out: torch.Tensor) -> torch.Tensor:
    """Generator LSGAN loss: E[(D(fake) - 1)^2]."""
    return ((fake_out - 1) ** 2).mean()


def classification(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy of the domain classifier (eq. 4 on real images, eq. 5 on fakes)."""
    return F.cross_entropy(logits, labels)


def cycle(recon: torch.Tensor, real: torch.Tensor, ssim_weight: float, l1_weight: float) -> dict:
    """Multiple-cycle-consistency terms over a batch of (reconstruction, original) pairs.

    Only the pairs passed are scored: the solver leaves out nulled (dropped-out) slots, as the authors'
    code did. Returns the weighted L1 and SSIM-loss terms separately, for logging.
    """
    if recon.shape[0] == 0:
        zero = recon.sum() * 0
        return {"cyc_l1": zero, "cyc_ssim": zero}
    return {"cyc_l1": l1_weight * l1(recon, real),
            "cyc_ssim": ssim_weight * ssim_loss(recon, real) if ssim_weight else recon.sum() * 0}


def voxel_weight(masks: torch.Tensor, lesions: torch.Tensor, cfg: TrainConfig, dtype: torch.dtype
                 ) -> Optional[torch.Tensor]:
    """(B, 1, H, W) weights of the direct L1/L2 terms: lesion voxels (``lesion_weight``) and the head's outer band
    (``edge_weight``, ``edge_px``) up-weighted, the higher weight where they meet; None when both weights are 1."""
    weight = None
    if cfg.lesion_weight != 1:
        weight = 1 + (cfg.lesion_weight - 1) * lesions[:, None].to(dtype)
    if cfg.edge_weight != 1:
        # The scalp holds a third of the head's squared error and is where a FLAIR copied from the T1 shows
        # most in the whole-head contrast identity (research/identity_counterfactual.py).
        edge = 1 + (cfg.edge_weight - 1) * edge_band(masks, cfg.edge_px)[:, None].to(dtype)
        weight = edge if weight is None else torch.maximum(weight, edge)
    return weight


def direct_terms(fake: torch.Tensor, real_t: torch.Tensor, masks: torch.Tensor, lesions: torch.Tensor,
                 cfg: TrainConfig) -> Dict[str, torch.Tensor]:
    """The weighted direct losses of ``cfg`` on the imputed (B, 1, H, W) target: L1/L2 (:func:`voxel_weight`),
    SSIM, and the lesion-contrast term; ``masks`` and ``lesions`` (B, H, W). Terms of weight 0 are left out.

    Example:
        >>> cfg = TrainConfig(w_direct_l1=10.0, w_direct_ssim=0.0)
        >>> real, head = torch.zeros(1, 1, 8, 8), torch.ones(1, 8, 8, dtype=torch.bool)
        >>> {k: float(v) for k, v in direct_terms(real + 0.5, real, head, ~head, cfg).items()}
        {'direct_l1': 5.0}
    """
    terms: Dict[str, torch.Tensor] = {}
    lesion = lesions[:, None]
    weight = voxel_weight(masks, lesions, cfg, fake.dtype)
    if cfg.w_direct_l1 > 0:
        terms["direct_l1"] = cfg.w_direct_l1 * l1(fake, real_t, weight)
    if cfg.w_direct_l2 > 0:
        terms["direct_l2"] = cfg.w_direct_l2 * l2(fake, real_t, weight)
    if cfg.w_direct_ssim > 0:
        terms["direct_ssim"] = cfg.w_direct_ssim * ssim_loss(fake, real_t)
    if cfg.w_lesion_contrast > 0:
        terms["lesion_contrast"] = cfg.w_lesion_contrast * lesion_contrast_loss(fake, real_t, masks[:, None], lesion)
    return terms

def identity_terms(fake: torch.Tensor, real_t: torch.Tensor, inputs: torch.Tensor, available: torch.Tensor,
                   masks: torch.Tensor, target: torch.Tensor, cfg: TrainConfig) -> Dict[str, torch.Tensor]:
    """The weighted contrast-identity terms of ``cfg`` (``w_identity``: :func:`identity_loss` per slice,
    ``w_identity_pooled``: :func:`identity_loss_pooled`) of the imputed (B, 1, H, W) target against the (B, N, H, W)
    ``inputs`` and their ``available`` (B, N) flags, inside the (B, H, W) head ``masks``; terms of weight 0 left out."""
    terms: Dict[str, torch.Tensor] = {}
    if cfg.w_identity > 0:
        terms["identity"] = cfg.w_identity * identity_loss(fake, real_t, inputs, available, masks[:, None])
    if cfg.w_identity_pooled > 0:
        terms["identity_pooled"] = cfg.w_identity_pooled * identity_loss_pooled(
            fake, real_t, inputs, available, masks[:, None], target)
    return terms


LOG2 = math.log(2.0)
