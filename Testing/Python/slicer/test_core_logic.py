"""The Slicer module's logic (CollaGANImputeLib.scene.logic.SceneLogic) on 3D Slicer's own libraries (slicer-core):
volumes read by Slicer's reader, imputation from nodes against the CLI and the core, compare against
``collagan-impute evaluate``'s scores, the parameter node through a .mrml file, input guessing, the docs snippet."""

from __future__ import annotations

import contextlib
import csv
import io
import re
import threading

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_core_support import crop_case, require_slicer_core

slicer = require_slicer_core()
import vtk  # noqa: E402
from CollaGANImputeLib import Cancelled, default_model, impute, load_model  # noqa: E402
from CollaGANImputeLib.cli import main as cli_main  # noqa: E402
from CollaGANImputeLib.errors import InputError  # noqa: E402
from CollaGANImputeLib.evaluate import score_imputation  # noqa: E402
from CollaGANImputeLib.scene.comparison import score_table, slice_ssim_table  # noqa: E402
from CollaGANImputeLib.scene.logic import ERROR_COLOR_NAME, SceneLogic, new_scene  # noqa: E402
from CollaGANImputeLib.scene.names import synthetic_node_name  # noqa: E402
from CollaGANImputeLib.scene.nodes import image_from_node, node_from_image  # noqa: E402
from core_fixtures import REPO  # noqa: E402

pytestmark = pytest.mark.slicer_core
CASE = "TCGA-HT-7882"
FIDELITY_KEYS = {"identity_t", "identity", "lesion_kept", "lesion_contrast_real", "lesion_contrast_pred"}


def _matrix(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _read(logic: SceneLogic, folder, contrasts=("t1n", "t1c", "t2f")) -> dict:
    nodes = {c: logic.readVolume(folder / f"{folder.name}-{c}.nii.gz") for c in contrasts}
    nodes["seg"] = logic.readVolume(folder / f"{folder.name}-seg.nii.gz", labelMap=True)
    return nodes


@pytest.fixture
def logic():
    return SceneLogic(new_scene())


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return load_model(tiny_model_path)


@pytest.fixture(scope="module")
def bundled():
    return default_model()


@pytest.fixture(scope="module")
def small_case(tmp_path_factory, sample_case):
    """Six axial slices of the sample case through the lesion: the bundled model runs them in about a second."""
    return crop_case(sample_case, tmp_path_factory.mktemp("small") / CASE, slice(13, 19))


def test_sample_case_is_read_by_slicers_reader(logic):
    nodes = logic.loadSampleCase()
    assert {c: n.GetName() for c, n in nodes.items()} == {c: f"{CASE}-{c}" for c in ("t1n", "t1c", "t2f", "seg")}
    assert nodes["seg"].IsA("vtkMRMLLabelMapVolumeNode") and not nodes["t1n"].IsA("vtkMRMLLabelMapVolumeNode")
    for node in nodes.values():
        storage = node.GetStorageNode()
        assert storage.IsA("vtkMRMLVolumeArchetypeStorageNode") and storage.GetFileName().endswith(".nii.gz")
        assert slicer.util.arrayFromVolume(node).shape == (32, 256, 256)


def test_impute_nodes_equals_the_cli_on_the_same_files(logic, bundled, tiny, small_case, tmp_path):
    """From nodes read by Slicer's reader, the bundled model: what `collagan-impute impute` writes, voxel for voxel."""
    nodes = _read(logic, small_case)
    before = logic.scene.GetNumberOfNodes()
    fractions = []
    node = logic.imputeNodes({"t1n": nodes["t1n"], "t2f": nodes["t2f"]}, model=bundled, target="t1c",
                             device="cpu", progress=fractions.append)
    assert logic.scene.GetNumberOfNodes() > before and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert cli_main(["impute", "--input", f"t1n={small_case / f'{CASE}-t1n.nii.gz'}", "--input",
                     f"t2f={small_case / f'{CASE}-t2f.nii.gz'}", "--target", "t1c", "--device", "cpu",
                     "--out", str(tmp_path)]) == 0
    written = sitk.ReadImage(str(tmp_path / f"{CASE}-t1c-synthetic-collagan.nii.gz"))
    voxels = slicer.util.arrayFromVolume(node)
    assert voxels.dtype == np.float32 and voxels[voxels != 0].size > 1000
    np.testing.assert_array_equal(voxels, sitk.GetArrayViewFromImage(written))  # same precision: bit for bit
    np.testing.assert_allclose(_matrix(node), _matrix(nodes["t1n"]), atol=1e-12)  # the input's geometry
    assert node.GetName() == synthetic_node_name("t1c") == "t1c (synthetic, CollaGAN)"
    assert node.GetDescription() == written.GetMetaData("descrip")  # the CLI's header description, word for word
    assert "SYNTHETIC" in node.GetDescription()
    attributes = {name: node.GetAttribute(name) for name in node.GetAttributeNames()}
    assert attributes["collagan_synthetic"] == "true" and attributes["collagan_target"] == "t1c"
    assert attributes["collagan_inputs"] == "t1n,t2f" and attributes["collagan_model"] == bundled.card.name
    assert attributes["collagan_model_sha256"] == bundled.sha256 and attributes["collagan_created"]
    assert logic.isSynthetic(node) and "not acquired" in logic.bannerText(node)
    # A second result gets its own name; the first is left alone.
    again = logic.imputeNodes({"t1n": nodes["t1n"], "t2f": nodes["t2f"]}, model=tiny, target="t1c", device="cpu")
    assert again.GetName() != node.GetName() and again.GetName().startswith("t1c (synthetic, CollaGAN)")


def test_the_slicer_job_stepped_to_the_end_equals_the_core(logic, tiny, sample_case):
    nodes = _read(logic, sample_case)
    job = logic.startImputation({"t1n": nodes["t1n"], "t2f": nodes["t2f"]}, tiny, "t1c", device="cpu")
    steps, progress = 0, [job.progress]
    while not job.step():
        steps += 1
        progress.append(job.progress)
    assert steps == 1 + 32 // 2 and progress == sorted(progress) and job.progress == 1.0  # short GUI steps
    images = {c: sitk.ReadImage(str(sample_case / f"{CASE}-{c}.nii.gz")) for c in ("t1n", "t2f")}
    expected = impute(images, tiny, targets=["t1c"], device="cpu")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(job.result.images["t1c"]),
                                  sitk.GetArrayViewFromImage(expected.images["t1c"]))
    node = logic.addResultToScene(job)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), expected.arrays["t1c"])
    assert logic.lastResults[node.GetID()] is job.result


