"""Reading and writing volumes with SimpleITK: checks on read, atomic writes, synthetic labels.

The checks live in :mod:`.volume_checks`, case folders and file names in :mod:`.case_names`, the atomic writer in
:mod:`.atomic`; their names are importable from here too.

Example:
    >>> files = find_case_files("case_dir", ["t1n", "t1c", "t2f"])   # doctest: +SKIP
    >>> images = {c: read_volume(p) for c, p in files.items()}        # doctest: +SKIP
    >>> write_volume(image, "out/case-t1c-synthetic.nii.gz", description="SYNTHETIC ...")  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Union

import SimpleITK as sitk

# Re-exported: io has long been the one import for reading, naming and writing volumes.
from .atomic import OutputSet, file_mode, follow_umask, locked_folders, remove_stale_temporaries  # noqa: F401
from .case_names import (  # noqa: F401
    CONTRAST_NAMES,
    LESION_SUFFIX,
    MAX_CASE_NAME_BYTES,
    SYNTHETIC_TAG,
    VOLUME_EXTENSIONS,
    case_name,
    case_name_from_files,
    check_case_name,
    find_case_files,
    find_lesion_mask,
    split_contrast,
    synthetic_filename,
)
from .dicom import dicom_selector, read_dicom_series
from .errors import InputError, OutputError
from .volume_checks import (  # noqa: F401
    FLOAT32_MAX,
    check_metaimage_data,
    check_nifti_data,
    check_volume,
    is_gzip,
    sheared_sform_note,
)

PathLike = Union[str, os.PathLike]

GZIP_LEVEL = 1  # .nii.gz outputs: fastest zlib level (see write_volume)


def read_volume(path: PathLike, contrast: Optional[str] = None) -> sitk.Image:
    """Read a volume (NIfTI, NRRD, MHA, ... or a DICOM series folder) and check it.

    A DICOM folder holding several series gives the one whose tags say it is ``contrast`` (:func:`dicom_series`),
    or ``FOLDER#N`` the series numbered N; otherwise it is refused, listing the series. The DICOM series read is
    recorded in the image's ``0020|000e`` (Series Instance UID) key.

    Example:
        >>> read_volume("exam/dicom", contrast="t2f").GetMetaData("0020|000e")   # doctest: +SKIP
        '1.2.826.0.1.3680043.2.1125.1.42'
    """
    path = Path(path)
    folder, number = dicom_selector(path)
    if folder is not None:
        image, note = read_dicom_series(folder, contrast, number)
        if note:
            image.SetMetaData(READ_WARNING, note)
    elif not path.exists():
        raise InputError(f"Input file not found: {path}.")
    else:
        if path.stat().st_size == 0:
            raise InputError(f"{path} is an empty file (0 bytes).")
        lower = path.name.lower()
        if lower.endswith(".nii") and is_gzip(path):
            raise InputError(f"{path} is gzip-compressed but named .nii, so no reader takes it: copy or rename it "
                             f"to {path.name}.gz.")
        if lower.endswith(".mhd"):
            check_metaimage_data(path)
        try:
            if lower.endswith((".nii", ".nii.gz")):
                check_nifti_data(path)  # ITK reads missing or NaN voxels of a NIfTI file as zeros
            image = sitk.ReadImage(str(path))
        except MemoryError as exc:
            raise InputError(f"Not enough memory to read {path} ({path.stat().st_size / 2**20:.0f} MiB on disk): "
                             "free memory or use a machine with more, or crop the volume first.") from exc
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1]
            if "alloc" in reason.lower():
                raise InputError(f"Not enough memory to read {path} ({reason}): free memory or use a machine with "
                                 "more, or crop the volume first.") from exc
            raise InputError(f"Cannot read {path} as an image ({reason}). "
                             "Supported: NIfTI, NRRD, MHA/MHD and DICOM series folders.") from exc
        if lower.endswith((".nii", ".nii.gz")):
            note = sheared_sform_note(path)
            if note:
                image.SetMetaData(READ_WARNING, note)
    try:
        return check_volume(image, name=str(path))
    except MemoryError as exc:
        raise InputError(f"Not enough memory to check {path} ({'x'.join(map(str, image.GetSize()))} voxels): free "
                         "memory or use a machine with more, or crop the volume first.") from exc


#: The image key that carries a warning found while reading (e.g. a sheared sform), for the provenance.
READ_WARNING = "collagan_read_warning"


def synthetic_label(image: sitk.Image) -> Optional[str]:
    """Why ``image``'s header says it is not an acquired scan (None when it does not): a ``collagan_synthetic`` or
    ``collagan_uncertainty`` key set to true or a ``collagan_error_map`` key (NRRD, MHA, a Slicer node), or a
    description (NIfTI descrip) written by this package ("SYNTHETIC", "UNCERTAINTY", "ERROR MAP", "SCORED
    REGION" ...).

    Example:
        >>> synthetic_label(read_volume("out/P1-t1c-synthetic-collagan.nii.gz"))   # doctest: +SKIP
        "its header's description reads 'SYNTHETIC t1c imputed by CollaGAN from t1n+t2f; not acquired'"
    """
    keys = set(image.GetMetaDataKeys())
    for key in ("collagan_synthetic", "collagan_uncertainty"):
        if key in keys and image.GetMetaData(key).strip().lower() == "true":
            source = image.GetMetaData("collagan_synthetic_source") if "collagan_synthetic_source" in keys else ""
            return source or f"its header's {key} is true"
    if "collagan_error_map" in keys:
        return "its header's collagan_error_map says it is an error map"
    for key in ("descrip", "ITK_FileNotes", "collagan_description"):
        if key in keys and image.GetMetaData(key).strip().upper().startswith(("SYNTHETIC", "UNCERTAINTY",
                                                                              "ERROR MAP", "SCORED REGION")):
            return f"its header's description reads '{image.GetMetaData(key).strip()}'"
    return None



def read_lesion_mask(path: PathLike) -> sitk.Image:
    """Read a lesion mask, which may be all zeros (no visible lesion): :func:`read_volume`'s checks, without its
    all-zero refusal (a file that fails the checks is read as ITK reads it).

    Example:
        >>> read_lesion_mask("case/TCGA-HT-7882-seg.nii.gz").GetSize()   # doctest: +SKIP
        (256, 256, 88)
    """
    try:
        return read_volume(path)
    except InputError:
        return sitk.ReadImage(str(path))



def check_output_folder(folder: PathLike, files: Iterable[PathLike] = ()) -> list[Path]:
    """Make sure ``folder`` can take the outputs before any work is done: it is (or becomes) a folder we can
    write in, and none of ``files`` is a folder. Returns the folders created, for :func:`remove_created`.

    Example:
        >>> created = check_output_folder("out", ["out/case-t1c-synthetic-collagan.nii.gz"])   # doctest: +SKIP
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"The output folder {folder} is a file, not a folder. Give a folder (created if missing).")
    created = []
    parent = folder
    while not parent.exists() and parent != parent.parent:
        created.append(parent)
        parent = parent.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".collagan-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        remove_created(created)
        raise OutputError(f"Cannot write in the output folder {folder}: {exc.strerror or exc}. Choose another "
                          "folder with --out.") from exc
    for file in map(Path, files):
        if file.is_dir():
            remove_created(created)
            raise OutputError(f"A folder is in the way of the output file {file}. Remove or rename it, or choose "
                              "another --out.")
    return created


