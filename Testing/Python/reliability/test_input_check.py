"""The input check: inputs unlike the training data are warned about, in the API, the CLI and the
output's provenance; the LGG validation patients pass, the skull-stripped OpenMS scans do not."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CollaGANImputeLib import ModelCard, impute, load_model, save_model
from CollaGANImputeLib.case import prepare_case
from CollaGANImputeLib.case_files import read_case
from CollaGANImputeLib.cli import EXIT_OK, main
from CollaGANImputeLib.errors import InputCheckWarning
from CollaGANImputeLib.input_check import check_case, training_profile
from CollaGANImputeLib.resources import bundled_models
from core_fixtures import CONTRASTS, REPO, TinyGenerator

SHARED = REPO.parent / "shared" / "data"
LGG = SHARED / "lgg" / "complete"
OPENMS = SHARED / "openms"
SPLIT = json.loads((REPO / "training" / "splits" / "lgg_split.json").read_text())
needs_lgg = pytest.mark.skipif(not LGG.is_dir(), reason="needs ../shared/data/lgg")
needs_profile = pytest.mark.skipif(not bundled_models(), reason="needs the bundled model (its card has the profile)")


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return bundled_models()[0].load().card


@pytest.fixture(scope="module")
def profiled_tiny(tmp_path_factory, card) -> Path:
    """A tiny generator with the bundled model's training profile: fast inference, the real check."""
    path = tmp_path_factory.mktemp("profiled") / "tiny-profiled.pt"
    torch.manual_seed(0)
    save_model(TinyGenerator(), ModelCard(name="tiny-profiled", contrasts=CONTRASTS,
                                          input_profile=card.input_profile), path)
    return path


def _sets(contrasts):
    return [[c for c in contrasts if c != target] for target in contrasts]


@needs_profile
def test_bundled_card_carries_the_training_profile(card):
    assert card.input_profile["cases"] == len(SPLIT["train"]) == 52
    assert card.pixel_spacing == (1.0, 1.0)


@needs_lgg
@needs_profile
def test_no_warning_on_the_lgg_validation_patients(card):
    assert len(SPLIT["val"]) == 12
    for name in SPLIT["val"]:
        images = read_case(LGG / name, CONTRASTS)
        for inputs in _sets(CONTRASTS):
            check = check_case(card, prepare_case({c: images[c] for c in inputs}, mask_from=inputs), inputs)
            assert check.checked and check.ok, (name, inputs, check.findings)


@pytest.mark.skipif(not OPENMS.is_dir(), reason="needs ../shared/data/openms")
@needs_profile
def test_warning_on_skull_stripped_openms(card):
    for folder in sorted(p for p in OPENMS.iterdir() if p.is_dir()):
        images = read_case(folder, CONTRASTS)
        for inputs in _sets(CONTRASTS):
            check = check_case(card, prepare_case({c: images[c] for c in inputs}, mask_from=inputs), inputs)
            assert not check.ok and any("smaller than the training heads'" in f for f in check.findings), inputs
            assert "skull-stripped" in check.message()


def _variant(image: sitk.Image, array: np.ndarray) -> sitk.Image:
    out = sitk.GetImageFromArray(array.astype(np.float32))
    out.CopyInformation(image)
    return out


def _zscored(image):
    a = sitk.GetArrayFromImage(image).astype(np.float32)
    return _variant(image, (a - a.mean()) / a.std())


def _negative_background(image):
    a = sitk.GetArrayFromImage(image).astype(np.float32)
    return _variant(image, np.where(a < 10, -100.0, a))


def _constant(image):
    return _variant(image, np.full(sitk.GetArrayViewFromImage(image).shape, 50.0))


def _shifted(image, fraction=0.78):  # 22 % overlap with the reference
    out = sitk.Image(image)
    origin = list(out.GetOrigin())
    origin[0] += image.GetSize()[0] * image.GetSpacing()[0] * fraction
    out.SetOrigin(origin)
    return out


def _tiny_volume(image):
    return _variant(image[:5, :5, :5], np.arange(125, dtype=np.float32).reshape(5, 5, 5) + 1)


@needs_profile
@pytest.mark.parametrize("make, expected", [
    (_zscored, "negative intensities"), (_negative_background, "negative intensities"),
    (_constant, "intensities inside the head differ"), (_shifted, "covers only part of the head")],
    ids=["z-scored", "negative-background", "constant", "22%-overlap"])
