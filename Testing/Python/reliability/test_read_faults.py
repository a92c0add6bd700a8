"""Reading faults ITK lets through: truncated or damaged NIfTI, NaN/Inf in NIfTI, float64 overflow."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk
from CollaGANImputeLib import InputError
from CollaGANImputeLib.io import read_volume
from core_fixtures import head_phantom, make_image


def _nifti(tmp_path, array, name="v.nii.gz"):
    path = tmp_path / name
    sitk.WriteImage(make_image(array), str(path))
    return path


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16])
@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii"])
def test_truncated_nifti_is_refused(tmp_path, name, dtype):
    path = _nifti(tmp_path, head_phantom().astype(dtype), name)
    data = path.read_bytes()
    cut = tmp_path / f"cut-{name}"
    cut.write_bytes(data[: len(data) // 2])
    # ITK alone reads the missing half as zeros, without an error: the fault this check exists for.
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(cut))).size == head_phantom().size
    with pytest.raises(InputError, match="truncated"):
        read_volume(cut)
    read_volume(path)  # the whole file passes


def test_corrupt_gzip_stream_is_refused(tmp_path):
    path = _nifti(tmp_path, head_phantom())
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # the CRC in the trailer: the voxels decompress, the check sum does not match
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="damaged"):
        read_volume(path)


def test_multi_member_gzip_is_accepted(tmp_path):
    path = _nifti(tmp_path, head_phantom().astype(np.int16))
    plain = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(plain[:1000]) + gzip.compress(plain[1000:]))  # as pigz or cat may write it
    assert read_volume(path).GetSize() == (40, 48, 12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_nifti_is_refused(tmp_path, bad):
    array = head_phantom()
    array[3, 20, 20] = bad
    path = _nifti(tmp_path, array)
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()  # ITK turned it into 0
    with pytest.raises(InputError, match="1 NaN or infinite voxels"):
        read_volume(path)
    from CollaGANImputeLib.io import check_nifti_data

    assert check_nifti_data(_nifti(tmp_path, head_phantom(), "ok.nii.gz")) is True


def test_all_nan_nifti_is_reported_as_nan_not_as_zeros(tmp_path):
    path = _nifti(tmp_path, np.full((4, 8, 8), np.nan, np.float32))
    with pytest.raises(InputError, match="NaN") as refused:
        read_volume(path)
    assert "all zeros" not in str(refused.value)


def test_float64_beyond_float32_range_names_the_cause(tmp_path):
    path = _nifti(tmp_path, head_phantom().astype(np.float64) * 1e298)
    with pytest.raises(InputError, match="float32 range"):
        read_volume(path)
    read_volume(_nifti(tmp_path, head_phantom().astype(np.float64) * 1e30, "ok.nii.gz"))  # fits float32
