"""Rigid co-registration of the inputs to the reference input (SimpleITK, Mattes mutual information).

The contrasts of one examination share the scanner's coordinates, but the patient may move between them: their
headers then place the head a few millimetres or degrees apart. :func:`register_inputs` finds, for every input
but the reference, the rigid transform (rotation and shift) that best aligns it to the reference by mutual
information, which compares different contrasts; :func:`.geometry.align_to_reference` then resamples each input
through its transform (unless the motion found is under half a voxel: then the headers agree with it and the
input is not resampled for it). Nothing is written: the inputs on disk are never modified.

Example:
    >>> alignments = register_inputs({"t1n": t1n, "t2f": t2f}, reference="t1n")        # doctest: +SKIP
    >>> alignments["t2f"].shift_mm, alignments["t2f"].rotation_deg                      # doctest: +SKIP
    (3.02, 4.97)
    >>> grid = align_to_reference({"t1n": t1n, "t2f": t2f}, "t1n", applied_transforms(alignments))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import _overlap

#: A found motion above either limit is unusual within one examination: the result is worth a look (warning).
LARGE_SHIFT_MM = 20.0
LARGE_ROTATION_DEG = 15.0
#: Fixed seed of the metric's random sampling: the same inputs give the same transform.
SAMPLING_SEED = 20240917
#: Voxels the metric samples at each level (random, seeded): enough for a 50-bin joint histogram, and a
#: registration takes seconds whatever the volume's size.
SAMPLES = 50_000
#: Each level of the pyramid shrinks the volumes by these factors and blurs them by these sigmas (mm).
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_MM = (2.0, 1.0, 0.0)
#: Optimizer steps (mm at the head's edge): start, and the smallest, under which it stops.
LEARNING_RATE = 1.0
MIN_STEP = 0.001
#: A found motion that moves no point of the head by more than this share of a voxel agrees with the headers
#: (it is within the registration's own accuracy): it is recorded but not applied, as resampling would only blur.
NEGLIGIBLE_VOXELS = 0.5


@dataclass(frozen=True)
class RigidAlignment:
    """The rigid transform that aligns ``moving`` to ``reference`` and how well it does.

    ``transform`` maps points of the reference's physical space to the moving input's (ITK's convention, what
    :func:`SimpleITK.Resample` takes); ``metric`` is the final Mattes mutual information (negative: lower is
    better aligned). ``displacement_mm``: how far it moves the points of the reference's central half (where the
    head is) at most; ``applied``: False when that is under :data:`NEGLIGIBLE_VOXELS` of a voxel (the headers
    are kept: the input is placed as without registration).
    """

    moving: str
    reference: str
    transform: sitk.Euler3DTransform
    metric: float
    iterations: int
    stop: str
    displacement_mm: float = math.inf
    applied: bool = True

    @property
    def rotation_deg(self) -> float:
        """The rotation's angle (degrees), whatever its axis."""
        matrix = np.array(self.transform.GetMatrix()).reshape(3, 3)
        return math.degrees(math.acos(float(np.clip((np.trace(matrix) - 1) / 2, -1.0, 1.0))))

    @property
    def shift_mm(self) -> float:
        """How far (mm) the transform moves the reference's centre."""
        center = np.array(self.transform.GetCenter())
        return float(np.linalg.norm(np.array(self.transform.TransformPoint(center.tolist())) - center))

    def summary(self) -> str:
        """One line for a header key or a node attribute."""
        return (f"{self.moving}: rigid to {self.reference}, {self.shift_mm:.2f} mm, {self.rotation_deg:.2f} deg, "
                f"MI {self.metric:.4f}{'' if self.applied else ' (under half a voxel: headers kept)'}")

    def to_dict(self) -> dict:
        """What the JSON sidecar records (angles in radians about x, y, z of LPS; translation and centre in mm)."""
        t = self.transform
        return {
            "reference": self.reference,
            "transform": "Euler3DTransform (maps reference points to input points, LPS mm)",
            "parameters": [float(p) for p in t.GetParameters()],
            "fixed_parameters": [float(p) for p in t.GetFixedParameters()],
            "angles_rad": [t.GetAngleX(), t.GetAngleY(), t.GetAngleZ()],
            "translation_mm": list(t.GetTranslation()),
            "center_mm": list(t.GetCenter()),
            "rotation_deg": round(self.rotation_deg, 4),
            "shift_mm": round(self.shift_mm, 4),
            "largest_displacement_mm": round(self.displacement_mm, 4),
            "applied": self.applied,
            "metric": "Mattes mutual information",
            "final_metric_value": self.metric,
            "iterations": self.iterations,
            "optimizer_stop": self.stop,
        }


