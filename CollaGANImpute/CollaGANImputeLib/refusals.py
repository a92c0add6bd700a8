"""Requests and inputs refused before any work, each with one line naming the problem and the fix: unknown
contrasts, synthetic or duplicated inputs, and outputs that would overwrite an input or another case's result.

Example:
    >>> check_request(model.card, ["t1n", "t2f"], ["t1c"])          # doctest: +SKIP
    {'t1c': ['t1n', 't2f']}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from .card import ModelCard
from .errors import InputError, OutputError
from .io import PathLike, synthetic_label
from .provenance import sidecar_path


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
