"""Scans larger than the model's field: slices brought to the model's pixel grid and back, never cropped
silently; a warning when the head does not fit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CollaGANImputeLib import GeometryWarning, impute, load_model
from CollaGANImputeLib.geometry import SliceGrid, pad_or_crop, undo_pad_or_crop
from CollaGANImputeLib.io import read_volume
from CollaGANImputeLib.resources import bundled_models
from CollaGANImputeLib.scene.job import ChunkedImputation
from core_fixtures import head_phantom, make_image


def _upsample(image: sitk.Image, factor: int = 2, dtype=sitk.sitkUInt8) -> sitk.Image:
    """The same field at 1/factor the pixel size (e.g. a 512x512 scan at 0.5 mm from 256x256 at 1 mm)."""
    size = [image.GetSize()[0] * factor, image.GetSize()[1] * factor, image.GetSize()[2]]
    spacing = [image.GetSpacing()[0] / factor, image.GetSpacing()[1] / factor, image.GetSpacing()[2]]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                         image.GetDirection(), 0.0, dtype)


def test_on_grid_slices_keep_the_exact_pad_crop_path():
    x = torch.rand(2, 6, 240, 250)
    grid = SliceGrid((240, 250), (1.05, 0.95), (256, 256), (1.0, 1.0))  # within the 10 % tolerance
    assert not grid.resampled
    assert torch.equal(grid.to_model(x), pad_or_crop(x, (256, 256)))
    assert torch.equal(grid.from_model(grid.to_model(x)), undo_pad_or_crop(pad_or_crop(x, (256, 256)), (240, 250)))
    assert grid.coverage().all()


def test_resampled_grid_round_trip_and_coverage():
    grid = SliceGrid((512, 512), (0.5, 0.5), (256, 256), (1.0, 1.0))
    assert grid.resampled and grid.coverage().all()  # 512 x 0.5 mm = the model's 256 mm field
    smooth = torch.from_numpy(head_phantom((1, 512, 512), noise=0.0)[None] / 100)  # values 1-1.8 in the head
    back = grid.from_model(grid.to_model(smooth))
    assert back.shape == smooth.shape and grid.to_model(smooth).shape == (1, 1, 256, 256)
    assert float((back - smooth).abs().mean()) < 0.02  # blurred edges only
    wide = SliceGrid((600, 600), (0.5, 0.5), (256, 256), (1.0, 1.0))  # 300 mm: 22 mm each side fall outside
    assert wide.coverage().sum() == 512 * 512
    assert wide.outside_field(np.ones((1, 600, 600), bool)) == 600 * 600 - 512 * 512


@pytest.mark.skipif(not bundled_models(), reason="needs the bundled model")
def test_512_at_half_a_millimetre_gives_the_256_result(sample_case):
    model = bundled_models()[0].load()
    images = {c: read_volume(sample_case / f"TCGA-HT-7882-{c}.nii.gz")[:, :, 12:17] for c in ("t1n", "t2f")}
    fine = {c: _upsample(image) for c, image in images.items()}  # 512 x 512 at 0.5 mm: twice the model's field
    torch.set_num_threads(1)
    original = impute(images, model, targets=["t1c"], device="cpu", precision="fp32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = impute(fine, model, targets=["t1c"], device="cpu", precision="fp32")
    assert any("resampled in-plane" in str(w.message) for w in caught)
    assert not any("does not fit" in str(w.message) for w in caught)
    output = result.images["t1c"]
    assert output.GetSize() == (512, 512, 5) and output.GetSpacing()[:2] == (0.5, 0.5)
    head = result.case.mask
    assert int(np.count_nonzero(sitk.GetArrayViewFromImage(output)[head] == 0)) == 0  # no fill value in the head
    back = sitk.GetArrayFromImage(sitk.Resample(output, original.images["t1c"], sitk.Transform(), sitk.sitkLinear))
    reference, mask = sitk.GetArrayFromImage(original.images["t1c"]), original.case.mask
    nmse = float(((back - reference)[mask] ** 2).sum() / (reference[mask] ** 2).sum())
    assert nmse < 0.01, nmse  # resampling error only (the model's own NMSE against the real T1+Gd is ~0.08)


def test_head_larger_than_the_field_is_warned_about(tiny_model_path):
    model = load_model(tiny_model_path)
    array = head_phantom((6, 320, 320))  # 320 mm at 1 mm: the head reaches beyond the model's 256 mm
    images = {"t1n": make_image(array), "t2f": make_image(head_phantom((6, 320, 320), seed=1))}
    with pytest.warns(GeometryWarning, match="does not fit the field of view"):
        result = impute(images, model, targets=["t1c"], device="cpu")
    assert "does not fit" in result.images["t1c"].GetMetaData("collagan_warnings")


def test_slicer_job_resamples_like_the_pipeline(tiny_model_path):
    model = load_model(tiny_model_path)
    images = {c: _upsample(make_image(head_phantom((4, 96, 80), seed=i)), dtype=sitk.sitkFloat32)
              for i, c in enumerate(("t1n", "t2f"))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        job = ChunkedImputation(images, model, "t1c", device="cpu", precision="fp32").run()
        core = impute(images, model, targets=["t1c"], device="cpu", precision="fp32")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(job.images["t1c"]), sitk.GetArrayFromImage(core.images["t1c"]))
    assert "resampled in-plane" in job.images["t1c"].GetMetaData("collagan_warnings")
