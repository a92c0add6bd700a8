"""Geometry: one grid for all inputs, axial slicing in a canonical orientation, in-plane pad/crop.

Example:
    >>> grid = align_to_reference({"t1n": t1n, "t2f": t2f}, reference="t1n")   # doctest: +SKIP
    >>> axial = to_canonical_array(grid["t2f"])                                  # (slices, rows, cols)
    >>> image = from_canonical_array(axial, reference=grid["t1n"])               # same geometry as t1n
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Optional, Sequence, TypeVar

import numpy as np
import SimpleITK as sitk

from .errors import GeometryWarning, InputError

if TYPE_CHECKING:
    import torch

#: NumPy arrays or torch tensors: the slice functions below take either and give the same kind back (the CPU
#: runtimes need no torch).
Slices = TypeVar("Slices", np.ndarray, "torch.Tensor")

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


def align_to_reference(images: Mapping[str, sitk.Image], reference: Optional[str] = None,
                       transforms: Optional[Mapping[str, sitk.Transform]] = None) -> dict[str, sitk.Image]:
    """Put every image on the reference's grid (default: the first), as float32.

    Images already on that grid are only cast; others are resampled (linear) with a GeometryWarning that names
    them. Images that do not overlap the reference in physical space are refused: they are not co-registered.
    An image with a transform in ``transforms`` (reference points to its points, e.g. from
    :func:`.registration.register_inputs`) is resampled through it instead of by its header alone.
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
        if transforms and name in transforms and name != reference:
            aligned[name] = sitk.Resample(image, ref, transforms[name], sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            continue
        if same_grid(image, ref):
            out = sitk.Cast(image, sitk.sitkFloat32)
            out.CopyInformation(ref)
        else:
            if not _overlap(image, ref):
                raise InputError(
                    f"'{name}' does not overlap '{reference}' in physical space: the volumes are not "
                    "co-registered. Align them with --register (in Slicer and the web app: 'Align inputs "
                    "first'), or register them first (e.g. Slicer's General Registration (BRAINS))."
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
        image.CopyInformation(sitk.DICOMOrient(_geometry_of(reference), CANONICAL_ORIENTATION))
        image = sitk.DICOMOrient(image, code)
    if image.GetSize() != reference.GetSize():  # pragma: no cover - DICOMOrient only permutes/flips
        raise AssertionError("re-orientation changed the volume size")
    image.CopyInformation(reference)  # exact copy: removes rounding of origin/direction
    return image


def _geometry_of(image: sitk.Image, size: Optional[Sequence[int]] = None) -> sitk.Image:
    """A blank one-byte image with ``image``'s origin, spacing and direction (and size, or ``size``): where only the
    geometry of a re-oriented volume is wanted, re-orienting this costs a fraction of re-orienting the voxels."""
    blank = sitk.Image([int(n) for n in (size or image.GetSize())], sitk.sitkUInt8)
    blank.SetOrigin(image.GetOrigin())
    blank.SetSpacing(image.GetSpacing())
    blank.SetDirection(image.GetDirection())
    return blank


def _center_offsets(current: int, target: int) -> tuple[int, int]:
    """(before, after) padding (positive) or cropping (negative) to go from current to target."""
    diff = target - current
    before = diff // 2
    return before, diff - before


def _pad(slices: Slices, left: int, right: int, top: int, bottom: int) -> Slices:
    """Zero-pad (positive) or crop (negative) the last two dimensions, as ``torch.nn.functional.pad`` does."""
    if not isinstance(slices, np.ndarray):
        import torch.nn.functional as F

        return F.pad(slices, (left, right, top, bottom))  # negative pads crop
    height, width = slices.shape[-2:]
    cropped = slices[..., max(0, -top):height - max(0, -bottom), max(0, -left):width - max(0, -right)]
    widths = [(0, 0)] * (slices.ndim - 2) + [(max(0, top), max(0, bottom)), (max(0, left), max(0, right))]
    return np.pad(cropped, widths)


def pad_or_crop(slices: Slices, size: tuple[int, int]) -> Slices:
    """Center zero-pad or crop the last two dimensions of ``slices`` (array or tensor) to ``size``.

    Example:
        >>> pad_or_crop(np.ones((1, 3, 4)), (5, 2)).shape
        (1, 5, 2)
    """
    (top, bottom), (left, right) = (_center_offsets(slices.shape[-2], size[0]),
                                    _center_offsets(slices.shape[-1], size[1]))
    return _pad(slices, left, right, top, bottom)


def undo_pad_or_crop(slices: Slices, original: tuple[int, int]) -> Slices:
    """Exact inverse of :func:`pad_or_crop` back to ``original``; cropped-away borders come back as zeros."""
    (top, bottom), (left, right) = (_center_offsets(original[0], slices.shape[-2]),
                                    _center_offsets(original[1], slices.shape[-1]))
    return _pad(slices, -left, -right, -top, -bottom)


#: A slice whose pixel spacing is within this fraction of the model's is used on its own grid (pad/crop only):
#: resampling it would blur it for a scale difference the model does not notice.
SPACING_TOLERANCE = 0.1


def canonical_spacing(image: sitk.Image) -> tuple[float, float]:
    """In-plane spacing (mm) of :func:`to_canonical_array`'s slices: (rows, columns) = (P, L) of the LPS volume."""
    spacing = image.GetSpacing() if _orientation(image) == CANONICAL_ORIENTATION else sitk.DICOMOrient(
        _geometry_of(image, [1] * image.GetDimension()), CANONICAL_ORIENTATION).GetSpacing()
    return (float(spacing[1]), float(spacing[0]))


@dataclass(frozen=True)
class SliceGrid:
    """How axial slices of shape ``shape`` at ``spacing`` (mm, rows/columns) map to the model's pixel grid.

    Slices whose spacing is within :data:`SPACING_TOLERANCE` of ``model_spacing`` are centre padded or cropped
    to ``model_size`` (exactly undone on the output); others are resampled in-plane (SimpleITK, linear, with an
    anti-aliasing Gaussian when shrinking) onto a ``model_size`` grid at ``model_spacing`` sharing the slice's
    centre, and the output is resampled back. The model sees a field of ``model_size x model_spacing`` mm:
    whatever lies outside it comes back as 0 (:meth:`outside_field` counts such head voxels).

    Example:
        >>> grid = SliceGrid((512, 512), (0.5, 0.5), (256, 256), (1.0, 1.0))
        >>> grid.resampled, grid.to_model(np.zeros((1, 6, 512, 512), np.float32)).shape
        (True, (1, 6, 256, 256))
    """

    shape: tuple[int, int]
    spacing: tuple[float, float]
    model_size: tuple[int, int]
    model_spacing: tuple[float, float]

    @property
    def resampled(self) -> bool:
        return any(abs(s / m - 1) > SPACING_TOLERANCE for s, m in zip(self.spacing, self.model_spacing))

    @property
    def field_of_view(self) -> tuple[float, float]:
        """The model's in-plane field (mm)."""
        return (self.model_size[0] * self.model_spacing[0], self.model_size[1] * self.model_spacing[1])

    def to_model(self, slices: Slices) -> Slices:
        """(B, C, H, W) (array or tensor) on this grid → (B, C, model H, model W) on the model's."""
        if not self.resampled:
            return pad_or_crop(slices, self.model_size)
        return self._resample(slices, self.spacing, self.shape, self.model_spacing, self.model_size, smooth=True)

    def from_model(self, slices: Slices) -> Slices:
        """Inverse of :meth:`to_model` for the model's (B, C, model H, model W) output; 0 outside its field."""
        if not self.resampled:
            return undo_pad_or_crop(slices, self.shape)
        return self._resample(slices, self.model_spacing, self.model_size, self.spacing, self.shape, smooth=False)

    def coverage(self) -> np.ndarray:
        """Boolean (H, W): the pixels of a slice that lie inside the model's field."""
        inside = []
        for axis in range(2):
            if self.resampled:
                centre = (self.shape[axis] - 1) / 2
                half = self.field_of_view[axis] / 2 / self.spacing[axis]  # in this grid's pixels
                index = np.arange(self.shape[axis])
                inside.append(np.abs(index - centre) <= half + 1e-6)  # ITK samples up to the pixels' edge
            else:
                before, _ = _center_offsets(self.shape[axis], self.model_size[axis])
                index = np.arange(self.shape[axis]) + before
                inside.append((index >= 0) & (index < self.model_size[axis]))
        return inside[0][:, None] & inside[1][None, :]

    def outside_field(self, mask: np.ndarray) -> int:
        """How many voxels of ``mask`` (S, H, W) the model's field does not cover."""
        return int(np.count_nonzero(mask & ~self.coverage()[None]))

    @staticmethod
    def _resample(slices: Slices, spacing: tuple[float, float], shape: tuple[int, int],
                  new_spacing: tuple[float, float], new_shape: tuple[int, int], smooth: bool) -> Slices:
        batch, channels = slices.shape[:2]
        tensor = not isinstance(slices, np.ndarray)
        array = (slices.detach().cpu().float().numpy() if tensor else slices.astype(np.float32, copy=False)).reshape(
            batch * channels, *shape)
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))  # x = columns, y = rows, z = slice/channel
        image.SetSpacing((spacing[1], spacing[0], 1.0))
        if smooth:
            # Shrinking: a Gaussian of about half the new pixel first, as an acquisition at that spacing would
            # blur (linear interpolation alone would alias fine detail).
            sigma = [max(0.0, 0.5 * (n**2 - s**2)) ** 0.5 for n, s in ((new_spacing[1], spacing[1]),
                                                                       (new_spacing[0], spacing[0]))]
            for direction, width in enumerate(sigma):  # in-plane only: never across slices or channels
                if width > 0.05 * min(spacing) and image.GetSize()[direction] >= 4:
                    image = sitk.RecursiveGaussian(image, width, False, sitk.RecursiveGaussianImageFilter.ZeroOrder,
                                                   direction)
        # The new grid shares the slice's centre: centre = origin + (size - 1) / 2 * spacing on both grids.
        origin = [(shape[1] - 1) / 2 * spacing[1] - (new_shape[1] - 1) / 2 * new_spacing[1],
                  (shape[0] - 1) / 2 * spacing[0] - (new_shape[0] - 1) / 2 * new_spacing[0], 0.0]
        out = sitk.Resample(image, [new_shape[1], new_shape[0], batch * channels], sitk.Transform(), sitk.sitkLinear,
                            origin, (new_spacing[1], new_spacing[0], 1.0), image.GetDirection(), 0.0,
                            sitk.sitkFloat32)
        result = sitk.GetArrayFromImage(out).reshape(batch, channels, *new_shape)
        if not tensor:
            return result
        import torch

        return torch.from_numpy(result).to(slices.device)
