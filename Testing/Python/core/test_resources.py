"""Bundled resources and runtime requirements, each found in one place."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from CollaGANImputeLib import NoBundledModelError, NoSampleCaseError
from CollaGANImputeLib.requirements import RUNTIME_REQUIREMENTS, missing_requirements
from CollaGANImputeLib.resources import SAMPLE_CASE, bundled_models, resources_dir, sample_case_dir
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[3]


def _requirements(entries) -> dict[str, str]:
    parsed = [Requirement(entry) for entry in entries]
    return {req.name.lower(): str(req.specifier) for req in parsed}


def test_runtime_requirements_agree_with_pyproject():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = _requirements(project["dependencies"])
    extras = {}
    for group in project.get("optional-dependencies", {}).values():
        extras.update(_requirements(group))
    ours = _requirements(RUNTIME_REQUIREMENTS.values())
    assert set(declared) <= set(ours), f"pyproject dependencies missing from RUNTIME_REQUIREMENTS: " \
                                       f"{sorted(set(declared) - set(ours))}"
    for name, specifier in ours.items():  # each one declared (a dependency, or an extra), with the same bound
        assert {**extras, **declared}.get(name) == specifier, f"{name}{specifier} is not in pyproject.toml"


def test_every_runtime_requirement_names_an_importable_module():
    assert missing_requirements() == []  # the test environment has them all: the import names are right


def test_scipy_is_declared_because_the_core_imports_it():
    core = REPO / "CollaGANImpute" / "CollaGANImputeLib"
    assert any("from scipy" in path.read_text() for path in core.rglob("*.py"))
    assert "scipy" in RUNTIME_REQUIREMENTS


def test_sample_case_and_models_are_found_in_the_resources_folder():
    case = sample_case_dir()
    assert case.name == SAMPLE_CASE and case.parent == resources_dir() / "SampleData"
    assert (case / f"{SAMPLE_CASE}-t1n.nii.gz").is_file()
    assert all(model.path.parent == resources_dir() / "Models" for model in bundled_models())


def test_missing_sample_case_says_what_to_do(tmp_path):
    (tmp_path / "Models").mkdir()
    with pytest.raises(NoSampleCaseError, match=r"No sample case found under .*: reinstall CollaGANImpute") as info:
        sample_case_dir(tmp_path)
    assert not isinstance(info.value, NoBundledModelError)  # a missing case is not a missing model
    shutil.copytree(sample_case_dir(), tmp_path / "SampleData" / "P9")
    assert sample_case_dir(tmp_path).name == "P9"  # another bundled case is taken when the usual one is absent


def test_resources_are_found_without_importing_torch():
    code = ("import sys; from CollaGANImputeLib.resources import bundled_models, sample_case_dir; "
            "bundled_models(); sample_case_dir(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
