"""Real-world case inputs that used to give a wrong result without an error: file names of both BraTS conventions,
case names, outputs of another case, synthetic volumes given as inputs, DICOM folders with several series, one scan
given twice, single sagittal slices, concurrent commits of one output set. Real files through SimpleITK."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CollaGANImputeLib import impute_case, load_model
from CollaGANImputeLib.dicom import dicom_series
from CollaGANImputeLib.errors import InputError, OutputError
from CollaGANImputeLib.io import OutputSet, case_name_from_files, find_case_files, read_volume, write_volume
from CollaGANImputeLib.pipeline import read_input, sidecar_path
from core_fixtures import head_phantom, make_image, write_dicom_series


@pytest.fixture(scope="module")
def model(tiny_model_path):
    torch.set_num_threads(1)
    return load_model(tiny_model_path)


def _write(path: Path, seed: int = 0, shape=(12, 48, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(make_image(head_phantom(shape, seed=seed)), str(path))
    return path


# ------------------------------------------------------------------------------------------ names and cases

def test_brats_2021_names_are_read_as_their_contrasts(tmp_path):
    for seed, suffix in enumerate(["t1", "t1ce", "t2", "flair", "seg"]):
        _write(tmp_path / f"BraTS2021_00012_{suffix}.nii.gz", seed)
    found = find_case_files(tmp_path, ["t1n", "t1c", "t2w", "t2f", "seg"])
    assert {c: p.name for c, p in found.items()} == {
        "t1n": "BraTS2021_00012_t1.nii.gz", "t1c": "BraTS2021_00012_t1ce.nii.gz", "t2w": "BraTS2021_00012_t2.nii.gz",
        "t2f": "BraTS2021_00012_flair.nii.gz", "seg": "BraTS2021_00012_seg.nii.gz"}


def test_acquired_contrasts_in_2021_names_are_used_not_imputed(model, tmp_path):
    case = tmp_path / "P7"
    _write(case / "P7-t1n.nii.gz", 0)
    _write(case / "P7_t1ce.nii.gz", 1)
    _write(case / "P7_flair.nii.gz", 2)
    with pytest.raises(InputError, match="Every contrast of the model"):
        impute_case(case, model, out_dir=tmp_path / "out", device="cpu")  # nothing is missing: nothing imputed
    assert not (tmp_path / "out").exists()


def test_a_folder_mixing_conventions_for_one_contrast_is_refused(tmp_path):
    _write(tmp_path / "P7-t1c.nii.gz", 0)
    _write(tmp_path / "P7_t1ce.nii.gz", 1)
    with pytest.raises(InputError, match=r"mixes naming conventions for contrast 't1c' \(BraTS 2021 and BraTS 2023\)"):
        find_case_files(tmp_path, ["t1n", "t1c", "t2f"])


def test_a_case_folder_named_synthetic_is_read(model, tmp_path):
    case = tmp_path / "synthetic_phantom_01"
    _write(case / "synthetic_phantom_01-t1n.nii.gz", 0)
    _write(case / "synthetic_phantom_01-t2f.nii.gz", 1)
    written = impute_case(case, model, out_dir=tmp_path / "out", device="cpu")
    assert written["t1c"].name == "synthetic_phantom_01-t1c-synthetic-collagan.nii.gz"
    assert find_case_files(tmp_path / "out", ["t1n", "t1c", "t2f"]) == {}  # outputs are still never inputs


def test_case_names_are_never_cut_inside_a_name():
    assert case_name_from_files({"t1n": "TCGA-HT-7882-t1n.nii.gz", "t2f": "TCGA-HT-7882-t2f_reg.nii.gz"}) \
        == "TCGA-HT-7882"
    assert case_name_from_files({"t1n": "TCGA-HT-7882-t1n_reg.nii.gz", "t2f": "TCGA-HT-7882-t2f_reg.nii.gz"}) \
        == "TCGA-HT-7882"
    assert case_name_from_files({"t1n": "TCGA-HT-7882_t1.nii.gz", "t2f": "TCGA-HT-7884_flair.nii.gz"}) \
        == "TCGA-HT-7882"  # two names: the first, whole, never their common start "TCGA-HT"


def _patient(root: Path, name: str, seed: int) -> dict[str, Path]:
    return {"t1n": _write(root / name / f"{name}-t1n.nii.gz", seed),
            "t2f": _write(root / name / f"{name}-t2f_reg.nii.gz", seed + 1)}


def test_another_patients_outputs_are_kept_without_overwrite(model, tmp_path):
    out = tmp_path / "out"
    first = impute_case(_patient(tmp_path, "TCGA-HT-7882", 0), model, out_dir=out, targets=["t1c"], device="cpu")
    kept = first["t1c"].read_bytes()
    other = _patient(tmp_path, "TCGA-HT-7882b", 3)
    with pytest.raises(OutputError, match="is the output of another case .*pass --overwrite"):
        impute_case(other, model, out_dir=out, targets=["t1c"], device="cpu", name="TCGA-HT-7882")
    assert first["t1c"].read_bytes() == kept
    assert sorted(p.name for p in out.iterdir()) == ["TCGA-HT-7882-t1c-synthetic-collagan.json",
                                                     "TCGA-HT-7882-t1c-synthetic-collagan.nii.gz"]
    again = impute_case(_patient(tmp_path, "TCGA-HT-7882", 0), model, out_dir=out, targets=["t1c"], device="cpu")
    assert again == first  # a rerun of the same case replaces its own outputs
    impute_case(other, model, out_dir=out, targets=["t1c"], device="cpu", name="TCGA-HT-7882", overwrite=True)
    record = json.loads(sidecar_path(first["t1c"]).read_text())
    assert record["input_files"]["t1n"] == str(other["t1n"].resolve())


def test_another_case_writing_first_is_checked_again_at_commit(model, tmp_path):
    out = tmp_path / "out"
    other = impute_case(_patient(tmp_path, "P2", 3), model, out_dir=tmp_path / "elsewhere", targets=["t1c"],
                        device="cpu", name="P1")["t1c"]

    def meanwhile(done: int, total: int) -> None:  # another run of another case commits while this one computes
        if not (out / other.name).exists():
            shutil.copy(other, out / other.name)
            shutil.copy(sidecar_path(other), out / sidecar_path(other).name)

    with pytest.raises(OutputError, match="is the output of another case"):
        impute_case(_patient(tmp_path, "P1", 0), model, out_dir=out, targets=["t1c"], device="cpu", progress=meanwhile)
    assert (out / other.name).read_bytes() == other.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted([other.name, sidecar_path(other).name])


def test_an_output_without_sidecar_is_not_replaced(model, tmp_path):
    out = tmp_path / "out"
    _write(out / "P1-t1c-synthetic-collagan.nii.gz", 5)
    before = (out / "P1-t1c-synthetic-collagan.nii.gz").read_bytes()
    with pytest.raises(OutputError, match="it has no readable sidecar recording its inputs"):
        impute_case(_patient(tmp_path, "P1", 0), model, out_dir=out, targets=["t1c"], device="cpu")
    assert (out / "P1-t1c-synthetic-collagan.nii.gz").read_bytes() == before


# ------------------------------------------------------------------------------------------- synthetic inputs

def test_a_synthetic_output_is_refused_as_input_and_allowed_on_request(model, tmp_path):
    inputs = _patient(tmp_path, "P1", 0)
    made = impute_case(inputs, model, out_dir=tmp_path / "first", targets=["t1c"], device="cpu")["t1c"]
    renamed = tmp_path / "P1" / "P1-t1c.nii.gz"  # a synthetic volume renamed like an acquired one
    shutil.copy(made, renamed)
    with pytest.raises(InputError, match=r"'t1c' is not an acquired scan \(its header's description reads "
                                         r"'SYNTHETIC t1c.*--allow-synthetic-input"):
        impute_case({"t1n": inputs["t1n"], "t1c": renamed}, model, out_dir=tmp_path / "out", targets=["t2f"],
                    device="cpu")
    assert not (tmp_path / "out").exists()
    # The tiny test model's voxels are no head; a head phantom under the same header shows what the flag does.
    write_volume(make_image(head_phantom(seed=4)), renamed, description=sitk.ReadImage(str(made)).GetMetaData(
        "descrip"))
    written = impute_case({"t1n": inputs["t1n"], "t1c": renamed}, model, out_dir=tmp_path / "out", targets=["t2f"],
                          device="cpu", allow_synthetic=True)
    record = json.loads(sidecar_path(written["t2f"]).read_text())
    assert record["collagan_synthetic_inputs"] == "t1c"
    assert any("'t1c' is not an acquired scan" in w for w in record["warnings"]), record["warnings"]


def test_a_sidecar_saying_synthetic_marks_the_file(model, tmp_path):
    inputs = _patient(tmp_path, "P1", 0)
    plain = tmp_path / "P1" / "P1-t1c.nrrd"  # a header without the label, the sidecar beside it with it
    _write(plain, 4)
    (tmp_path / "P1" / "P1-t1c.json").write_text(json.dumps({"collagan_synthetic": "true"}))
    assert read_input(plain).GetMetaData("collagan_synthetic") == "true"
    with pytest.raises(InputError, match="its sidecar P1-t1c.json says collagan_synthetic is true"):
        impute_case({"t1n": inputs["t1n"], "t1c": plain}, model, out_dir=tmp_path / "out", targets=["t2f"],
                    device="cpu")


# ------------------------------------------------------------------------------------ one scan given twice

def test_the_same_file_for_two_contrasts_is_refused(model, tmp_path):
    inputs = _patient(tmp_path, "P1", 0)
    link = tmp_path / "P1" / "link-t2f.nii.gz"
    link.symlink_to(inputs["t1n"])
    for second in (inputs["t1n"], link):
        with pytest.raises(InputError, match="are the same file"):
            impute_case({"t1n": inputs["t1n"], "t2f": second}, model, out_dir=tmp_path / "out", device="cpu")


def test_identical_content_for_two_contrasts_is_refused(model, tmp_path):
    inputs = _patient(tmp_path, "P1", 0)
    copy = tmp_path / "P1" / "P1-t2f.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(inputs["t1n"])), str(copy))
    with pytest.raises(InputError, match="'t1n' and 't2f' have identical voxels"):
        impute_case({"t1n": inputs["t1n"], "t2f": copy}, model, out_dir=tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_single_slice_in_any_orientation_is_refused(tmp_path, axis):
    shape = [40, 48, 12]
    shape[axis] = 1  # sagittal, coronal, axial (x, y, z)
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(make_image(head_phantom(tuple(reversed(shape)))), str(path))
    with pytest.raises(InputError, match="is 2-D"):
        read_volume(path)


# ------------------------------------------------------------------------------------- DICOM with several series

@pytest.fixture
def two_series(tmp_path) -> dict[str, str]:
    exam = tmp_path / "exam"
    return {"t2f": write_dicom_series(exam, head_phantom(seed=1), 3, "AX FLAIR", "9000", "120", "2500"),
            "t1n": write_dicom_series(exam, head_phantom(seed=0), 5, "AX T1 SE", "500", "12")}


def test_a_dicom_series_is_chosen_by_its_contrast(model, tmp_path, two_series):
    exam = tmp_path / "exam"
    assert {s["uid"]: s["contrast"] for s in dicom_series(exam)} == {v: k for k, v in two_series.items()}
    assert read_volume(exam, "t2f").GetMetaData("0020|000e") == two_series["t2f"]
    flair = read_volume(exam, "t2f")
    expected = head_phantom(seed=1).astype(np.int16)
    assert np.array_equal(sitk.GetArrayFromImage(flair), expected)
    written = impute_case({"t1n": exam, "t2f": exam}, model, out_dir=tmp_path / "out", targets=["t1c"], device="cpu",
                          name="P1")
    record = json.loads(sidecar_path(written["t1c"]).read_text())
    assert record["input_series_uid"] == {"t1n": two_series["t1n"], "t2f": two_series["t2f"]}


def test_the_timing_tags_tell_the_contrast_without_a_description(tmp_path):
    exam = tmp_path / "exam"
    write_dicom_series(exam, head_phantom(seed=1), 7, "", "9000", "120", "2500")
    write_dicom_series(exam, head_phantom(seed=0), 8, "", "500", "12", agent="gadobutrol")
    assert sorted((s["number"], s["contrast"]) for s in dicom_series(exam)) == [("7", "t2f"), ("8", "t1c")]


@pytest.mark.parametrize("description, tr, te, ti, sequence, agent, expected", [
    ("t2_tirm_tra_dark-fluid", "9000", "81", "2500", "SE\\IR", "", "t2f"),  # a T2 by its words, FLAIR by its TI
    ("T2W_TSE", "4500", "100", "", "SE", "", "t2w"),
    ("sag T1 FLAIR", "2000", "9", "800", "SE\\IR", "", "t1n"),  # T1-weighted, whatever its name says
    ("t1_mprage_sag", "2300", "2.3", "900", "GR\\IR", "", "t1n"),
    ("t1_vibe_tra", "5", "2", "", "GR", "gadobutrol", "t1c"),
    ("", "650", "20", "", "GR", "", None),  # a T2*-weighted gradient echo
    ("", "5000", "80", "", "EP", "", None),  # diffusion (EPI)
    ("ep2d_diff_3scan_trace", "5000", "80", "", "EP", "", None),
    ("AX SWI", "28", "20", "", "GR", "", None),
    ("AAHScout", "3", "1.4", "", "GR", "", None),
])
def test_series_contrast_from_description_and_timing(description, tr, te, ti, sequence, agent, expected):
    from CollaGANImputeLib.dicom import _contrast_from_tags

    info = {"description": description, "tr": tr, "te": te, "ti": ti, "sequence": sequence, "agent": agent}
    assert _contrast_from_tags(info) == expected


def test_an_ambiguous_dicom_folder_is_refused_listing_its_series(tmp_path, two_series):
    exam = tmp_path / "exam"
    with pytest.raises(InputError) as error:
        read_volume(exam, "t1c")
    message = str(error.value)
    assert "holds 2 DICOM series and none whose tags say 't1c'" in message
    assert "#3 'AX FLAIR' 40x48x12 (t2f)" in message and "#5 'AX T1 SE' 40x48x12 (t1n)" in message
    assert f"--input t1c={exam}#3" in message
    chosen = read_volume(f"{exam}#5", "t1c")  # the series by its number; the provenance notes what its tags say
    assert chosen.GetMetaData("0020|000e") == two_series["t1n"]
    assert "given as 't1c' but its tags say 't1n'" in chosen.GetMetaData("collagan_read_warning")


# ---------------------------------------------------------------------------------- concurrent commits

def _commit_set(folder: str, writer: int, barrier) -> None:
    outputs = OutputSet()
    for name in ("a.nii.gz", "a.json", "a.png"):
        outputs.stage(Path(folder) / name, lambda tmp: Path(tmp).write_text(f"{writer}\n" * 2000))
    barrier.wait()
    outputs.commit()


def test_concurrent_commits_of_one_set_are_never_mixed(tmp_path):
    context = multiprocessing.get_context("fork")
    rounds, writers = 10, 12
    for round_ in range(rounds):
        barrier = context.Barrier(writers)
        processes = [context.Process(target=_commit_set, args=(str(tmp_path), round_ * 100 + w, barrier))
                     for w in range(writers)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
        assert all(p.exitcode == 0 for p in processes)
        contents = {p.name: p.read_text() for p in tmp_path.iterdir()}
        assert sorted(contents) == ["a.json", "a.nii.gz", "a.png"], sorted(contents)  # complete, no temporaries
        assert len(set(contents.values())) == 1, f"round {round_}: a mixed set"