def test_cancel_mid_way_leaves_the_scene_as_it_was(logic, tiny, sample_case):
    nodes = _read(logic, sample_case)
    inputs = {"t1n": nodes["t1n"], "t2f": nodes["t2f"]}
    before = logic.scene.GetNumberOfNodes()
    job = logic.startImputation(inputs, tiny, "t1c", device="cpu")
    assert not job.step() and not job.step()  # prepared, first slices done
    job.cancel()
    with pytest.raises(Cancelled) as raised:
        job.step()
    assert logic.isCancellation(raised.value) and job.result is None
    # From the console or another thread: an Event set half-way through.
    stop = threading.Event()
    with pytest.raises(Cancelled):
        logic.imputeNodes(inputs, model=tiny, target="t1c", device="cpu", cancel=stop,
                          progress=lambda done: stop.set() if done > 0.5 else None)
    assert logic.scene.GetNumberOfNodes() == before
    assert not [n for n in logic.volumeNodes() if logic.isSynthetic(n)]


def test_the_module_logic_extends_the_scene_logic_through_its_mixin(tiny, small_case):
    """The Slicer module's Logic is SceneLogic with ApplicationLogic before it (and Slicer's base, absent here):
    the console calls reach the scene logic, and the mixin's addResultToScene and compare extend it."""
    from CollaGANImputeLib.scene.application import ApplicationLogic

    logic = type("ModuleLogic", (ApplicationLogic, SceneLogic), {})(new_scene())
    assert logic.missingDependencies() == [] and logic.dependenciesReady()
    nodes = _read(logic, small_case)
    inputs = {"t1n": nodes["t1n"], "t2f": nodes["t2f"]}
    before = logic.scene.GetNumberOfNodes()
    node = logic.imputeNodes(inputs, model=tiny, target="t1c", device="cpu", precision="fp32")
    assert node.GetAttribute("collagan_synthetic") == "true" and node.GetID() in logic.lastResults
    assert logic.scene.GetNumberOfNodes() > before
    outputs = logic.compare(node, nodes["t1c"], inputs, show=False)
    assert outputs.tableNode.GetNumberOfRows() == len(outputs.comparison.scores)
    assert outputs.legendNode is not None and not outputs.legendNode.GetVisibility()  # hidden: show=False


