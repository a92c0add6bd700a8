"""The cohort workflow end to end on the two OpenMS patients (skull-stripped, four contrasts): their volumes as a
BraTS 2021 download (``_t1``, ``_t1ce``, ``_t2``, ``_flair``), ``prepare``, ``finetune`` with T2w added, and the
exported model.pt in ``collagan-impute impute``, the Slicer module's scene logic (slicer-core) and the web app.

Eight axial slices of each patient (conftest's ``openms_*`` fixtures, shared with test_train_finetune.py) keep the
whole module under a minute on two cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from CollaGANImputeLib import load_model
from CollaGANImputeLib.cli import main as cli_main
from CollaGANImputeLib.io import synthetic_label
from CollaGANImputeLib.provenance import sidecar_path

from training.collagan_train.cohort import cohort_folder

from .conftest import BRATS2021, FOUR_CONTRASTS, OPENMS, OPENMS_CASES, OPENMS_HELD_OUT, _digest

CASES, HELD_OUT, CONTRASTS = OPENMS_CASES, OPENMS_HELD_OUT, FOUR_CONTRASTS


def _finite_and_varied(voxels: np.ndarray) -> None:
    assert np.isfinite(voxels).all() and voxels.std() > 0 and np.count_nonzero(voxels) > 1000


@pytest.fixture(scope="module")
def model_path(openms_finetune) -> Path:
    return openms_finetune / "model.pt"


@pytest.fixture(scope="module")
def case_without_t2w(openms_cohort, tmp_path_factory) -> Path:
    """The held-out patient as prepared, its T2w left out: the case a user imputes the T2w of."""
    folder = tmp_path_factory.mktemp("case") / HELD_OUT
    folder.mkdir()
    for contrast in ("t1n", "t1c", "t2f", "seg"):
        name = f"{HELD_OUT}-{contrast}.nii.gz"
        shutil.copy2(openms_cohort / "complete" / HELD_OUT / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def cli_output(model_path, case_without_t2w, tmp_path_factory) -> Path:
    """``collagan-impute impute`` of the case with the fine-tuned model: the synthetic T2w it writes."""
    out = tmp_path_factory.mktemp("imputed")
    before = _digest(case_without_t2w)
    assert cli_main(["impute", str(case_without_t2w), "--model", str(model_path), "--out", str(out),
                     "--device", "cpu", "--threads", "1", "--runtime", "torch"]) == 0
    assert _digest(case_without_t2w) == before  # inputs are never modified
    return out / f"{HELD_OUT}-t2w-synthetic-collagan.nii.gz"


def test_prepare_reads_the_brats_2021_names_into_four_contrast_cases(openms_download, openms_cohort):
    summary = json.loads((openms_cohort / "cohort.json").read_text())
    assert summary["layout"] == ["brats2021"] and summary["contrasts"] == CONTRASTS
    assert summary["complete"] == list(CASES) and not summary["incomplete"]
    for case in CASES:
        folder = openms_cohort / "complete" / case
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{case}-{c}.nii.gz" for c in BRATS2021)
        for contrast, suffix in BRATS2021.items():  # _t2 became t2w, _flair t2f: voxels and grid kept
            written = sitk.ReadImage(str(folder / f"{case}-{contrast}.nii.gz"))
            source = sitk.ReadImage(str(openms_download / case / f"{case}_{suffix}.nii.gz"))
            assert written.GetSize() == source.GetSize() and written.GetOrigin() == source.GetOrigin()
            np.testing.assert_array_equal(sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(source))


def test_finetune_exports_a_four_contrast_model_with_t2w_added(model_path):
    model = load_model(model_path)
    assert model.card.contrasts == CONTRASTS and model.card.name == "collagan-openms-t1n-t1c-t2w-t2f"
    assert model.card.training["fine_tuned_from"]["contrasts_added"] == ["t2w"]
    assert model.card.metrics["held_out_cases"] == [HELD_OUT] and np.isfinite(model.card.metrics["t2w"]["nmse"])
    report = (model_path.parent / "report.md").read_text()
    assert report.startswith("# Fine-tuning collagan-lgg-t1n-t1c-t2f on OpenMS\n")
    assert "| t2w | fine-tuned | t1n+t1c+t2f |" in report


def test_finetune_reads_prepares_output_given_as_out_or_as_its_complete_cases(openms_cohort):
    complete = openms_cohort.resolve() / "complete"
    assert cohort_folder(openms_cohort) == cohort_folder(openms_cohort / "complete") == (complete, "OpenMS")
    assert cohort_folder(OPENMS) == (OPENMS.resolve(), "openms")  # a plain folder of case folders is itself


def test_the_cli_imputes_the_missing_t2w_labelled_synthetic(cli_output, case_without_t2w):
    assert sorted(p.name for p in cli_output.parent.iterdir()) == [
        f"{HELD_OUT}-t2w-synthetic-collagan.json", f"{HELD_OUT}-t2w-synthetic-collagan.nii.gz"]
    image = sitk.ReadImage(str(cli_output))
    assert image.GetMetaData("descrip").startswith("SYNTHETIC t2w") and synthetic_label(image)
    sidecar = json.loads(sidecar_path(cli_output).read_text())
    assert sidecar["collagan_synthetic"] == "true" and sidecar["collagan_target"] == "t2w"
    assert sidecar["collagan_inputs"] == "t1n,t1c,t2f"
    reference = sitk.ReadImage(str(case_without_t2w / f"{HELD_OUT}-t1n.nii.gz"))
    assert image.GetSize() == reference.GetSize() and image.GetOrigin() == reference.GetOrigin()
    _finite_and_varied(sitk.GetArrayFromImage(image))


def _slicer_core():
    """3D Slicer's libraries (slicer-core), as the tests marked slicer_core import them: skipped locally without
    them, an error in CI."""
    try:
        import slicer
        import slicer.util  # noqa: F401 - the real slicer/util.py

        slicer.vtkMRMLScene  # noqa: B018 - MRML is there, not some other package named 'slicer'
    except (ImportError, AttributeError) as error:
        if os.environ.get("CI"):
            raise RuntimeError(f"slicer-core is needed in CI (it is in the test extra): {error}") from error
        pytest.skip("slicer-core not installed (pip install -e '.[test]')")
    return slicer


@pytest.mark.slicer_core
def test_the_slicer_scene_logic_imputes_t2w_into_a_synthetic_node(model_path, case_without_t2w, cli_output):
    slicer = _slicer_core()
    from CollaGANImputeLib.scene.logic import SceneLogic, new_scene

    logic = SceneLogic(new_scene())
    nodes = {c: logic.readVolume(case_without_t2w / f"{HELD_OUT}-{c}.nii.gz") for c in ("t1n", "t1c", "t2f")}
    model = logic.loadModel(str(model_path))
    assert list(model.card.contrasts) == CONTRASTS
    inputs = logic.guessInputNodes(CONTRASTS)
    assert all(inputs[c] is n for c, n in nodes.items()) and inputs["t2w"] is None
    assert logic.defaultTarget(CONTRASTS, inputs) == "t2w"
    # The default target (the missing T2w), on the runtime the command line used: the same result, voxel for voxel.
    node = logic.imputeNodes(inputs, model=model, device="cpu", runtime="torch")
    assert node.GetAttribute("collagan_synthetic") == "true" and node.GetAttribute("collagan_target") == "t2w"
    assert node.GetDescription().startswith("SYNTHETIC t2w") and logic.isSynthetic(node)
    _finite_and_varied(slicer.util.arrayFromVolume(node))
    # Slicer's reader may order the voxels of a file differently (its IJK axes): compare where they lie.
    from CollaGANImputeLib.scene.nodes import image_from_node

    written = sitk.ReadImage(str(cli_output))
    shown = sitk.Resample(image_from_node(node), written, sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(shown), sitk.GetArrayFromImage(written))


def test_the_web_app_offers_t2w_with_the_fine_tuned_model(model_path, case_without_t2w):
    web = pytest.importorskip("CollaGANImputeLib.web", reason="the web extra is needed: pip install -e '.[web]'")
    pytest.importorskip("trame_slicer", reason="the web extra is needed: pip install -e '.[web]'")
    from trame.app import get_server

    app = web.WebApp(model=str(model_path), device="cpu", precision="fp32",
                     server=get_server("collagan_impute_cohort", client_type="vue3"))
    try:
        assert app.state.contrasts == CONTRASTS and "t2w" in app.state.status
        files = [case_without_t2w / f"{HELD_OUT}-{c}.nii.gz" for c in ("t1n", "t1c", "t2f")]
        # The case uploaded as the page sends it, without its T2w: T2w is the target proposed.
        asyncio.run(app.on_uploads([{"name": f.name, "content": f.read_bytes(), "size": f.stat().st_size}
                                    for f in files]))
        assert not app.state.error and app.state.target == "t2w" and app.state.input_t2w is None
        assert all(app.state[f"input_{c}"] for c in ("t1n", "t1c", "t2f"))
    finally:
        app.cleanup()
