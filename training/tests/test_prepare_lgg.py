"""prepare-lgg: the public kaggle_3m slices become the BraTS-named NIfTI cases the repository ships and trains on."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from training.collagan_train.cases import REPO_ROOT
from training.collagan_train.main import main as train_main
from training.collagan_train.prepare_lgg import PrepareError, case_name, prepare_lgg, read_patient

SAMPLE = REPO_ROOT / "Resources" / "SampleData" / "TCGA-HT-7882"
SOURCE = REPO_ROOT / "training" / "tests" / "data" / "kaggle_3m"      # slices 9-11 of the sample patient
FULL_SOURCE = REPO_ROOT.parent / "shared" / "data" / "lgg" / "kaggle_3m_sample"  # all 32, where present
PATIENT = "TCGA_HT_7882_19970125"
FILES = ["TCGA-HT-7882-t1n.nii.gz", "TCGA-HT-7882-t1c.nii.gz", "TCGA-HT-7882-t2f.nii.gz", "TCGA-HT-7882-seg.nii.gz"]


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _copy_source(tmp_path: Path) -> Path:
    copy = tmp_path / "kaggle_3m"
    shutil.copytree(SOURCE, copy)
    return copy / PATIENT


def test_case_names_drop_the_date() -> None:
    assert case_name("TCGA_HT_7882_19970125") == "TCGA-HT-7882"
    assert case_name("TCGA_DU_A5TR_19970726") == "TCGA-DU-A5TR"
    assert case_name("TCGA_CS_4941") == "TCGA-CS-4941"


def test_committed_slices_convert_to_the_sample_cases_slices(tmp_path: Path) -> None:
    before = _digest(SOURCE)
    summary = prepare_lgg(SOURCE, tmp_path / "lgg", log=None)
    assert summary == {"complete": ["TCGA-HT-7882"], "incomplete": {}, "skipped": []}
    case = tmp_path / "lgg" / "complete" / "TCGA-HT-7882"
    assert sorted(p.name for p in case.iterdir()) == sorted(FILES)
    for name in FILES:
        ours, shipped = sitk.ReadImage(str(case / name)), sitk.ReadImage(str(SAMPLE / name))
        # slices 9, 10, 11 in numeric order (a text sort would put 9 last): the shipped volume's z = 8..10
        assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(shipped)[8:11]), name
        assert ours.GetPixelID() == shipped.GetPixelID() == sitk.sitkUInt8
        assert ours.GetSpacing() == shipped.GetSpacing() == (1.0, 1.0, 1.0)
        assert ours.GetOrigin() == shipped.GetOrigin() and ours.GetDirection() == shipped.GetDirection()
    assert np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(case / FILES[3])))).tolist() == [0, 1]
    assert _digest(SOURCE) == before  # the source is only read


@pytest.mark.skipif(not FULL_SOURCE.is_dir(), reason="the sample patient's full kaggle_3m folder is absent")
def test_full_source_folder_converts_byte_for_byte_to_the_sample_case(tmp_path: Path) -> None:
    train_main(["prepare-lgg", str(FULL_SOURCE), str(tmp_path / "lgg")])
    case = tmp_path / "lgg" / "complete" / "TCGA-HT-7882"
    for name in FILES:
        assert (case / name).read_bytes() == (SAMPLE / name).read_bytes(), name


def _rewrite(path: Path, change) -> None:
    rgb = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    sitk.WriteImage(sitk.GetImageFromArray(change(rgb.copy()), isVector=True), str(path))


def test_a_channel_that_is_flair_everywhere_is_a_missing_contrast(tmp_path: Path) -> None:
    folder = _copy_source(tmp_path)
    for n in (9, 10, 11):  # the source's stand-in for a missing post-contrast T1: a copy of FLAIR
        _rewrite(folder / f"{PATIENT}_{n}.tif", lambda a: np.concatenate([a[..., :2], a[..., 1:2]], axis=-1))
    summary = prepare_lgg(folder.parent, tmp_path / "lgg", log=None)
    assert summary["incomplete"] == {"TCGA-HT-7882": ["t1c"]} and not summary["complete"]
    case = tmp_path / "lgg" / "incomplete" / "TCGA-HT-7882"
    assert sorted(p.name for p in case.iterdir()) == sorted(set(FILES) - {"TCGA-HT-7882-t1c.nii.gz"})
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(case / FILES[0]))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / FILES[0])))[8:11])


def test_a_channel_equal_to_flair_in_one_slice_only_is_kept(tmp_path: Path) -> None:
    folder = _copy_source(tmp_path)
    _rewrite(folder / f"{PATIENT}_10.tif", lambda a: np.concatenate([a[..., :2], a[..., 1:2]], axis=-1))
    assert read_patient(folder).missing == []


def test_a_hole_or_a_lone_file_is_refused_with_the_slice_named(tmp_path: Path) -> None:
    folder = _copy_source(tmp_path)
    (folder / f"{PATIENT}_10_mask.tif").unlink()
    with pytest.raises(PrepareError, match=r"slice\(s\) \[10\] lack"):
        prepare_lgg(folder.parent, tmp_path / "lgg", log=None)
    (folder / f"{PATIENT}_10.tif").unlink()
    with pytest.raises(PrepareError, match=r"slice\(s\) \[10\] are missing between 9 and 11"):
        prepare_lgg(folder.parent, tmp_path / "lgg", log=None)
    assert not (tmp_path / "lgg").exists() or not any((tmp_path / "lgg").rglob("*.nii.gz"))


def test_not_a_kaggle_folder_exits_with_a_message(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="No patient folders"):
        train_main(["prepare-lgg", str(tmp_path), str(tmp_path / "out")])


def test_rerun_keeps_existing_cases_and_overwrite_replaces_them(tmp_path: Path) -> None:
    out = tmp_path / "lgg"
    prepare_lgg(SOURCE, out, log=None)
    case = out / "complete" / "TCGA-HT-7882"
    (case / "note.txt").write_text("kept?")
    assert prepare_lgg(SOURCE, out, log=None)["skipped"] == ["TCGA-HT-7882"]
    assert (case / "note.txt").exists()
    assert prepare_lgg(SOURCE, out, overwrite=True, log=None)["complete"] == ["TCGA-HT-7882"]
    assert not (case / "note.txt").exists() and not list(case.parent.glob(".*.tmp"))