@pytest.fixture(scope="module")
def compared(bundled, small_case):
    """The bundled model's t1c of the small case (fp32, as `evaluate` imputes) compared with the acquired one."""
    logic = SceneLogic(new_scene())
    nodes = _read(logic, small_case)
    inputs = {"t1n": nodes["t1n"], "t2f": nodes["t2f"]}
    node = logic.imputeNodes(inputs, model=bundled, target="t1c", device="cpu", precision="fp32")
    outputs = logic.compare(node, nodes["t1c"], inputs, lesionNode=nodes["seg"])
    return logic, nodes, node, outputs


def test_compare_table_rows_are_the_scores_of_collagan_impute_evaluate(compared, bundled, small_case, tmp_path):
    logic, nodes, node, outputs = compared
    images = {c: sitk.ReadImage(str(small_case / f"{CASE}-{c}.nii.gz")) for c in ("t1n", "t1c", "t2f")}
    lesion = sitk.ReadImage(str(small_case / f"{CASE}-seg.nii.gz"))
    core = score_imputation(bundled, images, "t1c", ["t1n", "t2f"], lesion_image=lesion, device="cpu").scores
    assert FIDELITY_KEYS <= set(core) and core["lesion_voxels"] >= 50
    scores = outputs.comparison.scores
    assert set(scores) == set(core)
    for key, value in core.items():
        assert scores[key] == pytest.approx(value, rel=1e-9, nan_ok=True), key
    table = outputs.tableNode
    rows = [tuple(table.GetCellText(r, c) for c in range(3)) for r in range(table.GetNumberOfRows())]
    assert rows == score_table(core) and len(rows) == len(core)
    labels = [r[0] for r in rows]
    assert {"NMSE", "SSIM", "Tissue-contrast identity I_T", "Lesion contrast kept K"} <= set(labels)
    assert [table.GetColumnName(c) for c in range(3)] == ["Metric", "Value", "Note"]
    assert outputs.context == {"synthetic": node.GetName(), "reference": nodes["t1c"].GetName(),
                               "model": bundled.card.name, "lesion": nodes["seg"].GetName()}
    written = dict(csv.reader(logic.exportScores(outputs, tmp_path / "scores.csv").open()))
    assert written["model"] == bundled.card.name and set(core) <= set(written)
    assert float(written["ssim"]) == core["ssim"]


def test_compare_error_map_uses_the_diverging_colours_and_the_window_its_legend_states(compared):
    logic, nodes, node, outputs = compared
    error, limit = outputs.errorNode, outputs.comparison.error_limit
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(error),
                                  sitk.GetArrayViewFromImage(outputs.comparison.error_image))
    np.testing.assert_allclose(_matrix(error), _matrix(nodes["t1n"]), atol=1e-12)
    assert error.GetAttribute("collagan_error_map") == "true"
    assert error.GetID() not in [n.GetID() for n in logic.guessInputNodes(["t1n", "t1c", "t2f"]).values() if n]
    display = error.GetDisplayNode()
    colors = display.GetColorNode()
    assert colors.GetID() == logic.errorColorNode().GetID() and colors.GetName() == ERROR_COLOR_NAME
    rgba = [colors.GetLookupTable().GetTableValue(i) for i in (0, 127, 255)]
    assert rgba[0][2] > 0.7 > rgba[0][0] and min(rgba[1][:3]) > 0.95 and rgba[2][0] > 0.7 > rgba[2][2]
    assert not display.GetAutoWindowLevel()
    assert display.GetWindowLevelMin() == pytest.approx(-limit) and display.GetWindowLevelMax() == pytest.approx(limit)
    assert f"+/-{limit:.2f}" in outputs.legendText and "blue = synthetic too dark" in outputs.legendText
    legend = outputs.legendNode
    assert legend.IsA("vtkMRMLColorLegendDisplayNode") and legend.GetVisibility()
    assert legend.GetPrimaryDisplayNode().GetID() == display.GetID()  # the legend shows this window
    assert legend.GetTitleText() == "Synthetic - acquired (p99 units)"
    inside = np.abs(sitk.GetArrayViewFromImage(outputs.comparison.error_image))
    assert limit == pytest.approx(np.percentile(inside[logic.lastResults[node.GetID()].case.mask], 99))


