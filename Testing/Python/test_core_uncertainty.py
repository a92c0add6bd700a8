"""Uncertainty maps: the v2 uncertainty scores (rho_U, AUROC_U) and the model-disagreement estimate."""

from __future__ import annotations

import numpy as np
import pytest
from CollaGANImputeLib import load_model
from CollaGANImputeLib.metrics import (
    auroc,
    error_by_uncertainty_quantile,
    spearman,
    uncertainty_scores,
)
from CollaGANImputeLib.uncertainty import (
    Member,
    disagreement,
    ensemble_members,
    estimate_uncertainty,
    member_prediction,
    uncertainty_metadata,
)
from scipy.stats import spearmanr


def test_spearman_matches_scipy_with_ties_and_region():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, size=(3, 8, 8)).astype(np.float32)  # many ties
    b = a + rng.normal(0, 1.5, size=a.shape)
    region = rng.random(a.shape) > 0.3
    assert spearman(a, b, region) == pytest.approx(spearmanr(a[region], b[region]).statistic, abs=1e-12)
    assert np.isnan(spearman(np.ones_like(a), b, region))  # constant U: no correlation defined


def test_auroc_equals_pairwise_count():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 4, size=60).astype(np.float64)  # ties count one half
    positive = rng.random(60) > 0.6
    region = np.ones(60, dtype=bool)
    pos, neg = scores[positive], scores[~positive]
    expected = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(scores, positive, region) == pytest.approx(expected)
    assert auroc(positive.astype(float), positive, region) == 1.0
    assert auroc(-positive.astype(float), positive, region) == 0.0
    assert np.isnan(auroc(scores, np.zeros(60, bool), region))  # no wrong voxel: undefined


def test_uncertainty_scores_reward_a_map_that_tracks_the_error():
    rng = np.random.default_rng(3)
    shape = (4, 16, 16)
    gt = rng.random(shape).astype(np.float32)
    error = rng.exponential(0.15, size=shape).astype(np.float32)
    pred = gt + error * rng.choice([-1, 1], size=shape)
    mask = np.ones(shape, dtype=bool)
    lesion = np.zeros(shape, dtype=bool)
    lesion[1:3, 4:12, 4:12] = True
    good = uncertainty_scores(error + rng.normal(0, 0.02, shape), pred, gt, mask, lesion=lesion)
    noise = uncertainty_scores(rng.random(shape), pred, gt, mask, lesion=lesion)
    assert good["rho_u"] > 0.9 and good["auroc_u"] > 0.95 and good["lesion_auroc_u"] > 0.9
    assert abs(noise["rho_u"]) < 0.15 and abs(noise["auroc_u"] - 0.5) < 0.1
    assert 0 < good["error_rate"] < 1
    small = uncertainty_scores(error, pred, gt, mask, lesion=np.zeros(shape, bool))
    assert np.isnan(small["lesion_rho_u"]) and np.isnan(small["lesion_auroc_u"])  # under 50 lesion voxels


def test_error_by_uncertainty_deciles_rises_for_a_tracking_map():
    rng = np.random.default_rng(4)
    error = rng.exponential(0.1, size=(2, 30, 30))
    gt = np.zeros_like(error)
    mean_error, mean_u = error_by_uncertainty_quantile(error, error, gt, np.ones(error.shape, bool))
    assert mean_error.shape == (10,) and np.all(np.diff(mean_error) > 0) and np.all(np.diff(mean_u) > 0)


def test_members_and_disagreement():
    assert ensemble_members(["t1n", "t2f"]) == [Member(("t1n",)), Member(("t2f",)), Member(("t1n", "t2f"), True)]
    assert ensemble_members(["t1n"], flip=False) == []
    assert len(ensemble_members(["a", "b", "c"], flip=False)) == 6  # 3 pairs + 3 singles
    mask = np.ones((1, 2, 2), dtype=bool)
    mask[0, 0, 0] = False
    u = disagreement(np.zeros((1, 2, 2)), [np.ones((1, 2, 2)), -np.ones((1, 2, 2))], mask)
    assert u.dtype == np.float32 and u[0, 0, 0] == 0 and np.all(u[0].ravel()[1:] == 1)


def test_estimate_uncertainty_with_a_real_torchscript_model(tiny_model_path):
    model = load_model(tiny_model_path)
    rng = np.random.default_rng(5)
    arrays = {c: rng.random((3, 20, 24)).astype(np.float32) for c in ("t1n", "t2f")}
    prediction = member_prediction(model, arrays, "t1c", Member(("t1n", "t2f")), device="cpu", precision="fp32")
    seen = []
    u = estimate_uncertainty(model, arrays, "t1c", prediction, device="cpu", precision="fp32",
                             progress=lambda done, total: seen.append((done, total)))
    members = [member_prediction(model, arrays, "t1c", m, device="cpu", precision="fp32")
               for m in ensemble_members(["t1n", "t2f"])]
    np.testing.assert_allclose(u, np.mean([np.abs(p - prediction) for p in members], axis=0), atol=1e-6)
    assert u.shape == prediction.shape and u.max() > 0
    assert seen[-1] == (9, 9)  # three members of three slices
    # The mirrored member is the model's prediction on the mirrored head, mirrored back.
    mirrored = member_prediction(model, arrays, "t1c", Member(("t1n", "t2f"), True), device="cpu", precision="fp32")
    flipped_inputs = {c: a[:, :, ::-1].copy() for c, a in arrays.items()}
    direct = member_prediction(model, flipped_inputs, "t1c", Member(("t1n", "t2f")), device="cpu", precision="fp32")
    np.testing.assert_allclose(mirrored, direct[:, :, ::-1], atol=1e-6)
    with pytest.raises(ValueError, match="at least two inputs or mirroring"):
        estimate_uncertainty(model, {"t1n": arrays["t1n"]}, "t1c", prediction, members=[], device="cpu")


def test_uncertainty_labels_say_what_it_is():
    labels = uncertainty_metadata({"collagan_synthetic": "true", "collagan_target": "t1c", "other": "x"},
                                  ensemble_members(["t1n", "t2f"]))
    assert labels["collagan_synthetic"] == "false" and labels["collagan_uncertainty"] == "true"
    assert "not an image" in labels["collagan_kind"] and labels["collagan_target"] == "t1c"
    assert "other" not in labels and "t1n+t2f mirrored" in labels["collagan_uncertainty_members"]
