"""A case on one grid: the inputs aligned, masked and normalized (:func:`prepare_case`), checked against the
model, and the imputed volumes made from it (:class:`ImputationResult`).

Example:
    >>> case = prepare_case({"t1n": t1n_image, "t2f": t2f_image}, card=model.card)   # doctest: +SKIP
    >>> case.arrays["t1n"].shape, case.mask.mean()        # canonical (S, P, L), p99 units  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .card import ModelCard
from .device_mask import device_mask_and_scales
from .dicom import SERIES_UID
from .errors import GeometryWarning, InputCheckWarning, InputError
from .geometry import SliceGrid, align_to_reference, canonical_spacing, from_canonical_array, to_canonical_array
from .input_check import InputCheck, check_case
from .io import READ_WARNING, synthetic_label
from .normalization import foreground_mask, normalize, p99
from .registration import RigidAlignment, applied_transforms, large_motion

if TYPE_CHECKING:  # torch is optional: the CPU runtimes run the ONNX export without it
    import torch


@dataclass
class PreparedCase:
    """Inputs on one grid, as canonical axial arrays (S, P, L) in p99 units, with their mask."""

    reference: sitk.Image
    arrays: dict[str, np.ndarray]
    mask: np.ndarray
    warnings: list[str] = field(default_factory=list)
    #: The inputs compared with the model's training data (prepare_case with a card); None: not compared.
    input_check: Optional[InputCheck] = None
    #: Inputs whose header says they are synthetic (used only when allowed: :func:`.refusals.refuse_unusable_inputs`).
    synthetic_inputs: list[str] = field(default_factory=list)
    #: contrast → Series Instance UID of the inputs read from DICOM.
    series_uids: dict[str, str] = field(default_factory=dict)
    #: Input → its rigid alignment to the reference (prepare_case with ``alignments``); empty: headers only.
    registration: dict[str, RigidAlignment] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float]:
        """In-plane pixel spacing (mm, rows/columns) of the canonical slices (for :func:`.inference.impute_slices`)."""
        return canonical_spacing(self.reference)

    def to_image(self, array: np.ndarray) -> sitk.Image:
        """A canonical array back as an image with the reference's exact geometry."""
        return from_canonical_array(array, self.reference)

    def normalize_like_inputs(self, image: sitk.Image, transform: Optional[sitk.Transform] = None) -> np.ndarray:
        """Another volume of the case (e.g. the real target) in p99 units with this case's mask; with a
        ``transform`` (e.g. its :class:`.registration.RigidAlignment`'s) resampled through it."""
        aligned = align_to_reference({"ref": self.reference, "other": image}, reference="ref",
                                     transforms={"other": transform} if transform is not None else None)["other"]
        return normalize(to_canonical_array(aligned), self.mask)

    def lesion_like_inputs(self, image: sitk.Image) -> np.ndarray:
        """A lesion mask of the case (any label > 0) on this case's canonical grid, as a boolean array."""
        aligned = align_to_reference({"ref": self.reference, "seg": image}, reference="ref")["seg"]
        return to_canonical_array(aligned) > 0.5


