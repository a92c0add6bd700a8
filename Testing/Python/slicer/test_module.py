"""The Slicer module and extension packaging, checked without Slicer: API use, .ui, CMake lists, catalog files,
icons and the console snippets of docs/SLICER_MODULE.md (run for real against the core)."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer_checks as checks

REPO = checks.REPO
MODULE_SOURCE = checks.MODULE_FILE.read_text()
MODULE_TREE = ast.parse(MODULE_SOURCE)
#: The module file and what its Logic and self-test inherit that needs the Slicer application.
APP_SOURCES = {path.name: path.read_text() for path in checks.APP_FILES}
DOC = REPO / "docs" / "SLICER_MODULE.md"


@pytest.fixture(scope="module")
def api() -> dict:
    if not checks.API_PATH.is_file():
        pytest.skip(f"Slicer API description not found at {checks.API_PATH}")
    return checks.load_api()


# --- the checker itself catches what it should ----------------------------------------------------------------

BAD_MODULE = '''
import slicer, sitkUtils
from slicer.util import getNode, NoSuchThing
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
class W(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setupp(self)
        self.resourcePath("UI/x.ui", "extra")
        self.undefinedHelper()
        slicer.util.loadVolume("a.nrrd", returnNode=True, colour="red")
        slicer.util.noSuchFunction()
        sitkUtils.PushVolumeToSlicer(1, None, "n", "c", 5)
        getNode("x", 0, None, "too many")
'''


def test_checker_reports_each_kind_of_mistake(api):
    problems = "\n".join(checks.check_source(BAD_MODULE, api))
    for expected in ("slicer.util has no 'NoSuchThing'", "has no method 'setupp'", "resourcePath() takes at most 1",
                     "undefinedHelper() is neither defined", "no keyword 'colour'", "has no function 'noSuchFunction'",
                     "PushVolumeToSlicer() takes at most 4", "getNode() takes at most 3"):
        assert expected in problems, f"not reported: {expected}\n{problems}"
    assert "no keyword 'returnNode'" not in problems  # a keyword loadVolume does take


# --- the module against the real Slicer API -------------------------------------------------------------------

def test_module_uses_only_existing_slicer_api(api):
    assert checks.check_source(MODULE_SOURCE, api) == []
    for path in checks.SCENE_FILES + checks.APP_FILES:  # the logic the module inherits: its slicer.util calls too
        assert checks.check_source(path.read_text(), api) == [], path.name


@pytest.mark.slicer_core
def test_slicer_util_calls_match_the_installed_slicer_core():
    """Every slicer.util function the module, its logic and the docs call exists in the installed slicer-core's
    slicer/util.py (read as source, not imported) and is called with parameters it has."""
    util = checks.installed_slicer_util()
    if util is None:
        from slicer_core_support import require_slicer_core

        require_slicer_core()  # skips locally, fails in CI
        pytest.fail("slicer-core is importable but its slicer/util.py was not found")
    signatures = checks.signatures_from_source(util.read_text())
    assert {"arrayFromVolume", "updateVolumeFromArray", "setSliceViewerLayers", "loadUI"} <= set(signatures)
    bad = ast.parse("import slicer\nslicer.util.arrayFromVolume(a, b)\nslicer.util.noSuchThing()\n"
                    "slicer.util.loadVolume('x', colour=1)\nslicer.util.NodeModify(n, m)\n")
    problems = "\n".join(checks.check_calls_against(bad, "slicer.util", signatures))
    for expected in ("arrayFromVolume() takes at most 1", "has no 'noSuchThing'", "no keyword 'colour'",
                     "NodeModify() takes at most 1"):
        assert expected in problems, f"not reported: {expected}\n{problems}"
    sources = {checks.MODULE_FILE.name: MODULE_SOURCE}
    sources.update({path.name: path.read_text() for path in checks.SCENE_FILES})
    sources.update(APP_SOURCES)
    sources.update({f"{DOC.name} block {i}": code for i, (_r, code) in enumerate(BLOCKS)})
    called = set()
    for name, source in sources.items():
        tree = ast.parse(source)
        called |= checks.called_functions(tree, "slicer.util")
        assert checks.check_calls_against(tree, "slicer.util", signatures) == [], name
    # The module really relies on these: the check is not vacuous.
    assert {"arrayFromVolume", "updateVolumeFromArray", "vtkMatrixFromArray", "arrayFromVTKMatrix",
            "updateTableFromArray", "setSliceViewerLayers", "loadVolume", "tryWithErrorDisplay"} <= called
    assert called <= set(signatures)


def test_scene_logic_is_qt_free():
    """What runs on slicer-core imports nothing of Slicer's application: no Qt, ctk, slicer.app, sitkUtils."""
    forbidden_modules = ("qt", "ctk", "sitkUtils", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper",
                         "SampleData", "CollaGANImpute")
    for path in checks.SCENE_FILES + checks.SLICER_FREE_SCENE_FILES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not [m for m in modules if m in forbidden_modules or m.split(".")[0] in ("qt", "ctk")], \
                    f"{path.name} line {node.lineno} imports {modules}"
            name = checks._dotted(node) if isinstance(node, ast.Attribute) else None
            assert name not in ("slicer.app", "slicer.modules", "slicer.mrmlScene.app"), f"{path.name}: {name}"
    for path in checks.SLICER_FREE_SCENE_FILES:  # these need only the core, not even MRML
        assert not re.search(r"^\s*(import|from) (slicer|vtk)\b", path.read_text(), re.MULTILINE), path.name


