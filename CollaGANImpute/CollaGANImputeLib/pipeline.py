"""From contrast volumes to imputed volumes: the one pipeline behind the CLI, the Slicer module and training.

Example (in memory, as Slicer calls it):
    >>> model = load_model("model.pt")                                            # doctest: +SKIP
    >>> result = impute({"t1n": t1n_image, "t2f": t2f_image}, model)              # doctest: +SKIP
    >>> result.images["t1c"]                       # SimpleITK image, geometry of t1n, labeled synthetic

Example (from disk, as the CLI calls it):
    >>> impute_case("cases/TCGA-CS-4941", model, out_dir="out")                   # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from ._version import __version__
from .contract import LoadedModel, ModelCard
from .device_mask import device_mask_and_scales
from .dicom import SERIES_UID
from .errors import GeometryWarning, InputCheckWarning, InputError, OutputError
from .geometry import SliceGrid, align_to_reference, canonical_spacing, from_canonical_array, to_canonical_array
from .inference import CancelFlag, ProgressCallback, impute_slices, resolve_device
from .input_check import InputCheck, check_case, training_profile
from .io import (
    READ_WARNING,
    OutputSet,
    PathLike,
    case_name,
    case_name_from_files,
    check_case_name,
    check_output_folder,
    find_case_files,
    read_volume,
    remove_created,
    synthetic_filename,
    synthetic_label,
    write_volume,
)
from .normalization import foreground_mask, normalize, p99
from .registration import RigidAlignment, applied_transforms, large_motion, register_inputs
from .uncertainty import (
    ensemble_members,
    estimate_uncertainty,
    label_uncertainty,
    uncertainty_description,
    uncertainty_path,
)

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
    #: Inputs whose header says they are synthetic (used only when allowed: :func:`refuse_unusable_inputs`).
    synthetic_inputs: list[str] = field(default_factory=list)
    #: contrast → Series Instance UID of the inputs read from DICOM.
    series_uids: dict[str, str] = field(default_factory=dict)
    #: Input → its rigid alignment to the reference (prepare_case with ``alignments``); empty: headers only.
    registration: dict[str, RigidAlignment] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float]:
        """In-plane pixel spacing (mm, rows/columns) of the canonical slices (for :func:`impute_slices`)."""
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


def synthetic_metadata(model: LoadedModel, inputs: Sequence[str], target: str,
                       case: Optional[PreparedCase] = None) -> dict[str, str]:
    """The labels every imputed volume carries (file header, JSON sidecar, Slicer node attributes); with the
    prepared ``case``, also the input check's result and the warnings the case gave."""
    labels = {
        "collagan_synthetic": "true",
        "collagan_target": target,
        "collagan_inputs": ",".join(inputs),
        "collagan_model": model.card.name,
        "collagan_model_sha256": model.sha256,
        "collagan_units": "p99 (1.0 = 99th percentile of the target inside the head mask)",
        "collagan_created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "collagan_software": f"CollaGANImpute {__version__}",
    }
    if model.card.weights_sha256:
        labels["collagan_model_weights_sha256"] = model.card.weights_sha256
    if case is not None:
        check = case.input_check
        labels["collagan_input_check"] = check.status if check is not None else "not checked"
        if check is not None and check.findings:
            labels["collagan_input_check_findings"] = "; ".join(check.findings)
        if case.warnings:
            labels["collagan_warnings"] = " | ".join(case.warnings)
        synthetic_inputs = [c for c in inputs if c in case.synthetic_inputs]
        if synthetic_inputs:
            labels["collagan_synthetic_inputs"] = ",".join(synthetic_inputs)
        if case.registration:
            labels["collagan_registration"] = " | ".join(a.summary() for a in case.registration.values())
    return labels


def label_synthetic(image: sitk.Image, model: LoadedModel, inputs: Sequence[str], target: str,
                    case: Optional[PreparedCase] = None) -> sitk.Image:
    """Attach :func:`synthetic_metadata` to ``image`` (in place) and return it."""
    for key, value in synthetic_metadata(model, inputs, target, case).items():
        image.SetMetaData(key, value)
    return image