def register_rigid(fixed: sitk.Image, moving: sitk.Image, moving_name: str = "moving",
                   reference_name: str = "reference") -> RigidAlignment:
    """The rigid transform aligning ``moving`` to ``fixed`` (Mattes mutual information, three resolutions).

    Example:
        >>> alignment = register_rigid(t1n, t2f, "t2f", "t1n")     # doctest: +SKIP
        >>> moved = sitk.Resample(t2f, t1n, alignment.transform)   # t2f on t1n's grid, aligned to it
    """
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    # The initializer puts the rotation centre at the reference's centre. Within one examination the headers are the
    # better start (the scanner's coordinates are shared), so its centring shift is kept only when the volumes
    # do not overlap at all (e.g. an export that lost its origin).
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    initial = sitk.Euler3DTransform(initial)
    if _overlap(fixed, moving):
        initial.SetTranslation((0.0, 0.0, 0.0))
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    voxels = float(np.prod(fixed.GetSize()))
    method.SetMetricSamplingPercentagePerLevel([min(1.0, SAMPLES * f**3 / voxels) for f in SHRINK_FACTORS],
                                               SAMPLING_SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=LEARNING_RATE, minStep=MIN_STEP,
                                                    numberOfIterations=200,
                                                    relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()  # one step moves any voxel about as far, by angle or shift
    # Coarse to fine: a blurred quarter-size volume first finds the gross motion, full size refines it.
    method.SetShrinkFactorsPerLevel(list(SHRINK_FACTORS))
    method.SetSmoothingSigmasPerLevel(list(SMOOTHING_MM))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=True)
    try:
        method.Execute(fixed, moving)
    except RuntimeError as exc:
        raise InputError(f"'{moving_name}' could not be registered to '{reference_name}' "
                         f"({str(exc).strip().splitlines()[-1]}). Check that both show the same head, or run "
                         "without registration.") from exc
    displacement = _largest_displacement(initial, fixed)
    return RigidAlignment(moving=moving_name, reference=reference_name, transform=initial,
                          metric=float(method.GetMetricValue()), iterations=int(method.GetOptimizerIteration()),
                          stop=method.GetOptimizerStopConditionDescription(), displacement_mm=displacement,
                          applied=displacement > NEGLIGIBLE_VOXELS * min(fixed.GetSpacing()))


def _largest_displacement(transform: sitk.Transform, image: sitk.Image) -> float:
    """How far (mm) ``transform`` moves the corners of ``image``'s central half at most (rigid: the most of
    any point inside it)."""
    size = np.array(image.GetSize()) - 1
    corners = np.array(np.meshgrid(*[[0.25 * s, 0.75 * s] for s in size])).T.reshape(-1, 3)
    points = [image.TransformContinuousIndexToPhysicalPoint([float(v) for v in c]) for c in corners]
    return max(float(np.linalg.norm(np.subtract(transform.TransformPoint(p), p))) for p in points)


def applied_transforms(alignments: Optional[Mapping[str, RigidAlignment]]) -> dict[str, sitk.Transform]:
    """Name → transform of the alignments that are applied (for :func:`.geometry.align_to_reference`)."""
    return {name: a.transform for name, a in (alignments or {}).items() if a.applied}


def register_inputs(images: Mapping[str, sitk.Image], reference: Optional[str] = None) -> dict[str, RigidAlignment]:
    """Register every image but the reference (default: the first) to the reference: name → alignment."""
    if not images:
        raise InputError("No input volumes were given.")
    reference = reference or next(iter(images))
    if reference not in images:
        raise InputError(f"Reference '{reference}' is not among the inputs {list(images)}.")
    return {name: register_rigid(images[reference], image, name, reference)
            for name, image in images.items() if name != reference}


def large_motion(alignments: Mapping[str, RigidAlignment]) -> list[str]:
    """One line per alignment that moved its input unusually far (worth checking the images)."""
    return [f"Registration moved '{a.moving}' by {a.shift_mm:.1f} mm and {a.rotation_deg:.1f} degrees to align it "
            f"to '{a.reference}', more than patients move within one examination: check the inputs are of one "
            "examination and look at them aligned before using the result."
            for a in alignments.values() if a.shift_mm > LARGE_SHIFT_MM or a.rotation_deg > LARGE_ROTATION_DEG]


def moved(image: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """A copy of ``image`` as if the head had moved rigidly by ``transform`` (old points to new points): only the
    header's origin and direction change, the voxels are untouched. For measuring what patient motion does.

    Example:
        >>> motion = sitk.Euler3DTransform((127.5, 127.5, 15.5), 0.0, 0.0, math.radians(5), (2.0, -2.0, 1.0))
        >>> shifted = moved(t2f, motion)     # register_rigid(t1n, shifted) finds about ``motion``  # doctest: +SKIP
    """
    rigid = sitk.Euler3DTransform(transform)
    out = sitk.Image(image)
    rotation = np.array(rigid.GetMatrix()).reshape(3, 3)
    out.SetDirection((rotation @ np.array(image.GetDirection()).reshape(3, 3)).ravel().tolist())
    out.SetOrigin(rigid.TransformPoint(image.GetOrigin()))
    return out
