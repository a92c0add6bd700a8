"""Uncertainty maps: the v2 uncertainty scores (rho_U, AUROC_U) and the model-disagreement estimate."""

from __future__ import annotations

import numpy as np
import pytest
from CollaGANImputeLib import load_model
from CollaGANImputeLib.uncertainty import (
    Member,
    disagreement,
    ensemble_members,
    estimate_uncertainty,
    member_prediction,
    uncertainty_metadata,
)
from CollaGANImputeLib.uncertainty_metrics import (
    auroc,
    error_by_uncertainty_quantile,
    spearman,
    uncertainty_scores,
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
    u = disagreement(np.zeros((1, 2, 2)), [np.ones((1, 2, 2)), -np.ones((1, 2, 2))], mask, smooth=0)
    assert u.dtype == np.float32 and u[0, 0, 0] == 0 and np.all(u[0].ravel()[1:] == 1)
    # Smoothing spreads a one-voxel disagreement in-plane only, and never outside the mask.
    spike = np.zeros((3, 9, 9), dtype=np.float32)
    spike[1, 4, 4] = 1.0
    inside = np.ones(spike.shape, dtype=bool)
    inside[:, :, 0] = False
    smooth = disagreement(np.zeros_like(spike), [spike], inside, smooth=1.0)
    assert smooth[1, 4, 4] < 1 and smooth[1, 4, 5] > 0 and not smooth[0].any() and not smooth[2].any()
    assert not smooth[:, :, 0].any() and smooth.sum() == pytest.approx(1.0, abs=1e-3)


def test_estimate_uncertainty_with_a_real_torchscript_model(tiny_model_path):
    model = load_model(tiny_model_path)
    rng = np.random.default_rng(5)
    arrays = {c: rng.random((3, 20, 24)).astype(np.float32) for c in ("t1n", "t2f")}
    prediction = member_prediction(model, arrays, "t1c", Member(("t1n", "t2f")), device="cpu", precision="fp32")
    seen = []
    u = estimate_uncertainty(model, arrays, "t1c", prediction, device="cpu", precision="fp32", smooth=0,
                             progress=lambda done, total: seen.append((done, total)))
    members = [member_prediction(model, arrays, "t1c", m, device="cpu", precision="fp32")
               for m in ensemble_members(["t1n", "t2f"])]
    np.testing.assert_allclose(u, np.mean([np.abs(p - prediction) for p in members], axis=0), atol=1e-6)
    smoothed = estimate_uncertainty(model, arrays, "t1c", prediction, device="cpu", precision="fp32")
    np.testing.assert_allclose(smoothed, disagreement(prediction, members), atol=1e-6)
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


# ------------------------------------------------------------------------- hooks: impute, impute_case, CLI


def _phantom_images():
    from core_fixtures import head_phantom, make_image

    return {c: make_image(head_phantom(seed=s, scale=100 + 40 * s)) for s, c in enumerate(("t1n", "t2f"))}


def test_impute_returns_a_labeled_uncertainty_map_per_target(tiny_model_path):
    from CollaGANImputeLib import impute

    model = load_model(tiny_model_path)
    seen = []
    result = impute(_phantom_images(), model, targets=["t1c"], device="cpu", precision="fp32", uncertainty=True,
                    progress=lambda done, total: seen.append((done, total)))
    image, u = result.uncertainty["t1c"], result.uncertainty_arrays["t1c"]
    synthetic, case = result.images["t1c"], result.cases["t1c"]
    assert image.GetSize() == synthetic.GetSize() and image.GetOrigin() == synthetic.GetOrigin()
    assert image.GetSpacing() == synthetic.GetSpacing() and image.GetDirection() == synthetic.GetDirection()
    assert image.GetMetaData("collagan_uncertainty") == "true" and image.GetMetaData("collagan_synthetic") == "false"
    assert image.GetMetaData("collagan_inputs") == "t1n,t2f" and "p99" in image.GetMetaData("collagan_units")
    assert u.max() > 0 and not u[~case.mask].any()  # defined inside the head mask only
    expected = estimate_uncertainty(model, case.arrays, "t1c", result.arrays["t1c"], case.mask, device="cpu",
                                    precision="fp32")
    np.testing.assert_allclose(u, expected, atol=1e-6)
    assert seen[-1] == (48, 48)  # 12 slices: the imputation and three members
    plain = impute(_phantom_images(), model, targets=["t1c"], device="cpu", precision="fp32")
    assert plain.uncertainty == {} and np.array_equal(plain.arrays["t1c"], result.arrays["t1c"])


def test_impute_case_writes_the_map_beside_the_volume_all_or_nothing(tiny_model_path, copied_sample, tmp_path,
                                                                     monkeypatch):
    import json

    import CollaGANImputeLib.pipeline as pipeline
    import SimpleITK as sitk
    from CollaGANImputeLib import impute_case
    from CollaGANImputeLib.io import find_case_files

    (copied_sample / "TCGA-HT-7882-t1c.nii.gz").unlink()
    model = load_model(tiny_model_path)
    out = tmp_path / "out"
    written = impute_case(copied_sample, model, out_dir=out, device="cpu", uncertainty=True, montage=True)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["TCGA-HT-7882-t1c-synthetic-collagan.json", "TCGA-HT-7882-t1c-synthetic-collagan.nii.gz",
                     "TCGA-HT-7882-t1c-synthetic-collagan.png", "TCGA-HT-7882-t1c-uncertainty-collagan.json",
                     "TCGA-HT-7882-t1c-uncertainty-collagan.nii.gz"]
    u = sitk.ReadImage(str(out / "TCGA-HT-7882-t1c-uncertainty-collagan.nii.gz"))
    assert u.GetMetaData("descrip").startswith("UNCERTAINTY of synthetic t1c") and "not an image" in \
        u.GetMetaData("descrip")
    synthetic = sitk.ReadImage(str(written["t1c"]))
    assert u.GetSize() == synthetic.GetSize() and u.GetOrigin() == synthetic.GetOrigin()
    sidecar = json.loads((out / "TCGA-HT-7882-t1c-uncertainty-collagan.json").read_text())
    assert sidecar["collagan_uncertainty"] == "true" and sidecar["model"]["sha256"] == model.sha256
    assert find_case_files(out, ["t1n", "t1c", "t2f"]) == {}  # outputs are never taken as inputs

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "stage_uncertainty", broken)
    again = tmp_path / "again"
    with pytest.raises(OSError):
        impute_case(copied_sample, model, out_dir=again, device="cpu", uncertainty=True)
    assert not again.exists() or not any(again.iterdir())  # no synthetic volume without its map


def test_cli_uncertainty_flag(tiny_model_path, copied_sample, tmp_path, capsys):
    from CollaGANImputeLib.cli import EXIT_OK, main

    (copied_sample / "TCGA-HT-7882-t2f.nii.gz").unlink()
    out = tmp_path / "cli"
    assert main(["impute", str(copied_sample), "--model", str(tiny_model_path), "--out", str(out), "--device", "cpu",
                 "--uncertainty"]) == EXIT_OK
    assert (out / "TCGA-HT-7882-t2f-uncertainty-collagan.nii.gz").is_file()
    assert "uncertainty map of the synthetic t2f, not an image" in capsys.readouterr().out
