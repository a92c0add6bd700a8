"""EVALUATION.md metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from CollaGANImputeLib.fidelity import pearson, tissue_cells, tissue_identity, tissue_profile
from CollaGANImputeLib.metrics import (
    error_map,
    nmse,
    no_data_share,
    per_slice_ssim,
    psnr,
    score_volume,
    ssim_map,
    summarize,
    target_mask,
)
from CollaGANImputeLib.normalization import normalize, p99
from skimage.metrics import structural_similarity


def test_identical_images_are_perfect():
    rng = np.random.default_rng(0)
    gt = rng.random((3, 20, 20)).astype(np.float32)
    mask = np.zeros(gt.shape, bool)
    mask[:, 4:16, 4:16] = True
    scores = score_volume(gt.copy(), gt, mask, lesion=mask)
    assert scores["nmse"] == 0.0
    assert scores["ssim"] == pytest.approx(1.0)
    assert scores["psnr"] > 100  # identical up to rounding
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
    lesion[0, :5, :10] = True  # 50 voxels: the protocol's minimum
    scores = score_volume(pred, gt, mask, lesion)
    assert scores["nmse"] == pytest.approx(4 / 144)
    assert scores["lesion_nmse"] == pytest.approx(4 / 50)
    assert scores["lesion_voxels"] == 50
    assert math.isnan(score_volume(pred, gt, mask, np.zeros_like(lesion))["lesion_nmse"])
    lesion[0, 4, 9] = False  # 49 voxels: too few to score
    assert math.isnan(score_volume(pred, gt, mask, lesion)["lesion_nmse"])


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
    assert stats["nmse"] == {"mean": pytest.approx(0.2), "std": pytest.approx(0.1), "median": pytest.approx(0.2),
                             "n": 2, "positive": 2}
    assert stats["lesion_nmse"]["n"] == 1


def _fidelity_case():
    """Hand-made head: tissue with anatomy-like texture, a lesion bright in the 'FLAIR' and dark in the 'T1'."""
    rng = np.random.default_rng(3)
    shape = (4, 32, 32)
    mask = np.zeros(shape, bool)
    mask[:, 4:28, 4:28] = True
    lesion = np.zeros(shape, bool)
    lesion[:, 10:18, 10:18] = True
    texture = rng.random(shape)
    t1 = 0.6 + 0.3 * texture
    t1[lesion] *= 0.5
    t1c = 0.5 + 0.3 * texture + 0.05 * rng.random(shape)
    flair = 0.7 - 0.3 * texture + 0.05 * rng.random(shape)  # contrast unlike the inputs'
    flair[lesion] *= 1.6
    return t1, t1c, flair, mask, lesion


def test_copy_of_an_input_has_negative_identity():
    t1, t1c, flair, mask, lesion = _fidelity_case()
    copy = score_volume(t1.copy(), flair, mask, lesion, inputs=[t1, t1c])
    assert copy["identity"] < 0
    assert copy["lesion_kept"] < 0  # the T1-dark lesion shown as a FLAIR lesion: inverted
    assert copy["lesion_contrast_real"] > 1.05 and copy["lesion_contrast_pred"] < 0.95


def test_perfect_prediction_has_positive_identity_and_keeps_the_lesion():
    t1, t1c, flair, mask, lesion = _fidelity_case()
    perfect = score_volume(flair.copy(), flair, mask, lesion, inputs=[t1, t1c])
    assert perfect["identity"] > 0
    assert perfect["lesion_kept"] == pytest.approx(1.0)


def test_vanished_and_inverted_lesions():
    t1, t1c, flair, mask, lesion = _fidelity_case()
    vanished = flair.copy()
    vanished[lesion] = vanished[mask & ~lesion].mean()  # lesion filled with the tissue mean
    assert score_volume(vanished, flair, mask, lesion)["lesion_kept"] == pytest.approx(0.0, abs=1e-9)
    inverted = flair.copy()
    inverted[lesion] = 0.1
    assert score_volume(inverted, flair, mask, lesion)["lesion_kept"] < 0


def test_fidelity_checks_are_nan_without_inputs_or_lesion_contrast():
    t1, t1c, flair, mask, lesion = _fidelity_case()
    scores = score_volume(flair, flair, mask, lesion)
    assert math.isnan(scores["identity"])  # no inputs given
    flat = np.where(mask, 1.0, 0.0)
    assert math.isnan(score_volume(flat, flat, mask, lesion, inputs=[t1])["lesion_kept"])  # C_real = 1


def test_no_data_is_where_the_real_image_is_a_patch_of_zeros_not_where_single_voxels_are_zero():
    rng = np.random.default_rng(3)
    gt = rng.random((4, 32, 32)) + 0.05
    mask = np.ones(gt.shape, bool)
    gt[rng.random(gt.shape) < 0.05] = 0  # scattered zero voxels (dark tissue, clipped noise): data
    assert no_data_share(gt, mask) == 0.0
    gt[0] = 0  # one slice not acquired
    gt[1, :, :16] = 0  # half a slice cut off by a slab's edge
    # the cut's last 3 columns touch acquired voxels within the 7x7 patch: counted as data (a conservative edge)
    assert no_data_share(gt, mask) == pytest.approx((32 * 32 + 32 * 13) / gt.size)
    assert score_volume(gt, gt, mask)["real_no_data"] == no_data_share(gt, mask)


# ------------------------------------------------------------------------------------------- protocol v3

def _regression_case():
    """Inputs of two tissue variables and a target that mixes them differently, with detail (noise) that no
    function of the inputs can predict: the setting where voxel identity fails an honest estimate."""
    rng = np.random.default_rng(0)
    shape = (4, 48, 48)
    s, v = rng.random(shape), rng.random(shape)
    t1, t1c = 0.5 + 0.5 * s, 0.5 + 0.4 * s + 0.2 * v
    flair = 1.0 + 0.5 * s - 0.5 * v + 0.35 * rng.standard_normal(shape)
    return t1, t1c, flair, np.ones(shape, bool)


def test_conditional_mean_passes_tissue_identity_where_voxel_identity_fails():
    t1, t1c, flair, mask = _regression_case()
    conditional_mean = np.zeros_like(flair)  # the target's mean over each cell of the inputs: a function of them
    conditional_mean[mask] = tissue_profile(flair[mask], tissue_cells([t1, t1c], mask))
    r = pearson(conditional_mean, flair, mask)
    rho = max(pearson(flair, x, mask) for x in (t1, t1c))
    assert r * r < rho  # the bound: voxel identity cannot be positive here
    scores = score_volume(conditional_mean, flair, mask, inputs=[t1, t1c])
    assert scores["identity_t"] > 0.1 and scores["identity"] < 0
    assert scores["identity_t"] == pytest.approx(tissue_identity(conditional_mean, flair, [t1, t1c], mask))


def test_tissue_cells_given_once_score_every_prediction_as_without_them():
    """Many predictions of one target (e.g. blends at several shares) share the inputs' cells: given once, each
    prediction scores exactly as when the cells are binned for it."""
    t1, t1c, flair, mask = _regression_case()
    region = mask.copy()
    region[0, :8] = False  # a target region smaller than M, as M_t is
    cells = tissue_cells([t1, t1c], region)
    for pred in (flair, t1, 0.3 * flair + 0.7 * t1c):
        assert tissue_identity(pred, flair, [t1, t1c], region, cells=cells) == tissue_identity(
            pred, flair, [t1, t1c], region)


def test_copy_of_an_input_fails_tissue_identity():
    t1, t1c, flair, mask = _regression_case()
    for copy in (t1, t1c, 2.0 * t1c + 0.1):  # a relabelled input, also rescaled
        assert score_volume(copy.copy(), flair, mask, inputs=[t1, t1c])["identity_t"] < 0


def test_not_acquired_slices_do_not_change_a_perfect_prediction():
    rng = np.random.default_rng(5)
    raw = 50 + 100 * rng.random((6, 32, 32))
    mask = np.ones(raw.shape, bool)
    acquired = raw.copy()
    acquired[0] = 0  # the real target's slab missed the first slice
    acquired[5, :, :20] = 0  # and part of the last
    gt = normalize(acquired, mask)  # what evaluate gives: p99 units inside M
    region = target_mask(gt, mask)
    # the real target in its own p99 units inside M_t, and the anatomy it would have shown where it was not acquired
    perfect = np.where(region, acquired, raw) / p99(acquired, region)
    scores = score_volume(perfect, gt, mask)
    assert scores["nmse"] == pytest.approx(0.0, abs=1e-12) and scores["ssim"] == pytest.approx(1.0)
    assert scores["psnr"] > 100  # identical up to rounding
    assert scores["real_no_data"] == pytest.approx(1 - region.sum() / mask.sum())
    v2 = score_volume(perfect, gt, mask, protocol="v2")  # v2 scores the synthetic image against zeros there
    assert v2["nmse"] > 0.1 and v2["ssim"] < 0.95


def test_a_target_mostly_not_acquired_is_not_scored():
    gt = np.ones((4, 16, 16))
    gt[:3] = 0
    scores = score_volume(gt.copy(), gt, np.ones_like(gt, bool))
    assert scores["not_scored"] == 1.0 and math.isnan(scores["nmse"]) and scores["real_no_data"] == 0.75
    assert score_volume(gt.copy(), gt, np.ones_like(gt, bool), protocol="v2")["not_scored"] == 0.0


def test_unknown_protocol_is_refused():
    gt = np.ones((1, 8, 8))
    with pytest.raises(ValueError, match="v3, v2"):
        score_volume(gt, gt, gt > 0, protocol="v4")
