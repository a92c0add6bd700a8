"""Geometry: output on the reference grid whatever its orientation; resampling; pad/crop round trip."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CollaGANImputeLib import GeometryWarning, InputError, impute, load_model
from CollaGANImputeLib.geometry import (
    align_to_reference,
    from_canonical_array,
    pad_or_crop,
    to_canonical_array,
    undo_pad_or_crop,
)
from core_fixtures import head_phantom, make_image
from hypothesis import given, settings
from hypothesis import strategies as st


def _rotation(angles) -> tuple[float, ...]:
    transform = sitk.Euler3DTransform()
    transform.SetRotation(*angles)
    return tuple(np.array(transform.GetMatrix()).tolist())


def _signed_permutation(perm, signs) -> tuple[float, ...]:
    matrix = np.zeros((3, 3))
    for row, (col, sign) in enumerate(zip(perm, signs)):
        matrix[row, col] = sign
    return tuple(matrix.flatten().tolist())


geometries = st.tuples(
    st.tuples(*[st.floats(0.4, 3.0)] * 3),
    st.tuples(*[st.floats(-200, 200)] * 3),
    st.permutations([0, 1, 2]),
    st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3),
    st.tuples(*[st.floats(-0.3, 0.3)] * 3),
)


@settings(max_examples=15, deadline=None)
@given(geometries)
def test_canonical_round_trip_is_exact(geometry):
    spacing, origin, perm, signs, angles = geometry
    direction = (np.array(_signed_permutation(perm, signs)).reshape(3, 3)
                 @ np.array(_rotation(angles)).reshape(3, 3)).flatten()
    image = make_image(head_phantom(shape=(7, 9, 11)), spacing, origin, tuple(direction.tolist()))
    back = from_canonical_array(to_canonical_array(image), image)
    assert back.GetSize() == image.GetSize()
    assert back.GetSpacing() == image.GetSpacing()
    assert back.GetOrigin() == image.GetOrigin()
    assert back.GetDirection() == image.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_canonical_slices_are_axial():
    # A volume stored sagittally (index axis 0 = R->L... as direction columns) must be sliced along S.
    array = np.zeros((6, 7, 8), np.float32)
    image = make_image(array, direction=_signed_permutation([2, 0, 1], [1, 1, 1]))
    # direction columns: i->S? build expected via the physical axis that the canonical S axis follows
    canonical = to_canonical_array(image)
    assert sorted(canonical.shape) == sorted(array.shape)
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        sitk.DICOMOrient(image, "LPS").GetDirection())
    assert code == "LPS"


def test_impute_output_has_reference_geometry(tiny_model_path):
    model = load_model(tiny_model_path)
    direction = (np.array(_signed_permutation([1, 0, 2], [-1, 1, 1])).reshape(3, 3)
                 @ np.array(_rotation((0.1, -0.05, 0.2))).reshape(3, 3)).flatten().tolist()
    t1n = make_image(head_phantom(seed=1), (0.9, 1.1, 3.0), (10.0, -20.0, 5.0), tuple(direction))
    t2f = make_image(head_phantom(seed=2), (0.9, 1.1, 3.0), (10.0, -20.0, 5.0), tuple(direction))
    result = impute({"t1n": t1n, "t2f": t2f}, model, device="cpu")
    out = result.images["t1c"]
    for getter in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(out, getter)() == getattr(t1n, getter)(), getter
    assert out.GetMetaData("collagan_synthetic") == "true"
    assert out.GetMetaData("collagan_inputs") == "t1n,t2f"


def test_misgridded_input_is_resampled_with_warning():
    reference = make_image(head_phantom(shape=(10, 40, 40), noise=0.0), (1.0, 1.0, 2.0))
    coarse = sitk.Resample(reference, [20, 20, 10], sitk.Transform(), sitk.sitkLinear, (0, 0, 0), (2.0, 2.0, 2.0),
                           reference.GetDirection(), 0.0, sitk.sitkFloat32)
    with pytest.warns(GeometryWarning, match="t2f.*resampled onto it"):
        aligned = align_to_reference({"t1n": reference, "t2f": coarse})
    assert aligned["t2f"].GetSize() == reference.GetSize()
    assert aligned["t2f"].GetSpacing() == reference.GetSpacing()
    # the resampled volume still matches the original where both are defined (linear interpolation)
    centre = sitk.GetArrayFromImage(aligned["t2f"])[5, 10:30, 10:30]
    assert np.corrcoef(centre.ravel(), sitk.GetArrayFromImage(reference)[5, 10:30, 10:30].ravel())[0, 1] > 0.9


def test_same_grid_gives_no_warning():
    image = make_image(head_phantom())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        align_to_reference({"a": image, "b": make_image(head_phantom(seed=3))})


def test_non_overlapping_inputs_are_refused():
    a = make_image(head_phantom())
    b = make_image(head_phantom(), origin=(1000.0, 0.0, 0.0))
    with pytest.raises(InputError, match="not co-registered"):
        align_to_reference({"t1n": a, "t2f": b})


def test_named_reference_sets_output_grid(tiny_model_path):
    fine = make_image(head_phantom(shape=(10, 40, 40), seed=1))
    coarse = sitk.Resample(fine, [20, 20, 10], sitk.Transform(), sitk.sitkLinear, (0, 0, 0), (2.0, 2.0, 1.0),
                           fine.GetDirection(), 0.0, sitk.sitkFloat32)
    with pytest.warns(GeometryWarning):
        result = impute({"t1n": fine, "t2f": coarse}, load_model(tiny_model_path), reference="t2f", device="cpu")
    assert result.images["t1c"].GetSize() == coarse.GetSize()
    assert result.images["t1c"].GetSpacing() == coarse.GetSpacing()


@pytest.mark.parametrize("shape", [(256, 256), (240, 241), (300, 199), (17, 300)])
def test_pad_crop_round_trip(shape):
    x = torch.rand(2, 3, *shape)
    padded = pad_or_crop(x, (256, 256))
    assert padded.shape[-2:] == (256, 256)
    back = undo_pad_or_crop(padded, shape)
    assert back.shape == x.shape
    h, w = shape
    kept = (slice(max(0, (h - 256) // 2), max(0, (h - 256) // 2) + min(h, 256)),
            slice(max(0, (w - 256) // 2), max(0, (w - 256) // 2) + min(w, 256)))
    assert torch.equal(back[..., kept[0], kept[1]], x[..., kept[0], kept[1]])
