"""Reading and writing volumes with SimpleITK: checks on read, atomic writes, synthetic labels.

Example:
    >>> files = find_case_files("case_dir", ["t1n", "t1c", "t2f"])   # doctest: +SKIP
    >>> images = {c: read_volume(p) for c, p in files.items()}        # doctest: +SKIP
    >>> write_volume(image, "out/case-t1c-synthetic.nii.gz", description="SYNTHETIC ...")  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
import SimpleITK as sitk

from .errors import InputError

PathLike = Union[str, os.PathLike]

#: Extensions tried, in order, for BraTS-style case files ``<case>-<contrast><ext>``.
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Name part that marks this package's outputs; such files are never taken as real inputs.
SYNTHETIC_TAG = "synthetic"
LESION_SUFFIX = "seg"
GZIP_LEVEL = 1  # .nii.gz outputs: fastest zlib level (see write_volume)


def _strip_extension(name: str) -> str:
    for ext in VOLUME_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def check_volume(image: sitk.Image, name: str = "volume") -> sitk.Image:
    """Refuse what cannot be a 3-D scalar MR volume; returns ``image`` unchanged."""
    dim = image.GetDimension()
    if dim == 2 or (dim == 3 and min(image.GetSize()) == 1 and image.GetSize()[2] == 1):
        raise InputError(f"{name} is 2-D (size {image.GetSize()}); a 3-D volume is needed. Load the whole "
                         "series (for DICOM, the folder) rather than a single slice.")
    if dim != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{name} has {dim} dimensions and {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "a 3-D scalar volume is needed. Split 4-D/multi-echo or RGB series and pick one 3-D volume."
        )
    if 0 in image.GetSize():
        raise InputError(f"{name} is empty (size {image.GetSize()}).")
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError(f"{name} contains NaN or infinite voxels; replace them (e.g. by 0) before imputing.")
    if not array.any():
        raise InputError(f"{name} is all zeros: nothing was acquired there. Leave that contrast out instead.")
    return image


def read_volume(path: PathLike) -> sitk.Image:
    """Read a volume (NIfTI, NRRD, MHA, ... or a DICOM series folder) and check it."""
    path = Path(path)
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise InputError(f"{path} is a folder with no DICOM series; give a volume file or a DICOM folder.")
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
        image = reader.Execute()
    elif not path.exists():
        raise InputError(f"Input file not found: {path}.")
    else:
        if path.stat().st_size == 0:
            raise InputError(f"{path} is an empty file (0 bytes).")
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(f"Cannot read {path} as an image ({str(exc).strip().splitlines()[-1]}). "
                             "Supported: NIfTI, NRRD, MHA/MHD and DICOM series folders.") from exc
    return check_volume(image, name=str(path))


def find_case_files(folder: PathLike, contrasts: Iterable[str]) -> dict[str, Path]:
    """Map each contrast found in ``folder`` to its file, by BraTS naming ``<case>-<contrast>.<ext>``.

    Synthetic outputs of this package are ignored. Contrasts not present are simply absent from the result.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"Case folder not found: {folder}.")
    found: dict[str, Path] = {}
    for contrast in contrasts:
        pattern = re.compile(rf"(^|[-_.]){re.escape(contrast)}$", re.IGNORECASE)
        matches = sorted(
            p for p in folder.iterdir()
            if p.is_file() and SYNTHETIC_TAG not in p.name.lower() and not p.name.startswith(".")
            and p.name.lower().endswith(VOLUME_EXTENSIONS) and pattern.search(_strip_extension(p.name))
        )
        if len(matches) > 1:
            raise InputError(f"{folder} has several files for contrast '{contrast}': "
                             f"{[m.name for m in matches]}. Keep one, or pass the files explicitly.")
        if matches:
            found[contrast] = matches[0]
    return found


def find_lesion_mask(folder: PathLike) -> Optional[Path]:
    """The ``<case>-seg`` lesion mask of a case folder, if there is one."""
    files = find_case_files(folder, [LESION_SUFFIX])
    return files.get(LESION_SUFFIX)


def case_name(folder: PathLike) -> str:
    return Path(folder).resolve().name


def synthetic_filename(case: str, contrast: str, extension: str = ".nii.gz") -> str:
    """Output name that says what the file is: ``<case>-<contrast>-synthetic-collagan.nii.gz``."""
    return f"{case}-{contrast}-{SYNTHETIC_TAG}-collagan{extension}"


def write_volume(image: sitk.Image, path: PathLike, description: str = "", metadata: Optional[dict[str, str]]
                 = None, compress: bool = True) -> Path:
    """Write ``image`` to ``path`` atomically: a temporary file in the same folder, then a rename.

    ``description`` goes to the NIfTI header's descrip field (80 characters) and, with ``metadata``, to the
    key/value header of formats that keep one (NRRD, MHA). An error leaves no file at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.Image(image)  # never touch the caller's metadata
    for key, value in (metadata or {}).items():
        image.SetMetaData(key, str(value))
    if description:
        image.SetMetaData("ITK_FileNotes", description[:79])  # NIfTI descrip (NiftiImageIO reads this key)
        image.SetMetaData("descrip", description[:79])
        image.SetMetaData("collagan_description", description)
    name = path.name
    extension = next((e for e in VOLUME_EXTENSIONS if name.lower().endswith(e)), path.suffix)
    fd, tmp = tempfile.mkstemp(prefix=f".{_strip_extension(name)}.", suffix=f".tmp{extension}", dir=path.parent)
    os.close(fd)
    plain = tmp[: -len(".gz")] if extension.lower() == ".nii.gz" and compress else ""
    try:
        if plain:
            # ITK's NIfTI writer gzips at zlib's default level (0.9 s for a 240x240x155 float volume); level 1
            # takes a third of that for files about 40 % larger, and any NIfTI reader reads it the same.
            sitk.WriteImage(image, plain, useCompression=False)
            with open(plain, "rb") as source, open(tmp, "wb") as raw:
                with gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as gz:
                    shutil.copyfileobj(source, gz, length=1 << 22)
        else:
            sitk.WriteImage(image, tmp, useCompression=compress)
        os.replace(tmp, path)
    finally:
        for leftover in filter(None, (tmp, plain)):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return path