def test_unlike_inputs_are_found(card, sample_case, make, expected):
    images = read_case(sample_case, ["t1n", "t2f"])
    images["t2f"] = make(images["t2f"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 22 % overlap also gives the resampling warning
        check = check_case(card, prepare_case(images), ["t1n", "t2f"])
    assert any(expected in f for f in check.findings), check.findings
    assert not check_case(card, prepare_case(read_case(sample_case, ["t1n", "t2f"])), ["t1n", "t2f"]).findings


@needs_profile
def test_a_5x5x5_volume_is_found(card, sample_case):
    image = _tiny_volume(read_case(sample_case, ["t1n"])["t1n"])
    check = check_case(card, prepare_case({"t1n": image, "t2f": image}), ["t1n", "t2f"])
    assert any("smaller than the training heads'" in f for f in check.findings)


@needs_profile
@pytest.mark.skipif(not OPENMS.is_dir(), reason="needs ../shared/data/openms")
def test_cli_and_provenance_carry_the_warning(profiled_tiny, tmp_path, capsys):
    case = sorted(p for p in OPENMS.iterdir() if p.is_dir())[0]
    out = tmp_path / "out"
    assert main(["impute", "--input", f"t1n={case / (case.name + '-t1n.nii.gz')}",
                 "--input", f"t2f={case / (case.name + '-t2f.nii.gz')}", "--target", "t1c", "--model",
                 str(profiled_tiny), "--out", str(out), "--device", "cpu"]) == EXIT_OK
    err = capsys.readouterr().err
    assert "warning: The inputs are unlike the data model 'tiny-profiled' was trained on" in err
    written = out / f"{case.name}-t1c-synthetic-collagan.nii.gz"
    image = sitk.ReadImage(str(written))  # a NIfTI header keeps the 80-character description only
    assert "UNRELIABLE: inputs unlike training" in image.GetMetaData("descrip")
    sidecar = json.loads(written.with_name(f"{case.name}-t1c-synthetic-collagan.json").read_text())
    assert sidecar["collagan_input_check"] == sidecar["input_check"]["status"] == "warning"
    assert "smaller than the training heads'" in sidecar["collagan_input_check_findings"]
    assert sidecar["input_check"]["values"]["head"]["max_area_cm2"] < 200


@needs_profile
def test_api_warns_and_a_card_without_profile_is_not_checked(profiled_tiny, tiny_model_path, sample_case):
    images = read_case(sample_case, ["t1n", "t2f"])
    images["t2f"] = _zscored(images["t2f"])
    with pytest.warns(InputCheckWarning, match="unlike the data"):
        result = impute(images, load_model(profiled_tiny), targets=["t1c"], device="cpu")
    assert result.case.input_check.status == "warning"
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputCheckWarning)
        plain = impute(images, load_model(tiny_model_path), targets=["t1c"], device="cpu")
    assert plain.images["t1c"].GetMetaData("collagan_input_check") == "not checked"


@needs_lgg
def test_training_profile_admits_its_own_cases():
    names = SPLIT["train"][:3]
    cases = [prepare_case(read_case(LGG / n, CONTRASTS)) for n in names]
    profile = training_profile(cases, CONTRASTS, source="3 cases")
    assert profile["cases"] == 3 and len(profile["contrasts"]["t1n"]["histogram"]) == profile["histogram_bins"]
    assert abs(sum(profile["contrasts"]["t2f"]["histogram"]) - 1) < 1e-4
    card = ModelCard(name="p", contrasts=CONTRASTS, input_profile=profile)
    for case in cases:
        assert check_case(card, case).ok


@needs_profile
def test_slicer_job_and_banner_show_the_warning(profiled_tiny, sample_case):
    from CollaGANImputeLib.scene.job import ChunkedImputation
    from CollaGANImputeLib.scene.names import synthetic_attributes, synthetic_banner

    images = read_case(sample_case, ["t1n", "t2f"])
    images["t2f"] = _zscored(images["t2f"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        job = ChunkedImputation(images, load_model(profiled_tiny), "t1c", device="cpu")
        result = job.run()
    assert any("unlike the data" in w for w in job.warnings)  # the panel's status line shows job.warnings
    banner = synthetic_banner(synthetic_attributes(result.images["t1c"]))
    assert "SYNTHETIC IMAGE" in banner and "UNRELIABLE: the inputs are unlike the data" in banner
    assert "negative intensities" in banner