def test_module_has_the_four_scripted_module_classes():
    bases = {node.name: [checks._dotted(b) for b in node.bases] for node in ast.walk(MODULE_TREE)
             if isinstance(node, ast.ClassDef)}
    for name, base in (("CollaGANImpute", "ScriptedLoadableModule"),
                       ("CollaGANImputeWidget", "ScriptedLoadableModuleWidget"),
                       ("CollaGANImputeLogic", "ScriptedLoadableModuleLogic"),
                       ("CollaGANImputeTest", "ScriptedLoadableModuleTest")):
        assert base in bases.get(name, []), f"{name}({base}) missing"
    test_methods = {name for name in checks.class_methods("CollaGANImputeTest") if name.startswith("test_")}
    assert {"test_ImputeSampleCase", "test_CancelLeavesSceneUnchanged"} <= test_methods


def test_module_does_no_computing_of_its_own():
    """A thin shell: torch/numpy maths stay in CollaGANImputeLib (the self-test may build a tiny model)."""
    logic_and_widget = [n for n in ast.walk(MODULE_TREE) if isinstance(n, ast.ClassDef)
                        and n.name in ("CollaGANImputeWidget", "CollaGANImputeLogic")]
    for cls in logic_and_widget:
        for node in ast.walk(cls):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(m and m.split(".")[0] in ("torch", "numpy", "skimage", "SimpleITK") for m in modules), \
                    f"{cls.name} imports {modules} (line {node.lineno}); computing belongs in CollaGANImputeLib"


def test_module_imports_no_core_at_load_time():
    """Slicer must load the module before torch is installed (the panel then offers to install it): at load time
    it imports only the torch-free scene logic it inherits, and that nothing of torch or scikit-image."""
    top_level = checks.top_level_imports(checks.MODULE_FILE)
    ours = {m for m in top_level if m.startswith("CollaGANImputeLib")}
    assert ours == {"CollaGANImputeLib.scene.application", "CollaGANImputeLib.scene.logic",
                    "CollaGANImputeLib.scene.selftest"}, ours
    loaded = set().union(*(checks.loaded_at_import(m) for m in ours))
    assert "CollaGANImputeLib.scene.nodes" in loaded and "CollaGANImputeLib.errors" in loaded  # not vacuous
    heavy = {m for m in loaded if m.split(".")[0] in ("torch", "skimage", "scipy")
             or m in ("CollaGANImputeLib.pipeline", "CollaGANImputeLib.inference", "CollaGANImputeLib.contract")}
    assert not heavy, heavy


