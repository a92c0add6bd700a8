"""EVALUATION.md metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from CollaGANImputeLib.metrics import error_map, nmse, per_slice_ssim, psnr, score_volume, ssim_map, summarize
from skimage.metrics import structural_similarity


def test_identical_images_are_perfect():
    rng = np.random.default_rng(0)
    gt = rng.random((3, 20, 20)).astype(np.float32)
    mask = np.zeros(gt.shape, bool)
    mask[:, 4:16, 4:16] = True
    scores = score_volume(gt.copy(), gt, mask, lesion=mask)
    assert scores["nmse"] == 0.0
    assert scores["ssim"] == pytest.approx(1.0)
    assert math.isinf(scores["psnr"])
    assert scores["lesion_nmse"] == 0.0 and scores["lesion_ssim"] == pytest.approx(1.0)


def test_nmse_by_hand():
    gt = np.array([[[1.0, 2.0], [3.0, 100.0]]])
    pred = np.array([[[2.0, 2.0], [1.0, -50.0]]])
    mask = np.array([[[True, True], [True, False]]])  # the last voxel is outside M and must not count
    # Σ(pred-gt)² = 1 + 0 + 4 = 5; Σgt² = 1 + 4 + 9 = 14
    assert nmse(pred, gt, mask) == pytest.approx(5 / 14)


def test_psnr_by_hand_clips_to_unit_range():
    gt = np.array([[[0.5, 1.0, 0.0, 2.0]]])
    pred = np.array([[[0.7, 1.5, -1.0, 1.0]]])
    mask = np.ones(gt.shape, bool)
    # clipped: gt (0.5, 1, 0, 1), pred (0.7, 1, 0, 1) -> MSE = 0.04 / 4 = 0.01 -> 20 dB
    assert psnr(pred, gt, mask) == pytest.approx(20.0)


def test_ssim_matches_skimage_on_full_mask_and_ignores_background():
    rng = np.random.default_rng(1)
    gt = rng.random((1, 32, 32))
    pred = np.clip(gt + 0.1 * rng.standard_normal(gt.shape), 0, 1)
    full = np.ones(gt.shape, bool)
    # the protocol averages the full SSIM map over M (skimage's scalar mean would crop the borders)
    expected = structural_similarity(gt[0], pred[0], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, full=True)[1].mean()
    assert score_volume(pred, gt, full)["ssim"] == pytest.approx(expected, abs=1e-9)
    # garbage outside M changes nothing: it is zeroed before SSIM and excluded from the mean
    mask = np.zeros(gt.shape, bool)
    mask[:, 8:24, 8:24] = True
    noisy = pred.copy()
    noisy[~mask] = 7.0
    assert ssim_map(noisy, gt, mask)[mask].mean() == pytest.approx(ssim_map(pred, gt, mask)[mask].mean())


def test_lesion_scores_use_mask_and_lesion_intersection():
    gt = np.ones((1, 12, 12))
    pred = np.ones((1, 12, 12))
    pred[0, 0, 0] = 3.0  # error only at one voxel, inside the lesion
    mask = np.ones(gt.shape, bool)
    lesion = np.zeros(gt.shape, bool)
    lesion[0, 0, :2] = True
    scores = score_volume(pred, gt, mask, lesion)
    assert scores["nmse"] == pytest.approx(4 / 144)
    assert scores["lesion_nmse"] == pytest.approx(4 / 2)
    assert scores["lesion_voxels"] == 2
    assert math.isnan(score_volume(pred, gt, mask, np.zeros_like(lesion))["lesion_nmse"])


def test_error_map_and_per_slice_ssim():
    gt = np.zeros((2, 12, 12))
    pred = np.full((2, 12, 12), 0.5)
    mask = np.zeros(gt.shape, bool)
    mask[0] = True
    errors = error_map(pred, gt, mask)
    assert errors[0].tolist() == np.full((12, 12), 0.5).tolist() and not errors[1].any()
    per_slice = per_slice_ssim(ssim_map(pred, gt, mask), mask)
    assert per_slice[0] < 1 and math.isnan(per_slice[1])


def test_summarize_ignores_nan():
    stats = summarize([{"nmse": 0.1, "lesion_nmse": float("nan")}, {"nmse": 0.3, "lesion_nmse": 0.2}],
                      keys=("nmse", "lesion_nmse"))
    assert stats["nmse"] == {"mean": pytest.approx(0.2), "std": pytest.approx(0.1), "n": 2}
    assert stats["lesion_nmse"]["n"] == 1