def remove_created(created: Iterable[Path]) -> None:
    """Remove the folders :func:`check_output_folder` created, deepest first, where they are still empty."""
    for folder in sorted(created, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass



def write_volume(image: sitk.Image, path: PathLike, description: str = "", metadata: Optional[dict[str, str]]
                 = None, compress: bool = True, outputs: Optional[OutputSet] = None) -> Path:
    """Write ``image`` to ``path`` atomically: a temporary file in the same folder, then a rename.

    ``description`` goes to the NIfTI header's descrip field (80 characters) and, with ``metadata``, to the
    key/value header of formats that keep one (NRRD, MHA). An error leaves no file at ``path``. With ``outputs``
    the file is only staged there, for the caller's :meth:`OutputSet.commit` (several files, all or nothing).
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
    if outputs is not None:
        outputs.stage(path, lambda tmp: _write_image(image, tmp, compress))
        return path
    with OutputSet() as single:
        single.stage(path, lambda tmp: _write_image(image, tmp, compress))
        single.commit()
    return path


def _write_image(image: sitk.Image, tmp: str, compress: bool) -> None:
    if tmp.lower().endswith(".nii.gz") and compress:
        # ITK's NIfTI writer gzips at zlib's default level (0.9 s for a 240x240x155 float volume); level 1
        # takes a third of that for files about 40 % larger, and any NIfTI reader reads it the same.
        plain = tmp[: -len(".gz")]
        try:
            sitk.WriteImage(image, plain, useCompression=False)
            with open(plain, "rb") as source, open(tmp, "wb") as raw:
                with gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as gz:
                    shutil.copyfileobj(source, gz, length=1 << 22)
        finally:
            if os.path.exists(plain):
                os.unlink(plain)
    else:
        sitk.WriteImage(image, tmp, useCompression=compress)