def test_load_time_check_follows_imports():
    assert "CollaGANImputeLib.inference" in checks.loaded_at_import("CollaGANImputeLib.scene.job")
    assert "torch" in checks.loaded_at_import("CollaGANImputeLib.acceleration")  # the torch path imports torch


def test_logic_inherits_the_scene_logic_and_forwards_nothing():
    logic = next(n for n in MODULE_TREE.body if isinstance(n, ast.ClassDef) and n.name == "CollaGANImputeLogic")
    assert [checks._dotted(b) for b in logic.bases] == ["ScriptedLoadableModuleLogic", "ApplicationLogic",
                                                         "SceneLogic"]
    for method in [n for n in logic.body if isinstance(n, ast.FunctionDef)]:
        body = [s for s in method.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        call = body[0].value if len(body) == 1 and isinstance(body[0], (ast.Return, ast.Expr)) else None
        forwarded = isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and \
            isinstance(call.func.value, ast.Attribute) and checks._dotted(call.func.value.value) == "self"
        assert not forwarded, f"CollaGANImputeLogic.{method.name} only forwards to self.{call.func.value.attr}"
    methods = _logic_methods()
    readme = (REPO / "README.md").read_text()
    console = set(re.findall(r"\blogic\.(\w+)\(", readme))
    assert {"loadModel", "imputeNodes", "guessInputNodes"} <= console
    assert console <= set(methods), console - set(methods)


def test_parameter_node_wrapper_declares_the_scene_fields():
    from CollaGANImputeLib.scene.parameters import FIELDS

    assert checks.parameter_mismatches(MODULE_TREE, FIELDS) == []
    line = "    batchSize: Annotated[int, WithinRange(1, 64)] = 8\n"
    assert line in MODULE_SOURCE
    narrower = checks.parameter_mismatches(ast.parse(MODULE_SOURCE.replace(
        line, "    batchSize: Annotated[int, WithinRange(1, 32)] = 4\n")), FIELDS)
    assert len(narrower) == 2 and all(p.startswith("batchSize:") for p in narrower), narrower
    dropped = checks.parameter_mismatches(ast.parse(MODULE_SOURCE.replace(line, "")), FIELDS)
    assert dropped and dropped[0].startswith("fields "), dropped


# --- .ui --------------------------------------------------------------------------------------------------------

def test_every_ui_widget_the_python_uses_exists():
    widgets = checks.ui_widgets()
    used = checks.ui_attributes_used(MODULE_TREE)
    assert len(used) > 20
    missing = {name: line for name, line in used.items() if name not in widgets}
    assert missing == {}, f"self.ui.X used but absent from {checks.UI_FILE.name}: {missing}"


def test_ui_parameter_names_match_parameter_node_fields_and_connectors():
    widgets = checks.ui_widgets()
    bound = checks.ui_parameter_names()
    fields = checks.parameter_fields(MODULE_TREE)
    assert fields, "no @parameterNodeWrapper class found"
    assert set(bound.values()) <= set(fields), f"unknown parameters: {set(bound.values()) - set(fields)}"
    for widget, parameter in bound.items():
        connectable = checks.CONNECTABLE.get(widgets[widget])
        assert connectable is not None and connectable(fields[parameter]), (
            f"{widget} ({widgets[widget]}) cannot be bound to {parameter}: {fields[parameter]}")


def test_ui_is_a_qmrmlwidget_with_scene_connections():
    root = ET.parse(checks.UI_FILE).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "CollaGANImpute"
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    mrml_widgets = {name for name, cls in checks.ui_widgets().items()
                    if cls.startswith("qMRML") and cls != "qMRMLWidget"}
    assert mrml_widgets <= receivers, f"not given the scene: {mrml_widgets - receivers}"


# --- CMake, catalog, icons ------------------------------------------------------------------------------------

MODULE_CMAKE = (checks.MODULE_DIR / "CMakeLists.txt").read_text()
TOP_CMAKE = (REPO / "CMakeLists.txt").read_text()


def test_module_cmake_lists_every_script_and_resource():
    subs = {"MODULE_NAME": "CollaGANImpute"}
    scripts = checks.cmake_list(MODULE_CMAKE, "MODULE_PYTHON_SCRIPTS", subs)
    resources = checks.cmake_list(MODULE_CMAKE, "MODULE_PYTHON_RESOURCES", subs)
    on_disk = checks.files_under(checks.MODULE_DIR)
    py_on_disk = {f for f in on_disk if f.endswith(".py")}
    assert len(scripts) == len(set(scripts))
    assert set(scripts) == py_on_disk, (f"listed, not on disk: {sorted(set(scripts) - py_on_disk)}; "
                                        f"on disk, not listed: {sorted(py_on_disk - set(scripts))}")
    resources_on_disk = {f for f in on_disk if f.startswith("Resources/")}
    assert set(resources) == resources_on_disk, (f"listed, not on disk: {sorted(set(resources) - resources_on_disk)}; "
                                                 f"on disk, not listed: {sorted(resources_on_disk - set(resources))}")
    assert "slicerMacroBuildScriptedModule(" in MODULE_CMAKE and "WITH_GENERIC_TESTS" in MODULE_CMAKE
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT \$\{MODULE_NAME\}\.py", MODULE_CMAKE)
    assert not re.search(r"file\s*\(\s*GLOB", MODULE_CMAKE, re.IGNORECASE)


def test_shared_resources_sample_case_and_models_are_installed():
    listed = set(checks.cmake_list(MODULE_CMAKE, "COLLAGAN_SHARED_RESOURCES"))
    sample = {f"SampleData/{f}" for f in checks.files_under(REPO / "Resources" / "SampleData")}
    assert sample and sample <= listed, f"sample files not installed: {sorted(sample - listed)}"
    models = REPO / "Resources" / "Models"
    manifest = models / "models.json"
    present = checks.files_under(models) if models.is_dir() else set()
    if not manifest.is_file():
        assert present == set(), f"model files without Resources/Models/models.json: {sorted(present)}"
        return
    entries = json.loads(manifest.read_text()).get("models", [])
    named = {"models.json"} | {e[key] for e in entries for key in ("file", "card", "onnx") if e.get(key)}
    assert present == named, (f"in Models/ but not in the manifest (never installed): {sorted(present - named)}; "
                              f"in the manifest but absent: {sorted(named - present)}")
    assert "string(JSON" in MODULE_CMAKE and " onnx)" in MODULE_CMAKE  # the manifest drives the install, ONNX too


def test_extension_cmake_metadata():
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert checks.cmake_value(TOP_CMAKE, variable).strip(), variable
    assert checks.cmake_value(TOP_CMAKE, "EXTENSION_CATEGORY") == "Image Synthesis"
    assert checks.cmake_value(TOP_CMAKE, "EXTENSION_DEPENDS") == "PyTorch"
    assert "CC BY-NC-SA 4.0" in checks.cmake_value(TOP_CMAKE, "EXTENSION_DESCRIPTION")
    icon = checks.cmake_value(TOP_CMAKE, "EXTENSION_ICONURL").rsplit("/raw/main/", 1)[-1]
    assert (REPO / icon).is_file(), f"EXTENSION_ICONURL points to {icon}, absent from the repository"
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(CollaGANImpute)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in TOP_CMAKE, line


SCHEMA_PROPERTIES = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                     "dicom_support_rule", "build_subdirectory", "enabled", "tier"}  # catalog schema v1.0.2


