"""From contrast volumes to imputed volumes: the one pipeline behind the CLI, the Slicer module, the web app and
training.

Every imputation runs through :class:`.imputation_steps.ImputationSteps`: register, prepare, run the model on the
slices, zero outside the head, label synthetic, uncertainty. :func:`impute` and :func:`impute_case` run its steps
in a row; the Slicer module and the web app run them one at a time between GUI events
(:class:`.scene.job.ChunkedImputation`). The case itself is :mod:`.case`, labels and sidecars
:mod:`.provenance`, the refusals :mod:`.refusals`, reading from disk :mod:`.case_files`.

Example (in memory, as Slicer calls it):
    >>> model = load_model("model.pt")                                            # doctest: +SKIP
    >>> result = impute({"t1n": t1n_image, "t2f": t2f_image}, model)              # doctest: +SKIP
    >>> result.images["t1c"]                       # SimpleITK image, geometry of t1n, labeled synthetic

Example (from disk, as the CLI calls it):
    >>> impute_case("cases/TCGA-CS-4941", model, out_dir="out")                   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .card import LoadedModel
from .case import ImputationResult
from .case_files import read_case, read_input
from .errors import InputError
from .imputation_steps import ImputationSteps
from .inference import CancelFlag, ProgressCallback
from .io import (
    OutputSet,
    PathLike,
    case_name,
    case_name_from_files,
    check_case_name,
    check_output_folder,
    find_case_files,
    remove_created,
    synthetic_filename,
)
from .provenance import (
    commit_outputs,
    sidecar_path,
    stage_imputed,
    stage_montage,
    stage_uncertainty,
)
from .refusals import (
    check_request,
    refuse_overwriting_inputs,
    refuse_replacing_other_case,
    refuse_same_file,
)
from .uncertainty import (
    uncertainty_path,
)

if TYPE_CHECKING:  # torch is optional: the CPU runtimes run the ONNX export without it
    import torch

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
    :func:`.refusals.refuse_unusable_inputs`); the outputs' provenance names them (``collagan_synthetic_inputs``).
    ``register``: rigidly co-register every image to the reference first (:mod:`.registration`: mutual
    information), for inputs the patient moved between; else they are placed by their headers alone. Each
    transform is in ``result.case.registration`` and the JSON sidecar.
    ``runtime``: what runs the model (:mod:`.runtime`): ``auto`` (torch on CUDA, the fastest installed one on
    the CPU), ``torch``, ``onnxruntime`` or ``openvino``.
    Out of GPU memory: :class:`.imputation_steps.ImputationSteps`' policy (smaller batches, then the CPU with a
    warning).
    """
    return ImputationSteps(images, model, targets, reference=reference, device=device, batch_size=batch_size,
                           progress=progress, cancel=cancel, precision=precision, uncertainty=uncertainty,
                           allow_synthetic=allow_synthetic, register=register, runtime=runtime).run()


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
    (:func:`.refusals.refuse_replacing_other_case`, checked again under the commit's lock). ``allow_synthetic``: as for
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
            commit_outputs(outputs, check_replaced)
    except BaseException:
        remove_created(created)
        raise
    return written
