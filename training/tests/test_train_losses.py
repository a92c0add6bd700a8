"""Each loss term on hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import structural_similarity

from training.collagan_train import losses


def test_identical_images_give_zero_cycle_terms():
    x = torch.rand(3, 1, 32, 32)
    terms = losses.cycle(x.clone(), x, ssim_weight=1.0, l1_weight=10.0)
    assert float(terms["cyc_l1"]) == 0.0
    assert abs(float(terms["cyc_ssim"])) < 1e-6


def test_l1_and_weights_hand_worked():
    recon, real = torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.5)
    terms = losses.cycle(recon, real, ssim_weight=0.0, l1_weight=10.0)
    assert math.isclose(float(terms["cyc_l1"]), 5.0, rel_tol=1e-6)  # 10 * mean |0 - 0.5|
    assert float(terms["cyc_ssim"]) == 0.0


def test_ssim_loss_of_zero_ssim_is_log2():
    # Constant images 0 and 1: SSIM = (c1)(c2) / ((1 + c1)(c2)) = c1 / (1 + c1) ~ 1e-4, so loss ~ log 2.
    a, b = torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 16, 16)
    c1 = 0.01**2
    expected = -math.log((1 + c1 / (1 + c1)) / 2)
    assert math.isclose(float(losses.ssim_loss(a, b)), expected, rel_tol=1e-5)


def test_ssim_matches_scikit_image_protocol():
    rng = np.random.default_rng(0)
    a = rng.random((40, 40))
    b = np.clip(a + 0.3 * rng.random((40, 40)), 0, 1)
    _, full = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, full=True)
    ours = float(losses.ssim(torch.tensor(a)[None, None], torch.tensor(b)[None, None]))
    assert abs(ours - full[5:-5, 5:-5].mean()) < 1e-6  # same statistic on the window-valid region


def test_lsgan_terms():
    ones, zeros, halves = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5)
    assert float(losses.lsgan_d(ones, zeros)) == 0.0  # perfect discriminator
    assert float(losses.lsgan_d(halves, halves)) == 0.5  # 0.25 + 0.25
    assert float(losses.lsgan_g(ones)) == 0.0  # D fooled
    assert float(losses.lsgan_g(zeros)) == 1.0


def test_classification_cross_entropy():
    logits = torch.tensor([[20.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert float(losses.classification(logits[:1], torch.tensor([0]))) < 1e-6
    assert math.isclose(float(losses.classification(logits[1:], torch.tensor([2]))), math.log(3), rel_tol=1e-6)


def test_empty_cycle_batch_is_zero_with_graph():
    recon = torch.zeros(0, 1, 8, 8, requires_grad=True)
    terms = losses.cycle(recon, torch.zeros(0, 1, 8, 8), 1.0, 10.0)
    assert terms["cyc_l1"].item() == 0.0 and terms["cyc_l1"].requires_grad
