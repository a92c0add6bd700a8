"""Reading checks (every refused input names the problem), atomic and labeled writes, case discovery."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import SimpleITK as sitk
from CollaGANImputeLib import InputError
from CollaGANImputeLib.io import find_case_files, read_volume, synthetic_filename, write_volume
from core_fixtures import head_phantom, make_image


def _write(tmp_path, image, name="v.nii.gz"):
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


def test_reads_nifti_nrrd_mha(tmp_path):
    array = head_phantom()
    for name in ("v.nii.gz", "v.nrrd", "v.mha"):
        image = read_volume(_write(tmp_path, make_image(array), name))
        assert image.GetSize() == (40, 48, 12)
        np.testing.assert_allclose(sitk.GetArrayFromImage(image), array)


@pytest.mark.parametrize(
    "image, message",
    [
        (sitk.GetImageFromArray(np.ones((32, 32), np.float32)), "is 2-D"),
        (sitk.JoinSeries([sitk.GetImageFromArray(np.ones((4, 8, 8), np.float32))] * 2), "4 dimensions"),
        (sitk.GetImageFromArray(np.ones((4, 8, 8, 3), np.float32), isVector=True), "3 components"),
        (sitk.GetImageFromArray(np.zeros((4, 8, 8), np.float32)), "all zeros"),
        (sitk.GetImageFromArray(np.full((4, 8, 8), np.nan, np.float32)), "NaN"),
    ],
    ids=["2d", "4d", "vector", "all-zero", "nan"],
)
def test_refused_volumes(tmp_path, image, message):
    path = _write(tmp_path, image, "bad.nrrd")
    with pytest.raises(InputError, match=message):
        read_volume(path)


def test_refuses_empty_missing_and_unreadable_files(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        read_volume(tmp_path / "empty.nii.gz")
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "absent.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="Cannot read"):
        read_volume(tmp_path / "junk.nii.gz")


def test_write_is_labeled_and_atomic(tmp_path):
    image = make_image(head_phantom())
    path = write_volume(image, tmp_path / "out" / "c-t1c-synthetic-collagan.nii.gz",
                        description="SYNTHETIC t1c imputed by CollaGAN", metadata={"collagan_synthetic": "true"})
    back = sitk.ReadImage(str(path))
    assert back.GetMetaData("descrip").startswith("SYNTHETIC")
    assert not image.HasMetaDataKey("collagan_synthetic"), "the caller's image is not modified"
    nrrd = sitk.ReadImage(str(write_volume(image, tmp_path / "x.nrrd", "SYNTHETIC", {"collagan_synthetic": "true"})))
    assert nrrd.GetMetaData("collagan_synthetic") == "true"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [path.name]


def test_nifti_gz_output_is_gzip_with_the_same_voxels_and_geometry(tmp_path):
    image = make_image(head_phantom().astype(np.float32) / 7)
    image.SetOrigin((3.0, -2.0, 1.5))
    path = write_volume(image, tmp_path / "c-t2f-synthetic-collagan.nii.gz", "SYNTHETIC")
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip magic: really compressed
    back = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    assert back.GetOrigin() == image.GetOrigin() and back.GetSpacing() == image.GetSpacing()
    assert back.GetMetaData("descrip") == "SYNTHETIC"


def test_failed_compression_leaves_nothing(tmp_path, monkeypatch):
    import CollaGANImputeLib.io as io_module

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(io_module.shutil, "copyfileobj", broken)
    with pytest.raises(OSError, match="disk full"):
        write_volume(make_image(head_phantom()), tmp_path / "c-t1c-synthetic-collagan.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        write_volume(make_image(head_phantom()), tmp_path / "out.unknownformat")
    assert list(tmp_path.iterdir()) == []


def test_find_case_files_ignores_synthetic_outputs(phantom_case):
    (phantom_case / synthetic_filename("case-001", "t1c")).write_bytes(b"x")
    files = find_case_files(phantom_case, ["t1n", "t1c", "t2f", "t2w"])
    assert {c: p.name for c, p in files.items()} == {
        "t1n": "case-001-t1n.nii.gz", "t1c": "case-001-t1c.nii.gz", "t2f": "case-001-t2f.nii.gz"}


def test_find_case_files_refuses_ambiguity(phantom_case):
    sitk.WriteImage(make_image(head_phantom()), str(phantom_case / "other-t1n.nrrd"))
    with pytest.raises(InputError, match="several files for contrast 't1n'"):
        find_case_files(phantom_case, ["t1n"])


def test_reading_does_not_modify_inputs(sample_case):
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sample_case.iterdir()}
    read_volume(sample_case / "TCGA-HT-7882-t1n.nii.gz")
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sample_case.iterdir()}
    assert before == after
