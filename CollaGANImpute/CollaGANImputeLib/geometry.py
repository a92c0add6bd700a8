"""Geometry: one grid for all inputs, axial slicing in a canonical orientation, in-plane pad/crop.

Example:
    >>> grid = align_to_reference({"t1n": t1n, "t2f": t2f}, reference="t1n")   # doctest: +SKIP
    >>> axial = to_canonical_array(grid["t2f"])                                  # (slices, rows, cols)
    >>> image = from_canonical_array(axial, reference=grid["t1n"])               # same geometry as t1n
"""

from __future__ import annotations

import warnings
from typing import Mapping, Optional

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .errors import GeometryWarning, InputError

#: Axial slices of an LPS-oriented volume: array index order (S, P, L), rows anterior→posterior.
CANONICAL_ORIENTATION = "LPS"
_TOLERANCE = 1e-4


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """True when both images have the same size, spacing, origin and direction (to a small tolerance)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=_TOLERANCE, atol=_TOLERANCE)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=_TOLERANCE, atol=_TOLERANCE * 10)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=_TOLERANCE)
    )


def _physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    size = np.array(image.GetSize()) - 1
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
               for corner in np.array(np.meshgrid(*[[0, s] for s in size])).T.reshape(-1, 3)]
    corners = np.array(corners)
    return corners.min(axis=0), corners.max(axis=0)


def _overlap(a: sitk.Image, b: sitk.Image) -> bool:
    lo_a, hi_a = _physical_bounds(a)
    lo_b, hi_b = _physical_bounds(b)
    return bool(np.all(np.minimum(hi_a, hi_b) >= np.maximum(lo_a, lo_b)))


def align_to_reference(images: Mapping[str, sitk.Image], reference: Optional[str] = None) -> dict[str, sitk.Image]:
    """Put every image on the reference's grid (default: the first), as float32.

    Images already on that grid are only cast; others are resampled (linear) with a GeometryWarning that names
    them. Images that do not overlap the reference in physical space are refused: they are not co-registered.
    """
    if not images:
        raise InputError("No input volumes were given.")
    names = list(images)
    reference = reference or names[0]
    if reference not in images:
        raise InputError(f"Reference '{reference}' is not among the inputs {names}.")
    ref = images[reference]
    aligned: dict[str, sitk.Image] = {}
    resampled = []
    for name, image in images.items():
        if same_grid(image, ref):
            out = sitk.Cast(image, sitk.sitkFloat32)
            out.CopyInformation(ref)
        else:
            if not _overlap(image, ref):
                raise InputError(
                    f"'{name}' does not overlap '{reference}' in physical space: the volumes are not "
                    "co-registered. Register them first (e.g. Slicer's General Registration (BRAINS) or "
                    "SimpleITK's ImageRegistrationMethod)."
                )
            out = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            resampled.append(name)
        aligned[name] = out
    if resampled:
        warnings.warn(
            f"{', '.join(resampled)} not on the grid of '{reference}' (size/spacing/origin/direction differ): "
            f"resampled onto it with linear interpolation. The output has the geometry of '{reference}'.",
            GeometryWarning, stacklevel=2,
        )
    return aligned


def to_canonical_array(image: sitk.Image) -> np.ndarray:
    """Voxels as a float32 array of axial slices (S, P, L) whatever the file's orientation."""
    if _orientation(image) != CANONICAL_ORIENTATION:
        image = sitk.DICOMOrient(image, CANONICAL_ORIENTATION)
    return sitk.GetArrayFromImage(image).astype(np.float32, copy=False)


def _orientation(image: sitk.Image) -> str:
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def from_canonical_array(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Inverse of :func:`to_canonical_array`: an image with exactly the reference's geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    code = _orientation(reference)
    if code != CANONICAL_ORIENTATION:
        image.CopyInformation(sitk.DICOMOrient(reference, CANONICAL_ORIENTATION))
        image = sitk.DICOMOrient(image, code)
    if image.GetSize() != reference.GetSize():  # pragma: no cover - DICOMOrient only permutes/flips
        raise AssertionError("re-orientation changed the volume size")
    image.CopyInformation(reference)  # exact copy: removes rounding of origin/direction
    return image


def _center_offsets(current: int, target: int) -> tuple[int, int]:
    """(before, after) padding (positive) or cropping (negative) to go from current to target."""
    diff = target - current
    before = diff // 2
    return before, diff - before


def pad_or_crop(slices: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Center zero-pad or crop the last two dimensions of ``slices`` to ``size``."""
    (top, bottom), (left, right) = (_center_offsets(slices.shape[-2], size[0]),
                                    _center_offsets(slices.shape[-1], size[1]))
    return F.pad(slices, (left, right, top, bottom))  # negative pads crop


def undo_pad_or_crop(slices: torch.Tensor, original: tuple[int, int]) -> torch.Tensor:
    """Exact inverse of :func:`pad_or_crop` back to ``original``; cropped-away borders come back as zeros."""
    (top, bottom), (left, right) = (_center_offsets(original[0], slices.shape[-2]),
                                    _center_offsets(original[1], slices.shape[-1]))
    return F.pad(slices, (-left, -right, -top, -bottom))
