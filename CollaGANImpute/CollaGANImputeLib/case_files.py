"""Reading a case from disk: a BraTS-named folder or single files, each marked synthetic when its sidecar says
so; and the training data profile of many such folders.

Example:
    >>> images = read_case("cases/TCGA-CS-4941", ["t1n", "t1c", "t2f"])     # doctest: +SKIP
    >>> sorted(images)                                                       # doctest: +SKIP
    ['t1n', 't2f']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import SimpleITK as sitk

from .case import prepare_case
from .errors import InputError
from .input_check import training_profile
from .io import PathLike, find_case_files, read_volume
from .provenance import sidecar_path


def read_case(folder: PathLike, contrasts: Sequence[str]) -> dict[str, sitk.Image]:
    """Read every contrast of a BraTS-named case folder that exists (synthetic files ignored)."""
    files = find_case_files(folder, contrasts)
    if not files:
        raise InputError(f"No volume named <case>-<contrast> with contrast in {list(contrasts)} found in "
                         f"{folder}. Rename the files (e.g. case-t1n.nii.gz) or pass them explicitly.")
    return {contrast: read_input(path, contrast) for contrast, path in files.items()}


def read_input(path: PathLike, contrast: Optional[str] = None) -> sitk.Image:
    """:func:`.io.read_volume`, and marked synthetic (``collagan_synthetic``) when a JSON sidecar beside the file
    says so (NIfTI headers keep no such key): :func:`.refusals.refuse_unusable_inputs` then refuses it.

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


def training_profile_from_folders(folders: Iterable[Union[str, Path]], contrasts: Sequence[str], source: str = ""
                                  ) -> dict[str, Any]:
    """:func:`~CollaGANImputeLib.input_check.training_profile` of BraTS-named case folders, read and prepared
    one at a time (little memory)."""

    def cases():
        for folder in folders:
            images = read_case(folder, contrasts)
            yield prepare_case({c: images[c] for c in contrasts if c in images})

    return training_profile(cases(), contrasts, source=source)