def test_catalog_entry_follows_the_extensions_index_schema():
    entry = json.loads((REPO / "CollaGAN.json").read_text())
    assert set(entry) <= SCHEMA_PROPERTIES, f"not allowed by the schema: {set(entry) - SCHEMA_PROPERTIES}"
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert entry["category"] == checks.cmake_value(TOP_CMAKE, "EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == checks.cmake_value(TOP_CMAKE, "EXTENSION_DEPENDS").split()
    assert isinstance(entry["tier"], int) and 1 <= entry["tier"] <= 5
    repository = checks.cmake_value(TOP_CMAKE, "COLLAGAN_REPOSITORY_URL")
    assert entry["scm_url"] == repository


def test_s4ext_mirrors_the_cmake_metadata():
    fields = {}
    for line in (REPO / "CollaGAN.s4ext").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    repository = checks.cmake_value(TOP_CMAKE, "COLLAGAN_REPOSITORY_URL")

    def resolved(variable: str) -> str:
        return checks.cmake_value(TOP_CMAKE, variable).replace("${COLLAGAN_REPOSITORY_URL}", repository)

    assert fields["scm"] == "git" and fields["scmurl"].removesuffix(".git") == repository
    for key, variable in (("category", "EXTENSION_CATEGORY"), ("depends", "EXTENSION_DEPENDS"),
                          ("iconurl", "EXTENSION_ICONURL"), ("homepage", "EXTENSION_HOMEPAGE"),
                          ("screenshoturls", "EXTENSION_SCREENSHOTURLS"), ("contributors", "EXTENSION_CONTRIBUTORS")):
        assert fields[key] == resolved(variable), key


@pytest.mark.parametrize("path, size", [
    ("Resources/Icons/CollaGAN.png", (128, 128)),
    ("CollaGANImpute/Resources/Icons/CollaGANImpute.png", (128, 128)),
    ("CollaGANImpute/Resources/Icons/CollaGANSample.png", None),
])
def test_icons_are_real_pngs(path, size):
    import matplotlib.image

    assert checks.png_size(REPO / path) == size or size is None
    pixels = matplotlib.image.imread(REPO / path)
    assert pixels.std() > 0.05, f"{path} is (nearly) uniform"


def test_help_and_acknowledgement_name_licence_and_paper():
    assert "CC BY-NC-SA 4.0" in MODULE_SOURCE and "CVPR 2019" in MODULE_SOURCE
    assert '"Image Synthesis"' in MODULE_SOURCE
    assert "startupCompleted()" in MODULE_SOURCE and "registerSampleData" in MODULE_SOURCE
    assert "registerCustomSampleDataSource" in APP_SOURCES["application.py"]


# --- docs/SLICER_MODULE.md --------------------------------------------------------------------------------------

DOC_TEXT = DOC.read_text()
BLOCKS = checks.python_blocks(DOC_TEXT)
SETTINGS = {"MODEL_PATH", "CASE_DIR", "CASES_DIR", "OUT_DIR"}


def _logic_methods(name: str = "CollaGANImputeLogic") -> dict[str, ast.FunctionDef]:
    """The class's methods, inherited ones included (the module's Logic inherits the scene logic)."""
    return checks.class_methods(name)


def test_doc_has_three_console_snippets_two_of_them_runnable():
    assert len([b for b in BLOCKS if b[0]]) == 2
    assert "imputeNodes(" in DOC_TEXT and "getModuleLogic(\"CollaGANImpute\")" in DOC_TEXT
    settings = next(code for runnable, code in BLOCKS if not runnable and "MODEL_PATH =" in code)
    assigned = {t.id for n in ast.parse(settings).body if isinstance(n, ast.Assign) for t in n.targets}
    assert assigned == SETTINGS


def test_doc_snippets_call_existing_api(api):
    scene_logic = _logic_methods("SceneLogic")
    for _runnable, code in BLOCKS:
        tree = ast.parse(code)  # every block is valid Python
        # `logic` is the module's Logic in Slicer's console, or the Qt-free SceneLogic where the block makes one
        methods = scene_logic if "SceneLogic(" in code else _logic_methods()
        assert checks.check_module_calls(tree, api) == []
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    isinstance(node.func.value, ast.Name) and node.func.value.id == "logic":
                method = methods.get(node.func.attr)
                assert method is not None, f"CollaGANImputeLogic has no method {node.func.attr}"
                params = [a.arg for a in method.args.args + method.args.kwonlyargs]
                assert all(k.arg in params for k in node.keywords), (node.func.attr, [k.arg for k in node.keywords])
    inline = re.findall(r'getModuleLogic\("CollaGANImpute"\)\.(\w+)\(', DOC_TEXT)
    assert inline and all(name in methods for name in inline)


@pytest.fixture
def snippet_settings(tmp_path, tiny_model_path, sample_case) -> dict:
    """A case with T1c missing, a folder of two cases (one complete: nothing to impute), an output folder."""
    case = tmp_path / "single" / sample_case.name
    shutil.copytree(sample_case, case)
    (case / f"{sample_case.name}-t1c.nii.gz").unlink()
    cases = tmp_path / "many"
    shutil.copytree(case, cases / "case-a")
    for path in (cases / "case-a").iterdir():
        path.rename(path.with_name(path.name.replace(sample_case.name, "case-a")))
    shutil.copytree(sample_case, cases / "complete-b")
    for path in (cases / "complete-b").iterdir():
        path.rename(path.with_name(path.name.replace(sample_case.name, "complete-b")))
    return {"MODEL_PATH": str(tiny_model_path), "CASE_DIR": str(case), "CASES_DIR": str(cases),
            "OUT_DIR": str(tmp_path / "out")}


def _run(code: str, settings: dict) -> str:
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, str(DOC), "exec"), dict(settings))
    return output.getvalue()