def check_request(card: ModelCard, inputs: Sequence[str], targets: Sequence[str]) -> dict[str, list[str]]:
    """Refuse unknown contrasts and targets without inputs; return target → inputs used, in model order."""
    unknown = [name for name in inputs if name not in card.contrasts]
    if unknown:
        raise InputError(f"Inputs {unknown} are not contrasts of model '{card.name}' ({card.contrasts}). "
                         "Name the inputs with the model's contrast names.")
    for target in targets:
        if target not in card.contrasts:
            raise InputError(f"Target '{target}' is not one of the model's contrasts {card.contrasts}.")
    inputs_by_target = {t: [c for c in card.contrasts if c in inputs and c != t] for t in targets}
    for target, used in inputs_by_target.items():
        if not used:
            raise InputError(f"No input left to impute '{target}' from; give at least one other contrast.")
    return inputs_by_target


def apply_outside_head(card: ModelCard, mask: np.ndarray, array: np.ndarray) -> np.ndarray:
    """The model's output as it is delivered: with ``outside_head: zero`` (trained inside the head only, so its
    background is untrained), 0 outside the inputs' head mask; else unchanged."""
    if card.outside_head == "zero":
        return np.where(mask, array, 0).astype(array.dtype, copy=False)
    return array


def synthetic_description(target: str, inputs: Sequence[str], unreliable: bool = False) -> str:
    """The header description (NIfTI keeps 79 characters): synthetic, from what; flagged when the input check
    found the inputs unlike the training data."""
    if unreliable:
        return f"SYNTHETIC {target} from {'+'.join(inputs)} by CollaGAN; UNRELIABLE: inputs unlike training"
    return f"SYNTHETIC {target} imputed by CollaGAN from {'+'.join(inputs)}; not acquired"


def sidecar_path(volume: PathLike) -> Path:
    """The JSON sidecar beside an output volume (BIDS style): ``case-t1c-synthetic-collagan.json``."""
    volume = Path(volume)
    stem = volume.name[: -len(".nii.gz")] if volume.name.lower().endswith(".nii.gz") else volume.stem
    return volume.with_name(stem + ".json")


def provenance(image: sitk.Image, model: LoadedModel, case: Optional[PreparedCase] = None,
               input_files: Optional[Mapping[str, PathLike]] = None) -> dict:
    """What the JSON sidecar records: every ``collagan_*`` key of ``image``, the input check, the model's file and
    hashes, the input files, the warnings the case gave and, when the inputs were co-registered, each input's
    rigid transform to the reference with its final metric value (``registration``)."""
    record: dict = {key: image.GetMetaData(key) for key in image.GetMetaDataKeys() if key.startswith("collagan_")}
    check = case.input_check if case is not None else None
    record["input_check"] = check.to_dict() if check is not None else {"status": "not checked", "findings": []}
    record["model"] = {"name": model.card.name, "file": model.path.name, "sha256": model.sha256,
                       "weights_sha256": model.card.weights_sha256 or None}
    if input_files:
        record["input_files"] = {c: str(Path(p).resolve()) for c, p in input_files.items()}
    if case is not None and case.series_uids:
        used = image.GetMetaData("collagan_inputs").split(",") if image.HasMetaDataKey("collagan_inputs") else []
        record["input_series_uid"] = {c: uid for c, uid in case.series_uids.items() if c in used}
    record["warnings"] = list(case.warnings) if case is not None else []
    if case is not None and case.registration:
        record["registration"] = {name: a.to_dict() for name, a in case.registration.items()}
    return record


