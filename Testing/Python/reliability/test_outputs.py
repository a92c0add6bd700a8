"""Outputs: all or nothing, never over an input, checked before inference, umask, case names, sidecar."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat

import pytest
import SimpleITK as sitk
from CollaGANImputeLib import InputError, impute_case, load_model
from CollaGANImputeLib.errors import OutputError
from CollaGANImputeLib.io import OutputSet, case_name_from_files, write_volume
from core_fixtures import head_phantom, make_image


@pytest.fixture
def model(tiny_model_path):
    return load_model(tiny_model_path)


@pytest.fixture
def one_input_case(tmp_path, phantom_case):
    """A case with t1n only: impute writes two targets (t1c and t2f)."""
    folder = tmp_path / "P1"
    folder.mkdir()
    shutil.copy(phantom_case / "case-001-t1n.nii.gz", folder / "P1-t1n.nii.gz")
    return folder


def _listing(folder):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_a_failed_second_target_leaves_nothing(model, one_input_case, tmp_path, monkeypatch):
    out = tmp_path / "o4"
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):  # the second rename of the commit fails (e.g. the disk fills up)
        if str(dst).endswith(".nii.gz"):
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OutputError, match="No space left on device.*ENOSPC.*nothing was written"):
        impute_case(one_input_case, model, out_dir=out, device="cpu")
    assert _listing(out) == [] and not out.exists()  # the folder it created is gone too


def test_interrupt_during_commit_restores_previous_outputs(tmp_path, monkeypatch):
    first, second = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    first.write_bytes(b"previous a")
    image = make_image(head_phantom())
    real_replace = os.replace

    def interrupted(src, dst):
        if str(dst) == str(second):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    with OutputSet() as outputs:
        write_volume(image, first, outputs=outputs)
        write_volume(image, second, outputs=outputs)
        monkeypatch.setattr(os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            outputs.commit()
    monkeypatch.undo()
    assert first.read_bytes() == b"previous a" and not second.exists()
    assert _listing(tmp_path) == ["a.nii.gz"]


def test_a_folder_in_the_way_is_refused_before_inference(model, one_input_case, tmp_path, monkeypatch):
    out = tmp_path / "o4b"
    (out / "P1-t2f-synthetic-collagan.nii.gz").mkdir(parents=True)
    import CollaGANImputeLib.pipeline as pipeline

    monkeypatch.setattr(pipeline, "impute", lambda *a, **k: pytest.fail("inference ran before the check"))
    with pytest.raises(OutputError, match="folder is in the way"):
        impute_case(one_input_case, model, out_dir=out, device="cpu")
    assert _listing(out) == ["P1-t2f-synthetic-collagan.nii.gz"]


def test_output_folder_problems_are_found_before_inference(model, one_input_case, tmp_path, monkeypatch):
    import CollaGANImputeLib.pipeline as pipeline

    monkeypatch.setattr(pipeline, "impute", lambda *a, **k: pytest.fail("inference ran before the check"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        impute_case(one_input_case, model, out_dir=a_file, device="cpu")
    with pytest.raises(OutputError, match="Cannot write in the output folder /proc"):
        impute_case(one_input_case, model, out_dir="/proc/collagan-out", device="cpu")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputError, match="Permission denied"):
            impute_case(one_input_case, model, out_dir=locked / "out", device="cpu")


def test_output_equal_to_an_input_is_refused(model, sample_case, tmp_path):
    folder = tmp_path / "X"
    folder.mkdir()
    for contrast in ("t1n", "t2f"):
        shutil.copy(sample_case / f"TCGA-HT-7882-{contrast}.nii.gz", folder / f"{contrast}.nii.gz")
    victim = folder / "X-t1c-synthetic-collagan.nii.gz"
    shutil.copy(sample_case / "TCGA-HT-7882-t1c.nii.gz", victim)
    before = victim.read_bytes()
    inputs = {"t1n": folder / "t1n.nii.gz", "t2f": folder / "t2f.nii.gz", "t1c": victim}
    with pytest.raises(InputError, match="would overwrite an input"):
        impute_case(inputs, model, targets=["t1c"], device="cpu")
    assert victim.read_bytes() == before


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "-t1c"])
def test_unsafe_case_names_are_refused(model, phantom_case, tmp_path, name):
    with pytest.raises(InputError, match="cannot name output files"):
        impute_case({"t1n": phantom_case / "case-001-t1n.nii.gz"}, model, out_dir=tmp_path / "a" / "out", name=name,
                    device="cpu")
    assert not (tmp_path / "a").exists()


def test_case_name_from_input_files(tmp_path):
    assert case_name_from_files({"t1n": "TCGA-HT-7882-t1n.nii.gz", "t2f": "TCGA-HT-7882-t2f.nii.gz"}) \
        == "TCGA-HT-7882"
    assert case_name_from_files({"t1n": "a.nii.gz", "t2f": "b.nrrd"}) == "a"  # the README's example
    assert case_name_from_files({"t1n": tmp_path / "X" / "t1n.nii.gz", "t2f": tmp_path / "X" / "t2f.nii.gz"}) == "X"
    assert case_name_from_files({"t1n": "pat_12_T1.nii.gz", "t2f": "pat_12_FLAIR.nii.gz"}) == "pat_12"


def test_readme_example_gets_a_case_name(model, phantom_case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(phantom_case / "case-001-t1n.nii.gz", "a.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(phantom_case / "case-001-t2f.nii.gz")), "b.nrrd")
    written = impute_case({"t1n": "a.nii.gz", "t2f": "b.nrrd"}, model, out_dir="out", targets=["t1c"], device="cpu")
    assert written["t1c"].name == "a-t1c-synthetic-collagan.nii.gz"


def test_outputs_follow_the_umask(model, one_input_case, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "shared"
        written = impute_case(one_input_case, model, out_dir=out, targets=["t1c"], device="cpu", montage=True)
        for path in out.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        os.chmod(written["t1c"], 0o644)
        os.umask(0o002)
        impute_case(one_input_case, model, out_dir=out, targets=["t1c"], device="cpu")  # overwrite
        assert stat.S_IMODE(written["t1c"].stat().st_mode) == 0o664
    finally:
        os.umask(old)


def test_json_sidecar_has_the_provenance(model, one_input_case, tmp_path):
    written = impute_case(one_input_case, model, out_dir=tmp_path / "out", targets=["t1c"], device="cpu")
    sidecar = written["t1c"].with_name("P1-t1c-synthetic-collagan.json")
    record = json.loads(sidecar.read_text())
    for key in ("collagan_synthetic", "collagan_target", "collagan_inputs", "collagan_model",
                "collagan_model_sha256", "collagan_created", "collagan_software", "collagan_input_check"):
        assert key in record, key
    assert record["collagan_synthetic"] == "true" and record["collagan_target"] == "t1c"
    assert record["model"]["sha256"] == model.sha256 and len(record["model"]["weights_sha256"]) == 64
    assert record["input_check"]["status"] == "not checked"  # the tiny model's card has no training profile
    assert record["input_files"]["t1n"].endswith("P1-t1n.nii.gz")
