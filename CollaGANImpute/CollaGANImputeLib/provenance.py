"""What makes an imputed volume recognisably synthetic and traceable: its ``collagan_*`` labels, header
description and JSON sidecar (provenance), staged for an all-or-nothing write (:class:`.io.OutputSet`).

Example:
    >>> image = label_synthetic(case.to_image(array), model, ["t1n", "t2f"], "t1c", case)   # doctest: +SKIP
    >>> with OutputSet() as outputs:                                                          # doctest: +SKIP
    ...     stage_imputed(outputs, image, "out/P1-t1c-synthetic-collagan.nii.gz", model, case)
    ...     commit_outputs(outputs)
"""

from __future__ import annotations

import datetime
import errno
import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence

import SimpleITK as sitk

from ._version import __version__
from .card import LoadedModel
from .case import ImputationResult, PreparedCase
from .errors import OutputError
from .io import OutputSet, PathLike, write_volume
from .uncertainty import uncertainty_description

if TYPE_CHECKING:
    from .runtime import RuntimeUsed


def synthetic_metadata(model: LoadedModel, inputs: Sequence[str], target: str,
                       case: Optional[PreparedCase] = None, ran: Sequence[RuntimeUsed] = ()) -> dict[str, str]:
    """The labels every imputed volume carries (file header, JSON sidecar, Slicer node attributes); with the
    prepared ``case``, also the input check's result and the warnings the case gave; with ``ran``, what ran the
    model: runtime, precision, device and the SHA-256 of the file that ran (the ONNX export's for an ONNX runtime;
    one value per run, joined by " | ", in the rare case the run moved, e.g. to the CPU out of GPU memory)."""
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
    if ran:  # what ran the model (runtime.RuntimeUsed)
        for key, attribute in (("runtime", "runtime"), ("precision", "precision"), ("device", "device"),
                               ("runtime_file", "file"), ("runtime_sha256", "sha256")):
            labels[f"collagan_{key}"] = " | ".join(getattr(used, attribute) for used in ran)
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
                    case: Optional[PreparedCase] = None, ran: Sequence[RuntimeUsed] = ()) -> sitk.Image:
    """Attach :func:`synthetic_metadata` to ``image`` (in place) and return it."""
    for key, value in synthetic_metadata(model, inputs, target, case, ran).items():
        image.SetMetaData(key, value)
    return image


def synthetic_description(target: str, inputs: Sequence[str], unreliable: bool = False) -> str:
    """The header description (NIfTI keeps 79 characters): synthetic, from what; flagged when the input check
    found the inputs unlike the training data."""
    if unreliable:
        return f"SYNTHETIC {target} from {'+'.join(inputs)} by CollaGAN; UNRELIABLE: inputs unlike training"
    return f"SYNTHETIC {target} imputed by CollaGAN from {'+'.join(inputs)}; not acquired"


def error_map_description(target: str) -> str:
    """The header description of a comparison's signed error map (``.io.synthetic_label`` refuses it as a scan)."""
    return f"ERROR MAP synthetic minus acquired {target}, p99 units; not an image"


def scored_region_description(target: str, protocol: str = "v3") -> str:
    """The header description of the region a comparison scored, M_t (v2: M; refused as a scan too)."""
    return f"SCORED REGION {'M' if protocol == 'v2' else 'M_t'} of {target} (EVALUATION.md {protocol}); 1 = scored"


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


def commit_outputs(outputs: OutputSet, check: Optional[Callable[[], object]] = None) -> None:
    """Commit, an OSError (disk full, permissions, a folder in the way) as one :class:`OutputError` line."""
    try:
        outputs.commit(check)
    except OSError as exc:
        raise OutputError(f"Cannot write {exc.filename or 'the outputs'}: {exc.strerror or exc}"
                          f"{' (' + errno.errorcode[exc.errno] + ')' if exc.errno in errno.errorcode else ''}; "
                          "nothing was written.") from exc