def test_compare_per_slice_ssim_plot(compared):
    logic, nodes, node, outputs = compared
    chart, series, table = outputs.chartNode, outputs.plotSeriesNode, outputs.plotTableNode
    assert chart.IsA("vtkMRMLPlotChartNode") and chart.GetNumberOfPlotSeriesNodes() == 1
    assert chart.GetNthPlotSeriesNode(0).GetID() == series.GetID()
    assert series.GetTableNode().GetID() == table.GetID()
    assert (series.GetXColumnName(), series.GetYColumnName()) == ("Axial slice", "SSIM")
    assert chart.GetTitle() == f"Per-slice SSIM of {node.GetName()}"
    expected = slice_ssim_table(outputs.comparison.slice_ssim)
    assert expected.shape == (6, 2)  # every slice of the crop has head voxels
    for column, name in enumerate(("Axial slice", "SSIM")):
        np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, name), expected[:, column])


def test_parameter_node_saved_with_the_scene_keeps_model_target_and_inputs(logic, copied_sample, tmp_path):
    nodes = _read(logic, copied_sample)
    logic.setParameters(inputs={"t1n": nodes["t1n"], "t1c": None, "t2f": nodes["t2f"]}, modelName="Model file...",
                        modelFile=str(tmp_path / "my model.pt"), target="t1c", device="cpu", batchSize=4,
                        referenceVolume=nodes["t1c"], lesionVolume=nodes["seg"])
    scene_file = tmp_path / "saved" / "collagan.mrml"
    scene_file.parent.mkdir()
    logic.scene.SetRootDirectory(str(scene_file.parent))
    logic.scene.SetURL(str(scene_file))
    assert logic.scene.Commit()
    assert 'singletonTag="CollaGANImpute"' in scene_file.read_text()

    reopened = new_scene()
    reopened.SetURL(str(scene_file))
    assert reopened.Import()
    again = SceneLogic(reopened)
    parameters = again.parameters()
    assert again.getParameterNode().GetAttribute("ModuleName") == "CollaGANImpute"
    assert (parameters["modelName"], parameters["modelFile"]) == ("Model file...", str(tmp_path / "my model.pt"))
    assert (parameters["target"], parameters["device"], parameters["batchSize"]) == ("t1c", "cpu", "4")
    assert {c: n.GetName() if n else None for c, n in parameters["inputs"].items()} == {
        "t1n": f"{CASE}-t1n", "t2f": f"{CASE}-t2f"}
    assert parameters["referenceVolume"].GetName() == f"{CASE}-t1c"
    assert parameters["lesionVolume"].IsA("vtkMRMLLabelMapVolumeNode") and parameters["syntheticVolume"] is None
    # The references lead to real volumes again: Slicer's reader read them back from their files.
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(parameters["inputs"]["t1n"]),
                                  slicer.util.arrayFromVolume(nodes["t1n"]))
    with pytest.raises(ValueError, match="Unknown parameters"):
        again.setParameters(modelname="typo")


def test_input_guessing_ignores_label_maps_synthetic_volumes_and_error_maps(logic, sample_case):
    nodes = _read(logic, sample_case)
    scene = logic.scene
    template = image_from_node(nodes["t1n"])
    node_from_image(template, scene, "MRHead")
    node_from_image(template, scene, "T1 post Gd lesion", className="vtkMRMLLabelMapVolumeNode")  # a label map
    node_from_image(template, scene, "t1c (synthetic, CollaGAN)")                             # by name
    labelled = node_from_image(template, scene, "T1 post Gd")                                  # by attribute
    labelled.SetAttribute("collagan_synthetic", "true")
    errors = node_from_image(template, scene, "FLAIR residual")
    errors.SetAttribute("collagan_error_map", "true")
    contrasts = ["t1n", "t1c", "t2f"]
    guessed = logic.guessInputNodes(contrasts)
    assert {c: n.GetName() for c, n in guessed.items()} == {c: f"{CASE}-{c}" for c in contrasts}
    assert logic.defaultTarget(contrasts, guessed) == "t1c"  # complete: the contrast-enhanced T1
    scene.RemoveNode(nodes["t1c"])
    guessed = logic.guessInputNodes(contrasts, taken=(nodes["t1n"],))
    assert guessed["t1c"] is None and guessed["t1n"] is None and guessed["t2f"].GetName() == f"{CASE}-t2f"
    assert logic.defaultTarget(contrasts, guessed) == "t1n"