def stage_imputed(outputs: OutputSet, image: sitk.Image, path: PathLike, model: LoadedModel,
                  case: Optional[PreparedCase] = None, input_files: Optional[Mapping[str, PathLike]] = None) -> Path:
    """Stage an imputed volume and its JSON sidecar in ``outputs`` (written together, or neither)."""
    inputs = image.GetMetaData("collagan_inputs").split(",")
    target = image.GetMetaData("collagan_target")
    unreliable = case is not None and case.input_check is not None and bool(case.input_check.findings)
    path = write_volume(image, path, description=synthetic_description(target, inputs, unreliable), outputs=outputs)
    text = json.dumps(provenance(image, model, case, input_files), indent=2, ensure_ascii=False) + "\n"
    outputs.stage(sidecar_path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def refuse_unusable_inputs(images: Mapping[str, sitk.Image], used: Iterable[str],
                           allow_synthetic: bool = False) -> None:
    """Refuse inputs that would give a wrong result without an error: one whose header says it is synthetic
    (unless ``allow_synthetic``: then it is recorded in the provenance) and two contrasts with identical voxels
    (the same scan given twice).

    Example:
        >>> refuse_unusable_inputs({"t1n": t1n, "t2f": t1n}, ["t1n", "t2f"])   # doctest: +SKIP
        InputError: The inputs 't1n' and 't2f' have identical voxels ...
    """
    used = [c for c in dict.fromkeys(used) if c in images]
    if not allow_synthetic:
        for name in used:
            why = synthetic_label(images[name])
            if why is not None:
                raise InputError(f"The input '{name}' is not an acquired scan ({why}): imputing from it would hide "
                                 f"that the result rests on imputed data. Give the acquired '{name}', or allow it "
                                 "explicitly (--allow-synthetic-input; recorded in the outputs' provenance).")
    for index, first in enumerate(used):
        for second in used[index + 1:]:
            a, b = images[first], images[second]
            if a.GetSize() == b.GetSize() and np.array_equal(sitk.GetArrayViewFromImage(a),
                                                               sitk.GetArrayViewFromImage(b)):
                raise InputError(f"The inputs '{first}' and '{second}' have identical voxels: the same scan was "
                                 f"given for two contrasts. Give the '{second}' acquisition (or leave it out).")


def impute(
    images: Mapping[str, sitk.Image],
    model: LoadedModel,
    targets: Optional[Sequence[str]] = None,
    reference: Optional[str] = None,
    device: Union[str, torch.device, None] = "auto",
    batch_size: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: CancelFlag = None,
    precision: str = "auto",
    uncertainty: bool = False,
    allow_synthetic: bool = False,
    register: bool = False,
    runtime: str = "auto",
) -> ImputationResult:
    """Impute each target (default: every model contrast not among ``images``) from the given images.

    ``precision``: ``auto`` (bf16 where the CPU/GPU runs it natively, within the quality rule of
    docs/PERFORMANCE.md), ``fp32`` (bit-reproducible across machines), ``bf16`` or ``fp16``.
    ``uncertainty``: also an uncertainty map per target in ``result.uncertainty`` (:mod:`.uncertainty`: how much
    the model's predictions from smaller input sets and mirrored inputs disagree; costs one more pass of the
    model per member, ``progress`` counts them).
    ``allow_synthetic``: use inputs whose header says they are synthetic (refused by default:
    :func:`refuse_unusable_inputs`); the outputs' provenance names them (``collagan_synthetic_inputs``).
    ``register``: rigidly co-register every image to the reference first (:mod:`.registration`: mutual
    information), for inputs the patient moved between; else they are placed by their headers alone. Each
    transform is in ``result.case.registration`` and the JSON sidecar.
    ``runtime``: what runs the model (:mod:`.runtime`): ``auto`` (torch on CUDA, the fastest installed one on
    the CPU), ``torch``, ``onnxruntime`` or ``openvino``.
    """
    card = model.card
    if targets is None:
        targets = [c for c in card.contrasts if c not in images]
        if not targets:
            raise InputError(f"Every contrast of the model ({card.contrasts}) is already present: nothing is "
                             "missing. Name a target explicitly to re-impute one from the others.")
    inputs_by_target = check_request(card, list(images), targets)
    refuse_unusable_inputs(images, [c for used in inputs_by_target.values() for c in used], allow_synthetic)
    device = resolve_device(device)
    alignments = register_inputs(images, reference) if register else None  # once for every input set
    # One mask per input set: a target that is also given (re-imputation) never shapes its own mask.
    prepared: dict[tuple[str, ...], PreparedCase] = {}
    for used in inputs_by_target.values():
        if tuple(used) not in prepared:
            prepared[tuple(used)] = prepare_case(images, reference, mask_from=used, device=device, card=card,
                                                 alignments=alignments)
    first = prepared[tuple(next(iter(inputs_by_target.values())))]
    n_slices = first.mask.shape[0]
    members = {t: ensemble_members(used) if uncertainty else [] for t, used in inputs_by_target.items()}
    total = n_slices * sum(1 + len(m) for m in members.values())
    result = ImputationResult(images={}, case=first, model_name=card.name, inputs=sorted(images), cases={})
    offset = 0
    for target in targets:
        case = prepared[tuple(inputs_by_target[target])]
        inputs = {c: case.arrays[c] for c in inputs_by_target[target]}
        array = impute_slices(model, inputs, target, device=device, batch_size=batch_size, progress=progress,
                              cancel=cancel, progress_offset=offset, progress_total=total,
                              precision=precision, spacing=case.spacing, runtime=runtime)
        offset += n_slices
        array = apply_outside_head(card, case.mask, array)
        result.images[target] = label_synthetic(case.to_image(array), model, inputs_by_target[target], target, case)
        result.arrays[target] = array
        result.cases[target] = case
        if uncertainty:
            u = estimate_uncertainty(model, inputs, target, array, case.mask, members[target], progress=progress,
                                     progress_offset=offset, progress_total=total, device=device,
                                     batch_size=batch_size, cancel=cancel, precision=precision, spacing=case.spacing,
                                     runtime=runtime)
            offset += n_slices * len(members[target])
            result.uncertainty[target] = label_uncertainty(case.to_image(u), result.images[target], members[target])
            result.uncertainty_arrays[target] = u
    return result


def read_case(folder: PathLike, contrasts: Sequence[str]) -> dict[str, sitk.Image]:
    """Read every contrast of a BraTS-named case folder that exists (synthetic files ignored)."""
    files = find_case_files(folder, contrasts)
    if not files:
        raise InputError(f"No volume named <case>-<contrast> with contrast in {list(contrasts)} found in "
                         f"{folder}. Rename the files (e.g. case-t1n.nii.gz) or pass them explicitly.")
    return {contrast: read_input(path, contrast) for contrast, path in files.items()}


def read_input(path: PathLike, contrast: Optional[str] = None) -> sitk.Image:
    """:func:`.io.read_volume`, and marked synthetic (``collagan_synthetic``) when a JSON sidecar beside the file
    says so (NIfTI headers keep no such key): :func:`refuse_unusable_inputs` then refuses it.

    Example:
        >>> read_input("out/P1-t1c-synthetic-collagan.nii.gz").GetMetaData("collagan_synthetic")   # doctest: +SKIP
        'true'
    """
    image = read_volume(path, contrast)
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            record = {}
        for key in ("collagan_synthetic", "collagan_uncertainty"):
            if isinstance(record, dict) and str(record.get(key, "")).lower() == "true":
                image.SetMetaData("collagan_synthetic", "true")
                image.SetMetaData("collagan_synthetic_source", f"its sidecar {sidecar.name} says {key} is true")
    return image


def impute_case(
    case: Union[PathLike, Mapping[str, PathLike]],
    model: LoadedModel,
    out_dir: Optional[PathLike] = None,
    targets: Optional[Sequence[str]] = None,
    reference: Optional[str] = None,
    device: Union[str, torch.device, None] = "auto",
    batch_size: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: CancelFlag = None,
    name: Optional[str] = None,
    montage: bool = False,
    precision: str = "auto",
    uncertainty: bool = False,
    overwrite: bool = False,
    allow_synthetic: bool = False,
    register: bool = False,
    runtime: str = "auto",
) -> dict[str, Path]:
    """Impute the missing contrasts of a case and write them; returns target → written file.

    ``case`` is a BraTS-named folder or a mapping contrast → file. Outputs go to ``out_dir`` (default: next to
    the inputs) as ``<case>-<target>-synthetic-collagan.nii.gz``, each with its JSON sidecar
    (``<case>-<target>-synthetic-collagan.json``: provenance, input check, model hashes). The case name is
    ``name``, the folder's name, or for files :func:`.io.case_name_from_files`. The output folder is checked
    before any work; every target is computed before anything is written, and the files of all targets are
    written together or not at all (:class:`.io.OutputSet`): an error, Ctrl-C or a cancel leaves no output.
    An output that would replace an input is refused. ``montage`` adds a PNG per target (inputs | synthetic),
    for cases without a real target to compare with. ``uncertainty`` adds the uncertainty map of each target
    (:mod:`.uncertainty`) as ``<case>-<target>-uncertainty-collagan.nii.gz`` with its JSON sidecar, written
    together with the synthetic volume (and shown in the montage); the returned mapping has the synthetic files.
    Outputs of another case (their sidecar records none of these inputs) are replaced only with ``overwrite``
    (:func:`refuse_replacing_other_case`, checked again under the commit's lock). ``allow_synthetic``: as for
    :func:`impute`.
    ``register``: co-register the inputs to the reference first (:func:`impute`); the sidecar records each
    transform.
    """
    if isinstance(case, Mapping):
        paths = {c: Path(p) for c, p in case.items()}
        default_dir = next(iter(paths.values())).parent
        name = check_case_name(name or case_name_from_files(paths))
    else:
        paths = find_case_files(case, model.card.contrasts)
        default_dir = Path(case)
        name = check_case_name(name or case_name(case))
    out = Path(out_dir) if out_dir is not None else default_dir
    planned = list(targets) if targets else [c for c in model.card.contrasts if c not in paths]
    files = {t: out / synthetic_filename(name, t) for t in planned}
    maps = {t: uncertainty_path(f) for t, f in files.items()} if uncertainty else {}
    extra = [sidecar_path(f) for f in [*files.values(), *maps.values()]] + list(maps.values()) + \
        [out / synthetic_filename(name, t, ".png") for t in planned if montage]
    refuse_overwriting_inputs([*files.values(), *extra], paths)
    check_request(model.card, list(paths), planned)  # unknown contrasts first: they are the likelier mistake
    refuse_same_file(paths)

    def check_replaced() -> None:
        if not overwrite:
            refuse_replacing_other_case([*files.values(), *maps.values()], paths)

    check_replaced()
    images = {c: read_input(p, c) for c, p in paths.items()} if isinstance(case, Mapping) else \
        read_case(case, model.card.contrasts)
    created = check_output_folder(out, [*files.values(), *extra])
    try:
        try:
            result = impute(images, model, targets=targets, reference=reference, device=device,
                            batch_size=batch_size, progress=progress, cancel=cancel, precision=precision,
                            uncertainty=uncertainty, allow_synthetic=allow_synthetic,
                            register=register, runtime=runtime)
        except InputError as exc:  # "Input 't2f': ..." from the core: name the file too
            contrast = next((c for c in paths if str(exc).startswith(f"Input '{c}': ")), None)
            if contrast is None:
                raise
            raise InputError(f"Input '{contrast}' ({paths[contrast]}): "
                             f"{str(exc)[len(contrast) + 10:]}") from exc
        except (MemoryError, RuntimeError) as exc:
            if not isinstance(exc, MemoryError) and "alloc" not in str(exc).lower():
                raise
            largest = max(images, key=lambda c: int(np.prod(images[c].GetSize())))
            raise InputError(f"Not enough memory to impute case {name}: its largest input, '{largest}' "
                             f"({paths[largest]}), has {'x'.join(map(str, images[largest].GetSize()))} voxels. Free "
                             "memory or use a machine with more, or crop or resample the inputs; nothing was "
                             "written.") from exc
        with OutputSet() as outputs:
            written = {}
            for target, image in result.images.items():
                prepared = result.cases[target]
                used = {c: paths[c] for c in image.GetMetaData("collagan_inputs").split(",")}
                written[target] = stage_imputed(outputs, image, files[target], model, prepared, used)
                if target in result.uncertainty:
                    stage_uncertainty(outputs, result.uncertainty[target], maps[target], model, prepared, used)
                if montage:
                    stage_montage(outputs, out / synthetic_filename(name, target, ".png"), result, target, name,
                                  model.card.name)
            _commit(outputs, check_replaced)
    except BaseException:
        remove_created(created)
        raise
    return written


def _commit(outputs: OutputSet, check: Optional[Callable[[], object]] = None) -> None:
    """Commit, an OSError (disk full, permissions, a folder in the way) as one :class:`OutputError` line."""
    try:
        outputs.commit(check)
    except OSError as exc:
        raise OutputError(f"Cannot write {exc.filename or 'the outputs'}: {exc.strerror or exc}"
                          f"{' (' + errno.errorcode[exc.errno] + ')' if exc.errno in errno.errorcode else ''}; "
                          "nothing was written.") from exc


def stage_montage(outputs: OutputSet, path: Path, result: ImputationResult, target: str, name: str,
                  method: str) -> None:
    """Stage a montage PNG (inputs | synthetic) of one imputed target."""
    from .figures import montage_png  # matplotlib only when a picture is asked for

    case = result.cases[target]
    inputs = result.images[target].GetMetaData("collagan_inputs").split(",")
    title = (f"{name}: {target} imputed from {'+'.join(inputs)} (SYNTHETIC; no acquired {target} to compare "
             f"with) - {method}")
    outputs.stage(path, lambda tmp: montage_png(tmp, {c: case.arrays[c] for c in inputs}, result.arrays[target],
                                                target, mask=case.mask, rows=2, method=method, title=title,
                                                uncertainty=result.uncertainty_arrays.get(target)),
                  suffix=".png")


def stage_uncertainty(outputs: OutputSet, image: sitk.Image, path: PathLike, model: LoadedModel,
                      case: Optional[PreparedCase] = None,
                      input_files: Optional[Mapping[str, PathLike]] = None) -> Path:
    """Stage an uncertainty map and its JSON sidecar in ``outputs`` (with the synthetic volume, or neither)."""
    inputs = image.GetMetaData("collagan_inputs").split(",")
    path = write_volume(image, path, description=uncertainty_description(image.GetMetaData("collagan_target"),
                                                                         inputs), outputs=outputs)
    text = json.dumps(provenance(image, model, case, input_files), indent=2, ensure_ascii=False) + "\n"
    outputs.stage(sidecar_path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def refuse_overwriting_inputs(outputs: Sequence[Path], inputs: Mapping[str, PathLike]) -> None:
    """Inputs are never modified: refuse an output path that is (or links to) one of the input files."""
    for output in outputs:
        for contrast, source in inputs.items():
            source = Path(source)
            same = output.resolve() == source.resolve()
            if not same and output.exists() and source.exists():
                same = os.path.samefile(output, source)
            if same:
                raise InputError(f"The output {output} is the input '{contrast}' ({source}): writing it would "
                                 "overwrite an input. Choose another --out or --name (inputs are never modified).")


def refuse_same_file(paths: Mapping[str, PathLike]) -> None:
    """Refuse one file given for two contrasts. One DICOM folder may hold each contrast's series (the same series
    chosen twice is refused for its identical voxels: :func:`refuse_unusable_inputs`).

    Example:
        >>> refuse_same_file({"t1n": "P1-t1n.nii.gz", "t2f": "P1-t1n.nii.gz"})   # doctest: +SKIP
        InputError: The inputs 't1n' and 't2f' are the same file (P1-t1n.nii.gz) ...
    """
    seen: dict[str, str] = {}
    for contrast, path in paths.items():
        path = Path(path)
        if path.is_dir() or not path.exists():
            continue
        key = f"{path.stat().st_dev}:{path.stat().st_ino}"  # hard links and symbolic links too
        if key in seen:
            raise InputError(f"The inputs '{seen[key]}' and '{contrast}' are the same file ({path}): each contrast "
                             f"needs its own acquisition. Give the '{contrast}' file (or leave it out).")
        seen[key] = contrast


def refuse_replacing_other_case(outputs: Sequence[Path], inputs: Mapping[str, PathLike]) -> None:
    """Refuse to replace an output of another case: an existing output whose JSON sidecar records none of
    ``inputs`` (or that has no readable sidecar to tell) belongs to another case.

    Example:
        >>> refuse_replacing_other_case([Path("out/P1-t1c-synthetic-collagan.nii")], {"t1n": "P2.nii"}) # doctest: +SKIP
        OutputError: out/P1-t1c-synthetic-collagan.nii is the output of another case ...
    """
    mine = {str(Path(p).resolve()) for p in inputs.values()}
    for output in outputs:
        sidecar = sidecar_path(output)
        if not output.is_file() and not sidecar.is_file():
            continue  # nothing to replace (a folder in the way is check_output_folder's)
        try:
            recorded = json.loads(sidecar.read_text(encoding="utf-8")).get("input_files") or {}
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            recorded = None
        if recorded and mine & {str(v) for v in recorded.values()}:
            continue
        source = f"imputed from {next(iter(recorded.values()))}" if recorded else \
            "it has no readable sidecar recording its inputs"
        raise OutputError(f"{output} is the output of another case ({source}), not of these inputs: writing would "
                          "replace it. Choose another --out or --name, or pass --overwrite to replace it.")


def training_profile_from_folders(folders: Iterable[Union[str, Path]], contrasts: Sequence[str], source: str = ""
                                  ) -> dict[str, Any]:
    """:func:`~CollaGANImputeLib.input_check.training_profile` of BraTS-named case folders, read and prepared
    one at a time (little memory)."""

    def cases():
        for folder in folders:
            images = read_case(folder, contrasts)
            yield prepare_case({c: images[c] for c in contrasts if c in images})

    return training_profile(cases(), contrasts, source=source)