def prepare_case(images: Mapping[str, sitk.Image], reference: Optional[str] = None,
                 mask_from: Optional[Sequence[str]] = None,
                 device: Union[str, torch.device, None] = None,
                 card: Optional[ModelCard] = None,
                 alignments: Optional[Mapping[str, RigidAlignment]] = None) -> PreparedCase:
    """Align the images to the reference grid, compute the mask and normalize each to p99 units.

    ``alignments`` (from :func:`.registration.register_inputs`): the inputs are resampled through their rigid
    transforms (co-registered), not by their headers alone; kept in ``registration`` for the provenance.

    With the model's ``card`` the case is also checked against the model (:func:`check_for_model`): the
    slices' fit in its field of view and the inputs against its training data; each finding is a warning
    (and is in ``warnings``), and the input check is kept in ``input_check``.

    ``mask_from`` names the inputs the mask is computed from (default: all); a volume to be predicted or
    compared with must not be among them (EVALUATION.md: the mask comes from the inputs only). With a CUDA
    ``device`` the mask and the p99 scales are computed there (:mod:`.device_mask`: the same result, bit for
    bit); if that fails for want of GPU memory or otherwise, the CPU computes them, with a warning.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        aligned = align_to_reference(images, reference, applied_transforms(alignments))
        for line in large_motion({n: a for n, a in (alignments or {}).items() if n in images}):
            warnings.warn(line, GeometryWarning, stacklevel=2)
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    notes = [str(w.message) for w in caught]
    for name, image in images.items():  # what reading the files found (e.g. a sheared sform): into the provenance
        if image.HasMetaDataKey(READ_WARNING):
            notes.append(f"Input '{name}': {image.GetMetaData(READ_WARNING)}")
            warnings.warn(notes[-1], GeometryWarning, stacklevel=2)
    ref = aligned[reference or next(iter(images))]
    raw = {name: to_canonical_array(image) for name, image in aligned.items()}
    names = list(mask_from or raw)
    mask, scales = None, None
    if device is not None and str(device).startswith("cuda"):
        import torch  # present wherever CUDA is

        try:
            mask, scales = device_mask_and_scales(list(raw.values()), torch.device(device),
                                                  [list(raw).index(name) for name in names])
        except InputError:
            raise  # bad input: the CPU would refuse it too
        except Exception as exc:  # an acceleration only (out of memory, no usable CUDA): the CPU gives the same
            notes.append(f"The mask could not be computed on {device} ({str(exc).splitlines()[0]}); used the CPU.")
            warnings.warn(notes[-1], RuntimeWarning, stacklevel=2)
    if mask is None:
        try:
            mask = foreground_mask([raw[name] for name in names])
        except InputError as exc:  # say which input: a percentile alone names none
            culprit = next((n for n in names if _scale_error(raw[n]) is not None), names[0])
            raise InputError(f"Input '{culprit}': {_scale_error(raw[culprit]) or exc}") from exc
    arrays = {}
    for index, (name, array) in enumerate(raw.items()):
        try:
            arrays[name] = normalize(array, mask, None if scales is None else scales[index])
        except InputError as exc:
            raise InputError(f"Input '{name}': {exc}") from exc
    case = PreparedCase(reference=ref, arrays=arrays, mask=mask, warnings=notes,
                        series_uids={c: image.GetMetaData(SERIES_UID) for c, image in images.items()
                                     if image.HasMetaDataKey(SERIES_UID)},
                        registration={n: a for n, a in (alignments or {}).items() if n in images})
    for name in names:
        why = synthetic_label(images[name])
        if why is not None:
            case.synthetic_inputs.append(name)
            case.warnings.append(f"The input '{name}' is not an acquired scan ({why}); it was used as allowed: "
                                 "the result is imputed from imputed data.")
            warnings.warn(case.warnings[-1], InputCheckWarning, stacklevel=2)
    if card is not None:
        check_for_model(case, card, names)
    return case


def _scale_error(array: np.ndarray) -> Optional[str]:
    """Why ``array`` has no usable p99 scale (no positive intensities), or None."""
    try:
        p99(array)
    except InputError as exc:
        return str(exc)
    return None


def check_for_model(case: PreparedCase, card: ModelCard, inputs: Sequence[str]) -> PreparedCase:
    """Warn (and note in ``case.warnings``) when the slices need resampling to the model's pixel grid, when the
    head does not fit its field of view, and when the ``inputs`` are unlike its training data (``case.input_check``).
    """
    grid = SliceGrid(case.mask.shape[1:], case.spacing, card.in_plane_size, card.spacing)
    found: list[tuple[str, type[Warning]]] = []
    if grid.resampled:
        found.append((f"The slices have {case.spacing[0]:g} x {case.spacing[1]:g} mm pixels and model "
                      f"'{card.name}' works on {card.spacing[0]:g} x {card.spacing[1]:g} mm: each slice is resampled "
                      "in-plane to the model's grid for inference, and the result back to the input grid.",
                      GeometryWarning))
    outside = grid.outside_field(case.mask)
    if outside:
        share = 100 * outside / max(1, int(np.count_nonzero(case.mask)))
        found.append((f"The head does not fit the field of view of model '{card.name}' ({grid.field_of_view[0]:g} x "
                      f"{grid.field_of_view[1]:g} mm around the slice centre): {outside} head voxels ({share:.1f} %) "
                      "lie outside it and are 0 in the synthetic image. Crop or re-centre the inputs around the "
                      "head.", GeometryWarning))
    case.input_check = check_case(card, case, inputs)
    if case.input_check.findings:
        found.append((case.input_check.message(f"model '{card.name}'"), InputCheckWarning))
    for message, category in found:
        case.warnings.append(message)
        warnings.warn(message, category, stacklevel=3)
    return case


@dataclass
class ImputationResult:
    """Imputed volumes (target → image in p99 units, reference geometry) and what produced them.

    ``case`` is the prepared case of the first target; ``cases`` holds each target's (masks differ when the
    input sets differ).
    """

    images: dict[str, sitk.Image]
    case: PreparedCase
    model_name: str
    inputs: list[str]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # canonical p99 arrays, for scoring
    cases: dict[str, PreparedCase] = field(default_factory=dict)  # per target: its inputs' mask and arrays
    #: With ``impute(..., uncertainty=True)``: target → uncertainty map (p99 units of the target, the synthetic
    #: volume's geometry, labeled as an uncertainty map), and the same as canonical arrays.
    uncertainty: dict[str, sitk.Image] = field(default_factory=dict)
    uncertainty_arrays: dict[str, np.ndarray] = field(default_factory=dict)