def _slicer_core_snippet() -> str:
    text = (REPO / "docs" / "SLICER_MODULE.md").read_text()
    blocks = re.findall(r"<!-- runnable: slicer-core -->\s*\n```python\n(.*?)```", text, re.DOTALL)
    assert len(blocks) == 1, "docs/SLICER_MODULE.md: one snippet marked '<!-- runnable: slicer-core -->'"
    return blocks[0]


def test_docs_snippet_drives_the_logic_without_qt_and_matches_the_cli(tiny_model_path, tmp_path, sample_case):
    code = _slicer_core_snippet()
    assert "SceneLogic(" in code and "loadSampleCase()" in code and "imputeNodes(" in code and "compare(" in code
    assert not re.search(r"^\s*import (qt|ctk)|slicer\.app|sitkUtils", code, re.MULTILINE)
    out = tmp_path / "out"
    out.mkdir()
    printed = io.StringIO()
    namespace = {"MODEL_PATH": str(tiny_model_path), "OUT_DIR": str(out)}
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "docs/SLICER_MODULE.md", "exec"), namespace)
    assert "t1c (synthetic, CollaGAN)" in printed.getvalue() and "NMSE" in printed.getvalue()
    assert cli_main(["impute", "--input", f"t1n={sample_case / f'{CASE}-t1n.nii.gz'}", "--input",
                     f"t2f={sample_case / f'{CASE}-t2f.nii.gz'}", "--target", "t1c", "--model", str(tiny_model_path),
                     "--device", "cpu", "--out", str(tmp_path / "cli")]) == 0
    cli = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli" / f"{CASE}-t1c-synthetic-collagan.nii.gz")))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(namespace["node"]), cli)
    saved = sitk.ReadImage(str(out / "t1c-from-slicer-core.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(saved), cli)


def test_a_synthetic_node_is_refused_as_input_unless_allowed(logic, bundled, small_case):
    nodes = _read(logic, small_case)
    synthetic = logic.imputeNodes({"t1n": nodes["t1n"], "t2f": nodes["t2f"]}, model=bundled, target="t1c",
                                  device="cpu", precision="fp32")
    inputs = {"t1n": nodes["t1n"], "t1c": synthetic}
    before = logic.scene.GetNumberOfNodes()
    with pytest.raises(InputError, match=r"'t1c' \('t1c \(synthetic, CollaGAN\)'\) is a synthetic volume \(its "
                                         r"collagan_synthetic attribute is true\)"):
        logic.imputeNodes(inputs, model=bundled, target="t2f", device="cpu")
    with pytest.raises(InputError, match="'t1n' and 't2f' have identical voxels"):
        logic.imputeNodes({"t1n": nodes["t1n"], "t2f": nodes["t1n"]}, model=bundled, target="t1c", device="cpu")
    assert logic.scene.GetNumberOfNodes() == before
    node = logic.imputeNodes(inputs, model=bundled, target="t2f", device="cpu", allowSynthetic=True)
    assert node.GetAttribute("collagan_synthetic_inputs") == "t1c"
    assert "'t1c' is not an acquired scan" in node.GetAttribute("collagan_warnings")
    loaded = logic.readVolume(small_case / f"{CASE}-t1c.nii.gz", name="P1-t1c-synthetic-collagan")  # an output file
    assert logic.syntheticReason(loaded) == "its name says so"
    phantom = logic.readVolume(small_case / f"{CASE}-t1c.nii.gz", name="synthetic_phantom_01-t1c")  # a study name
    assert logic.syntheticReason(phantom) is None
