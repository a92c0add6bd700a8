"""prepare: BraTS 2021, BraTS 2023 and kaggle_3m LGG downloads become the case folders training reads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from training.collagan_train.cases import REPO_ROOT
from training.collagan_train.main import main as train_main
from training.collagan_train.prepare import prepare, recognise
from training.collagan_train.prepare_lgg import PrepareError

OPENMS = REPO_ROOT.parent / "shared" / "data" / "openms"
KAGGLE = REPO_ROOT / "training" / "tests" / "data" / "kaggle_3m"  # slices 9-11 of the sample patient
ALL = ("t1n", "t1c", "t2w", "t2f", "seg")
BRATS2021 = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": "seg"}
needs_openms = pytest.mark.skipif(not (OPENMS / "OpenMS-patient07").is_dir(), reason="OpenMS patients absent")


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def brats_like(patient: str, contrast: str, slices: int = 6, size: int = 240) -> sitk.Image:
    """Six axial slices of an OpenMS volume, zero-padded in-plane to BraTS's 240x240 at 1 mm."""
    image = sitk.ReadImage(str(OPENMS / patient / f"{patient}-{contrast}.nii.gz"))
    middle = image.GetSize()[2] // 2
    image = image[:, :, middle - slices // 2: middle - slices // 2 + slices]
    pad = [size - n for n in image.GetSize()[:2]]
    return sitk.ConstantPad(image, [pad[0] // 2, pad[1] // 2, 0], [pad[0] - pad[0] // 2, pad[1] - pad[1] // 2, 0])


def write_brats2021(root: Path, number: int, patient: str, drop: tuple[str, ...] = ()) -> Path:
    case = f"BraTS2021_{number:05d}"
    for contrast in ALL:
        if contrast not in drop:
            (root / case).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(brats_like(patient, contrast), str(root / case / f"{case}_{BRATS2021[contrast]}.nii.gz"))
    return root / case


def write_brats2023(root: Path, number: int, patient: str) -> Path:
    case = f"BraTS-GLI-{number:05d}-000"
    (root / case).mkdir(parents=True)
    for contrast in ALL:
        sitk.WriteImage(brats_like(patient, contrast), str(root / case / f"{case}-{contrast}.nii.gz"))
    return root / case


def test_brats_file_names_are_recognised_by_their_layout():
    assert recognise("BraTS2021_01234_flair.nii.gz") == ("BraTS2021_01234", "brats2021", "t2f")
    assert recognise("BraTS2021_01234_t2.nii") == ("BraTS2021_01234", "brats2021", "t2w")
    assert recognise("BraTS-MEN-00004-000-t1c.nii.gz") == ("BraTS-MEN-00004-000", "brats2023", "t1c")
    assert recognise("BraTS-GLI-00004-000-seg.nii.gz") == ("BraTS-GLI-00004-000", "brats2023", "seg")
    for other in ("case-t1c-synthetic-collagan.nii.gz", "notes.txt", "BraTS2021_01234_dwi.nii.gz", ".x-t1n.nii"):
        assert recognise(other) is None


@needs_openms
def test_brats2021_cases_become_case_folders_and_the_contrast_set_comes_from_the_data(tmp_path, capsys):
    source = tmp_path / "RSNA_ASNR_MICCAI_BraTS2021_TrainingData"
    write_brats2021(source, 7, "OpenMS-patient07")
    write_brats2021(source, 19, "OpenMS-patient19", drop=("t2w",))
    before = _digest(source)

    summary = prepare(source, tmp_path / "common")
    # Default: the contrasts every case has; the one some case lacks is named with the flag that keeps it.
    assert summary["contrasts"] == ["t1n", "t1c", "t2f"] and summary["layout"] == ["brats2021"]
    assert summary["complete"] == ["BraTS2021_00007", "BraTS2021_00019"] and summary["incomplete"] == {}
    assert "Left out t2w" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "common" / "complete" / "BraTS2021_00007").iterdir()) == [
        f"BraTS2021_00007-{c}.nii.gz" for c in ("seg", "t1c", "t1n", "t2f")]

    train_main(["prepare", str(source), str(tmp_path / "all"), "--contrasts", "t1n,t1c,t2w,t2f"])
    out = tmp_path / "all"
    cohort = json.loads((out / "cohort.json").read_text())
    assert cohort["complete"] == ["BraTS2021_00007"] and cohort["incomplete"] == {"BraTS2021_00019": ["t2w"]}
    assert cohort["contrasts"] == ["t1n", "t1c", "t2w", "t2f"]
    assert not (out / "incomplete" / "BraTS2021_00019" / "BraTS2021_00019-t2w.nii.gz").exists()
    for contrast in ALL:  # voxels, type and geometry as acquired
        ours = sitk.ReadImage(str(out / "complete" / "BraTS2021_00007" / f"BraTS2021_00007-{contrast}.nii.gz"))
        theirs = sitk.ReadImage(str(source / "BraTS2021_00007" / f"BraTS2021_00007_{BRATS2021[contrast]}.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs)), contrast
        assert ours.GetSize() == (240, 240, 6) and ours.GetPixelID() == theirs.GetPixelID()
        assert np.allclose(ours.GetOrigin(), theirs.GetOrigin()) and ours.GetDirection() == theirs.GetDirection()
    assert _digest(source) == before  # the source is only read


@needs_openms
def test_brats2023_cases_are_kept_on_rerun_and_replaced_with_overwrite(tmp_path, capsys):
    source = tmp_path / "download" / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
    write_brats2023(source, 7, "OpenMS-patient07")
    write_brats2023(source, 19, "OpenMS-patient19")
    out = tmp_path / "cohort"
    summary = prepare(tmp_path / "download", out, log=None)
    assert summary["contrasts"] == ["t1n", "t1c", "t2w", "t2f"] and summary["layout"] == ["brats2023"]
    assert summary["complete"] == ["BraTS-GLI-00007-000", "BraTS-GLI-00019-000"]
    written = out / "complete" / "BraTS-GLI-00007-000" / "BraTS-GLI-00007-000-t2w.nii.gz"
    stamp = written.stat().st_mtime_ns
    assert prepare(source, out, log=None)["skipped"] == summary["complete"]
    assert written.stat().st_mtime_ns == stamp
    prepare(source, out, overwrite=True, log=None)
    assert written.stat().st_mtime_ns != stamp
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary file left behind


def test_the_kaggle_lgg_download_is_read_as_prepare_lgg_reads_it(tmp_path):
    summary = prepare(KAGGLE, tmp_path / "lgg", log=None)
    assert summary["layout"] == ["lgg"] and summary["contrasts"] == ["t1n", "t1c", "t2f"]
    assert summary["complete"] == ["TCGA-HT-7882"]
    from training.collagan_train.prepare_lgg import prepare_lgg

    prepare_lgg(KAGGLE, tmp_path / "reference", log=None)
    for contrast in ("t1n", "t1c", "t2f", "seg"):
        name = f"TCGA-HT-7882-{contrast}.nii.gz"
        ours = sitk.ReadImage(str(tmp_path / "lgg" / "complete" / "TCGA-HT-7882" / name))
        reference = sitk.ReadImage(str(tmp_path / "reference" / "complete" / "TCGA-HT-7882" / name))
        assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(reference)), contrast


@needs_openms
def test_bad_sources_get_one_line_naming_the_problem_and_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"^error: No cases found in .*BraTS 2021 files"):
        train_main(["prepare", str(tmp_path / "empty"), str(tmp_path / "out")])
    source = tmp_path / "src"
    write_brats2023(source, 7, "OpenMS-patient07")
    with pytest.raises(SystemExit, match=r"--contrasts names \['dwi'\], which no case has; the cases have t1n,"):
        train_main(["prepare", str(source), str(tmp_path / "out"), "--contrasts", "t1n,dwi"])
    with pytest.raises(SystemExit, match="fewer than two contrasts"):
        train_main(["prepare", str(source), str(tmp_path / "out"), "--contrasts", "t2w"])
    with pytest.raises(SystemExit, match="outside the source folder"):
        train_main(["prepare", str(source), str(source / "prepared")])
    sitk.WriteImage(brats_like("OpenMS-patient19", "t1n"), str(source / "BraTS-GLI-00007-000" / "other-t1n.nii.gz"))
    with pytest.raises(PrepareError, match="holds files of several cases"):
        prepare(source, tmp_path / "out", log=None)
    assert not (tmp_path / "out").exists()  # nothing written for a refused source


LGG = REPO_ROOT.parent / "shared" / "data" / "lgg"


@pytest.mark.skipif(not (LGG / "incomplete" / "TCGA-DU-6407").is_dir(), reason="LGG cases absent")
def test_lgg_case_folders_prepare_with_the_incomplete_case_apart_and_load_in_the_trainer(tmp_path, tiny_cfg):
    import shutil

    from training.collagan_train.data_loader import load_data
    from training.collagan_train.stores import prepare_slices

    source = tmp_path / "lgg"
    for kind, case in (("complete", "TCGA-CS-4941"), ("complete", "TCGA-CS-4942"), ("incomplete", "TCGA-DU-6407")):
        shutil.copytree(LGG / kind / case, source / kind / case)
    assert prepare(source, tmp_path / "two", log=None)["contrasts"] == ["t1n", "t2f"]  # t1c: not in every case
    summary = prepare(source, tmp_path / "three", contrasts=["t1n", "t1c", "t2f"], log=None)
    assert summary["complete"] == ["TCGA-CS-4941", "TCGA-CS-4942"]
    assert summary["incomplete"] == {"TCGA-DU-6407": ["t1c"]}
    cfg = tiny_cfg(f"data_dir={tmp_path / 'three'}", f"split_file={tmp_path / 'split.json'}",
                   "val_cases_required=[]", "n_val=1", f"cache_dir={tmp_path / 'cache'}")
    train, val, split = load_data(cfg)
    assert sorted(split["train"] + split["val"]) == summary["complete"]
    stack, *_ = prepare_slices(LGG / "complete" / split["train"][0], cfg.contrasts, cfg.min_foreground)
    assert np.array_equal(np.asarray(train.images), stack.astype(np.float16))  # the same slices as the source's
