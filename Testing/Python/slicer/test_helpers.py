"""CollaGANImputeLib.scene.{names,job,comparison}: the Slicer-free helpers the Slicer panel relies on, run for real
on the bundled sample case."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CollaGANImputeLib import Cancelled, InputError, impute, load_model, read_case
from CollaGANImputeLib.metrics import score_volume
from CollaGANImputeLib.scene import comparison as helpers_comparison
from CollaGANImputeLib.scene import names as helpers
from CollaGANImputeLib.scene.comparison import compare_to_reference
from CollaGANImputeLib.scene.job import ChunkedImputation
from CollaGANImputeLib.scene.names import classify_contrast, default_target, match_volumes

CONTRASTS = ["t1n", "t1c", "t2f"]


@pytest.mark.parametrize("name, expected", [
    ("TCGA-HT-7882-t1n", "t1n"), ("TCGA-HT-7882-t1c", "t1c"), ("TCGA-HT-7882-t2f", "t2f"),
    ("T1", "t1n"), ("t1w", "t1n"), ("T1_MPRAGE", "t1n"), ("MPRAGE", "t1n"), ("Ax T1 SE", "t1n"),
    ("T1 precontrast", "t1n"), ("T1 pre", "t1n"), ("BraTS20_001_t1", "t1n"),
    ("T1Gd", "t1c"), ("T1CE", "t1c"), ("t1_post", "t1c"), ("T1+C", "t1c"), ("MPRAGE post Gd", "t1c"),
    ("post Gd", "t1c"), ("BraTS20_001_t1ce", "t1c"),
    ("T2", "t2w"), ("t2w", "t2w"), ("BraTS20_001_t2", "t2w"),
    ("FLAIR", "t2f"), ("T2-FLAIR", "t2f"), ("t2f", "t2f"), ("flair_ax", "t2f"),
    ("TCGA-HT-7882-seg", None), ("MRHead", None), ("T2*", None), ("SWI", None), ("Posterior fossa", None),
    ("t1c (synthetic, CollaGAN)", None), ("", None),
])
def test_classify_contrast(name, expected):
    assert classify_contrast(name) == expected


def test_match_volumes_fills_each_contrast_once_and_skips_synthetic():
    names = ["MRHead", "t1c (synthetic, CollaGAN)", "T1 post Gd", "T2-FLAIR", "T1w MPRAGE", "case-seg"]
    assert match_volumes(names, CONTRASTS) == {"t1n": "T1w MPRAGE", "t1c": "T1 post Gd", "t2f": "T2-FLAIR"}
    # The synthetic volume is never an input, even when it is the only T1c.
    assert match_volumes(["t1c (synthetic, CollaGAN)", "T1"], CONTRASTS) == {"t1n": "T1", "t1c": None, "t2f": None}
    # Exclusions (e.g. nodes carrying collagan_synthetic=true under another name) are honoured.
    assert match_volumes(["T1", "FLAIR"], CONTRASTS, exclude={"FLAIR"})["t2f"] is None


def test_match_volumes_prefers_the_exact_contrast_suffix_and_uses_model_names():
    names = ["T1 MPRAGE", "case-t1n", "FLAIR"]
    assert match_volumes(names, CONTRASTS)["t1n"] == "case-t1n"
    brats21 = ["BraTS_t1", "BraTS_t1ce", "BraTS_flair", "BraTS_t2"]
    assert match_volumes(brats21, ["t1", "t1ce", "t2", "flair"]) == {
        "t1": "BraTS_t1", "t1ce": "BraTS_t1ce", "t2": "BraTS_t2", "flair": "BraTS_flair"}


def test_default_target():
    assert default_target(CONTRASTS, {"t1n": "a", "t1c": None, "t2f": "b"}) == "t1c"
    assert default_target(CONTRASTS, {"t1n": None, "t1c": "a", "t2f": "b"}) == "t1n"
    assert default_target(CONTRASTS, {"t1n": "a", "t1c": "b", "t2f": "c"}) == "t1c"  # complete: the T1c
    assert default_target(["t1", "t2", "pd"], {"t1": 1, "t2": 2, "pd": 3}) == "pd"
    assert default_target([], {}) is None


@pytest.fixture(scope="module")
def sample(sample_case):
    images = read_case(sample_case, CONTRASTS)
    lesion = sitk.ReadImage(str(sample_case / f"{sample_case.name}-seg.nii.gz"))
    return images, lesion


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return load_model(tiny_model_path)


@pytest.fixture(scope="module")
def finished_job(sample, model):
    images, _ = sample
    job = ChunkedImputation({"t1n": images["t1n"], "t2f": images["t2f"]}, model, "t1c", device="cpu")
    fractions = [job.progress]
    steps = 0
    while not job.step():
        steps += 1
        fractions.append(job.progress)
    fractions.append(job.progress)
    return job, steps, fractions


def test_chunked_imputation_equals_the_core_pipeline(sample, model, finished_job):
    images, _ = sample
    job, steps, fractions = finished_job
    expected = impute({"t1n": images["t1n"], "t2f": images["t2f"]}, model, targets=["t1c"], device="cpu")
    produced = job.result.images["t1c"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(produced), sitk.GetArrayFromImage(expected.images["t1c"]))
    assert produced.GetSize() == images["t1n"].GetSize()
    assert produced.GetOrigin() == images["t1n"].GetOrigin() and produced.GetDirection() == images["t1n"].GetDirection()
    # Many short steps (one preparation + 2 slices each), progress only ever grows, to exactly 1.
    assert steps == 1 + math.ceil(images["t1n"].GetSize()[2] / 2)
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    labels = helpers.synthetic_attributes(produced)
    assert labels["collagan_synthetic"] == "true" and labels["collagan_inputs"] == "t1n,t2f"
    assert labels["collagan_model"] == model.card.name and labels["collagan_model_sha256"] == model.sha256
    banner = helpers.synthetic_banner(labels)
    assert "SYNTHETIC" in banner and "t1n + t2f" in banner and "not acquired" in banner
    assert helpers.synthetic_node_name("t1c") == "t1c (synthetic, CollaGAN)"


def test_chunked_imputation_zeros_outside_the_head_as_the_core_does(sample):
    """The bundled model is trained inside the head only (card: outside_head "zero"): the Slicer job must
    deliver what the CLI delivers, 0 outside the inputs' head mask, not the network's untrained background."""
    from CollaGANImputeLib import default_model

    model = default_model()
    assert model.card.outside_head == "zero"
    images, _ = sample
    middle = images["t1n"].GetSize()[2] // 2
    inputs = {c: images[c][:, :, middle - 2:middle + 2] for c in ("t1n", "t2f")}  # four slices: quick
    job = ChunkedImputation(inputs, model, "t1c", device="cpu")
    job.run()
    expected = impute(inputs, model, targets=["t1c"], device="cpu")
    produced = job.result.arrays["t1c"]
    np.testing.assert_array_equal(produced, expected.arrays["t1c"])
    assert not produced[~job.result.case.mask].any() and produced[job.result.case.mask].any()


def test_cancel_stops_before_any_result(sample, model):
    images, _ = sample
    job = ChunkedImputation({"t1n": images["t1n"], "t2f": images["t2f"]}, model, "t1c", device="cpu")
    assert job.step() is False and job.step() is False
    done_before = job.slices_done
    job.cancel()
    with pytest.raises(Cancelled):
        job.step()
    assert job.result is None and not job.done and job.slices_done == done_before


def test_bad_requests_are_refused_in_plain_words(sample, model):
    images, _ = sample
    with pytest.raises(InputError, match="not contrasts of model"):
        ChunkedImputation({"t2w": images["t1n"]}, model, "t1c")
    with pytest.raises(InputError, match="not one of the model's contrasts"):
        ChunkedImputation({"t1n": images["t1n"]}, model, "pd")
    with pytest.raises(InputError, match="No input left"):
        ChunkedImputation({"t1c": images["t1c"]}, model, "t1c")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA was requested"):
            ChunkedImputation({"t1n": images["t1n"]}, model, "t1c", device="cuda")


def test_compare_scores_as_the_core_does(sample, finished_job):
    images, lesion = sample
    job = finished_job[0]
    synthetic = job.result.images["t1c"]
    inputs = {"t1n": images["t1n"], "t2f": images["t2f"]}
    with_case = compare_to_reference(synthetic, images["t1c"], {}, lesion=lesion, case=job.result.case)
    recomputed = compare_to_reference(synthetic, images["t1c"], inputs, lesion=lesion)
    case = job.result.case
    region = sitk.GetArrayFromImage(sitk.DICOMOrient(lesion, "LPS")) > 0
    direct = score_volume(job.result.arrays["t1c"], case.normalize_like_inputs(images["t1c"]), case.mask, region,
                          inputs=[case.arrays["t1n"], case.arrays["t2f"]])
    assert {"identity_t", "identity", "lesion_kept"} <= set(direct)  # the fidelity checks, where computable
    for key, value in direct.items():
        assert with_case.scores[key] == pytest.approx(value, rel=1e-9, nan_ok=True), key
        assert recomputed.scores[key] == pytest.approx(value, rel=1e-9, nan_ok=True), key
    assert with_case.scores["lesion_voxels"] > 0 and np.isfinite(with_case.scores["lesion_ssim"])
    error = with_case.error_image
    assert error.GetSize() == images["t1n"].GetSize() and error.GetOrigin() == images["t1n"].GetOrigin()
    assert error.GetMetaData("collagan_error_map")
    assert with_case.slice_ssim.shape == (images["t1n"].GetSize()[2],) and with_case.error_limit > 0


def test_compare_of_a_perfect_prediction(sample, finished_job):
    images, _ = sample
    case = finished_job[0].result.case
    perfect = case.to_image(case.normalize_like_inputs(images["t1c"]))
    result = compare_to_reference(perfect, images["t1c"], {}, case=case)
    assert result.scores["nmse"] == 0.0 and math.isinf(result.scores["psnr"])
    assert result.scores["ssim"] == pytest.approx(1.0)
    assert not sitk.GetArrayViewFromImage(result.error_image).any()
    assert math.isnan(result.scores["lesion_nmse"])  # no lesion given


def test_compare_needs_inputs_for_the_mask(sample):
    images, _ = sample
    with pytest.raises(InputError, match="mask"):
        compare_to_reference(images["t1c"], images["t1c"], {})


def test_score_table_and_csv(tmp_path):
    scores = {"lesion_voxels": 0.0, "nmse": 0.0123456, "psnr": float("inf"), "ssim": 0.9, "lesion_nmse": float("nan"),
              "lesion_ssim": float("nan"), "identity": -0.25, "rho_u": 0.5}
    rows = helpers_comparison.score_table(scores)
    # One row per score, the labelled ones in display order, a key the table does not know under its own name.
    assert [r[0] for r in rows] == ["NMSE", "PSNR (dB)", "SSIM", "Voxel identity I (diagnostic)", "Lesion NMSE",
                                    "Lesion SSIM",
                                    "Lesion voxels", "rho_u"]
    assert rows[0] == ("NMSE", "0.0123", "lower is better")
    assert rows[1][1] == "inf" and rows[3][1] == "-0.2500" and rows[4][1] == "n/a" and rows[6][1] == "0"
    assert rows[7] == ("rho_u", "0.5000", "")
    path = helpers_comparison.write_scores_csv(tmp_path / "out" / "scores.csv", scores, context={"model": "tiny"})
    lines = list(csv.reader(path.open()))
    assert lines[0] == ["metric", "value"] and ["model", "tiny"] in lines
    assert dict(lines[1:])["nmse"] == repr(0.0123456) and dict(lines[1:])["lesion_nmse"] == "nan"
    assert [line[0] for line in lines[2:]] == helpers_comparison.score_keys(scores)  # every score, table order
    assert [p.name for p in path.parent.iterdir()] == ["scores.csv"]  # no temporary file left behind
    with pytest.raises(InputError, match=".csv"):
        helpers_comparison.write_scores_csv(tmp_path / "scores.txt", scores)


def test_slice_ssim_table_drops_slices_without_head():
    table = helpers_comparison.slice_ssim_table([float("nan"), 0.5, 0.7, float("nan")])
    np.testing.assert_array_equal(table, [[1.0, 0.5], [2.0, 0.7]])