def _assert_synthetic_like(path: Path, like: Path) -> None:
    produced, source = sitk.ReadImage(str(path)), sitk.ReadImage(str(like))
    assert produced.GetSize() == source.GetSize()
    assert np.allclose(produced.GetOrigin(), source.GetOrigin()) and np.allclose(produced.GetSpacing(),
                                                                                 source.GetSpacing())
    assert "SYNTHETIC" in produced.GetMetaData("descrip")
    assert np.isfinite(sitk.GetArrayViewFromImage(produced)).all()


def test_doc_snippet_impute_one_case_runs(snippet_settings):
    code = [c for runnable, c in BLOCKS if runnable][0]
    printed = _run(code, snippet_settings)
    out = Path(snippet_settings["OUT_DIR"])
    name = Path(snippet_settings["CASE_DIR"]).name
    written = out / f"{name}-t1c-synthetic-collagan.nii.gz"
    assert written.is_file() and "t1c:" in printed and "SYNTHETIC" in printed
    sidecar = written.name.replace(".nii.gz", ".json")  # provenance, where the CLI writes one
    assert written.name in {p.name for p in out.iterdir()} <= {written.name, sidecar}  # nothing else left
    _assert_synthetic_like(written, Path(snippet_settings["CASE_DIR"]) / f"{name}-t1n.nii.gz")


def test_doc_snippet_every_case_of_a_folder_runs(snippet_settings):
    code = [c for runnable, c in BLOCKS if runnable][1]
    printed = _run(code, snippet_settings)
    out = Path(snippet_settings["OUT_DIR"])
    written = out / "case-a" / "case-a-t1c-synthetic-collagan.nii.gz"
    assert written.is_file()
    _assert_synthetic_like(written, Path(snippet_settings["CASES_DIR"]) / "case-a" / "case-a-t1n.nii.gz")
    assert not (out / "complete-b").exists() or not any((out / "complete-b").iterdir())
    assert "[1/2] case-a: wrote case-a-t1c-synthetic-collagan.nii.gz" in printed
    assert "[2/2] complete-b: skipped:" in printed and "nothing is" in printed  # the core's own message
    assert re.search(r"\[1/2\] case-a: slice \d+/\d+", printed)
