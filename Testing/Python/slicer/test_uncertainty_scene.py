"""The uncertainty map in an MRML scene (slicer-core): the Slicer job's stepped passes give the core's map, the
node is labeled and displayed as an overlay with a legend, and it is never proposed as an input."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_core_support import crop_case, require_slicer_core

slicer = require_slicer_core()
from CollaGANImputeLib import impute, load_model  # noqa: E402
from CollaGANImputeLib.scene.logic import SceneLogic, new_scene  # noqa: E402
from CollaGANImputeLib.uncertainty import DISPLAY_RANGE, DISPLAY_THRESHOLD, LEGEND_TITLE  # noqa: E402

pytestmark = pytest.mark.slicer_core
CASE = "TCGA-HT-7882"


@pytest.fixture(scope="module")
def small_case(tmp_path_factory, sample_case):
    return crop_case(sample_case, tmp_path_factory.mktemp("small") / CASE, slice(13, 19))


def test_stepped_job_with_uncertainty_equals_the_core_and_adds_an_overlay(tiny_model_path, small_case):
    logic = SceneLogic(new_scene())
    tiny = load_model(tiny_model_path)
    nodes = {c: logic.readVolume(small_case / f"{CASE}-{c}.nii.gz") for c in ("t1n", "t1c", "t2f")}
    job = logic.startImputation({"t1n": nodes["t1n"], "t2f": nodes["t2f"]}, tiny, "t1c", device="cpu",
                                precision="fp32", uncertainty=True)
    assert job.passes == 4  # the imputation and three members
    progress = [job.progress]
    while not job.step():
        progress.append(job.progress)
    assert progress == sorted(progress) and job.progress == 1.0
    images = {c: sitk.ReadImage(str(small_case / f"{CASE}-{c}.nii.gz")) for c in ("t1n", "t2f")}
    expected = impute(images, tiny, targets=["t1c"], device="cpu", precision="fp32", uncertainty=True)
    np.testing.assert_array_equal(job.result.arrays["t1c"], expected.arrays["t1c"])
    np.testing.assert_allclose(job.result.uncertainty_arrays["t1c"], expected.uncertainty_arrays["t1c"], atol=1e-6)

    node = logic.addResultToScene(job)
    overlay = logic.uncertaintyNodeFor(node)
    assert overlay is not None and overlay.GetName() == "t1c uncertainty (CollaGAN)"
    np.testing.assert_allclose(slicer.util.arrayFromVolume(overlay), expected.uncertainty_arrays["t1c"], atol=1e-6)
    assert overlay.GetAttribute("collagan_uncertainty") == "true" and overlay.GetAttribute("collagan_synthetic") \
        == "false"
    assert "not an image" in overlay.GetDescription() and not logic.isSynthetic(overlay)
    display = overlay.GetDisplayNode()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx(DISPLAY_RANGE)
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(DISPLAY_THRESHOLD)
    assert display.GetColorNode().GetName() == "Inferno"
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(overlay)
    assert legend is not None and legend.GetTitleText() == LEGEND_TITLE and legend.GetVisibility()
    text = logic.uncertaintyLegendText(node)
    assert "disagree by more than 0.2 of the 99th percentile here" in text and "not a confidence map" in text
    # Neither the synthetic volume nor its uncertainty map is proposed as an input.
    guessed = logic.guessInputNodes(["t1n", "t1c", "t2f"])
    assert guessed == {"t1n": nodes["t1n"], "t1c": nodes["t1c"], "t2f": nodes["t2f"]}
    # Without the option: no map, no reference.
    plain = logic.imputeNodes({"t1n": nodes["t1n"], "t2f": nodes["t2f"]}, model=tiny, target="t1c", device="cpu")
    assert logic.uncertaintyNodeFor(plain) is None


def test_uncertainty_node_is_not_guessed_as_an_input_even_when_named_like_one(tiny_model_path, small_case):
    logic = SceneLogic(new_scene())
    tiny = load_model(tiny_model_path)
    t1n = logic.readVolume(small_case / f"{CASE}-t1n.nii.gz")
    t2f = logic.readVolume(small_case / f"{CASE}-t2f.nii.gz")
    node = logic.imputeNodes({"t1n": t1n, "t2f": t2f}, model=tiny, target="t1c", device="cpu", uncertainty=True)
    overlay = logic.uncertaintyNodeFor(node)
    overlay.SetName(f"{CASE}-t1c")  # renamed by a user to look like an acquired T1+Gd
    assert logic.guessInputNodes(["t1n", "t1c", "t2f"])["t1c"] is None
