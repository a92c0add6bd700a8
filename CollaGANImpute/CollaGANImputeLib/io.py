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
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import numpy as np
import SimpleITK as sitk

from .atomic import (  # noqa: F401  (re-exported: the writers' long-standing home)
    OutputSet,
    file_mode,
    follow_umask,
    locked_folders,
    remove_stale_temporaries,
)
from .dicom import dicom_selector, read_dicom_series
from .errors import InputError, OutputError

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
    if dim == 2 or (dim == 3 and min(image.GetSize()) == 1):  # one axial, sagittal or coronal slice
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
    if array.dtype.itemsize > 4 and np.issubdtype(array.dtype, np.floating):
        largest = float(np.abs(array).max())
        if largest > FLOAT32_MAX:
            raise InputError(
                f"{name} has values up to {largest:.3g}, beyond the float32 range ({FLOAT32_MAX:.3g}) that "
                "imputation computes in (they would overflow to infinity). Rescale the volume (any positive "
                "factor: intensities are normalized anyway) and try again.")
    if not array.any():
        raise InputError(f"{name} is all zeros: nothing was acquired there. Leave that contrast out instead.")
    return image


#: Largest finite float32: volumes are computed in float32, so larger values would become infinite.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: NIfTI datatype codes of floating-point voxels (float32, float64, float128, complex64/128/256).
_NIFTI_FLOATS = {16: "f4", 64: "f8", 32: "f4", 1792: "f8"}
_CHUNK = 1 << 22


def _nifti_layout(head: bytes) -> Optional[tuple[str, int, int, Optional[str]]]:
    """(byte order, data offset, data bytes, float dtype or None) from a NIfTI-1/-2 single-file header;
    None when ``head`` is not one (a .hdr/.img pair or another format: ITK checks those itself)."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348 and head[344:347] == b"n+1":
            dims = struct.unpack(order + "8h", head[40:56])
            datatype, bitpix = struct.unpack(order + "2h", head[70:74])
            offset = int(struct.unpack(order + "f", head[108:112])[0])
        elif len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540 and head[4:7] == b"n+2":
            datatype, bitpix = struct.unpack(order + "2h", head[12:16])
            dims = struct.unpack(order + "8q", head[16:80])
            offset = int(struct.unpack(order + "q", head[168:176])[0])
        else:
            continue
        if not 1 <= dims[0] <= 7 or bitpix <= 0 or min(dims[1:dims[0] + 1]) < 0:
            return None  # nonsense header: ITK's reader refuses it with its own message
        count = int(np.prod([int(d) for d in dims[1:dims[0] + 1]], dtype=np.int64))
        dtype = _NIFTI_FLOATS.get(int(datatype))
        return order, max(offset, 348), count * int(bitpix) // 8, (order + dtype) if dtype else None
    return None


def _complete_by_size(path: Path, compressed: bool, expected: int) -> bool:
    """O(1) completeness test: a gzip stream's trailer holds its decompressed length (mod 2**32), a plain file's
    size is known. False means "look closer" (a multi-member gzip or trailing bytes also differ)."""
    if not compressed:
        return path.stat().st_size >= expected
    with open(path, "rb") as raw:
        raw.seek(-4, os.SEEK_END)
        return struct.unpack("<I", raw.read(4))[0] == expected % 2**32


def check_nifti_data(path: PathLike) -> bool:
    """Refuse a NIfTI file whose voxel data is cut short, whose gzip stream is damaged, or whose float voxels
    include NaN or infinity; False (nothing checked) when ``path`` is not a single-file NIfTI.

    Why: ITK's NIfTI reader reads a truncated file's missing voxels as zeros and replaces NaN/Inf by 0, without
    an error, so such a file would be imputed from silently wrong data. Integer volumes (no NaN possible) are
    checked for completeness from the gzip trailer or the file size; float volumes are streamed once (gzip
    verifies its CRC and length at the end), which costs about as much as ITK's own read. Other formats are left
    to ITK, which refuses these faults itself.

    Example:
        >>> check_nifti_data("case-t1n.nii.gz")   # doctest: +SKIP
        True
    """
    path = Path(path)
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"  # the gzip magic, whatever the file is named
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as handle:
            head = handle.read(348)
            if head[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c"):  # sizeof_hdr 540: NIfTI-2
                head += handle.read(192)
            layout = _nifti_layout(head)
            if layout is None:
                return False
            _, offset, size, dtype = layout
            if dtype is None and _complete_by_size(path, compressed, offset + size):
                return True
            head += handle.read(max(0, offset - len(head)))
            itemsize = int(dtype[-1]) if dtype else 1
            remaining, nonfinite, pending, block = size, 0, b"", head[offset:]
            while True:
                taken = block[:remaining]
                remaining -= len(taken)
                if dtype is not None and taken:
                    values = pending + taken
                    whole = len(values) - len(values) % itemsize  # a value split between blocks waits
                    checked = np.frombuffer(values[:whole], dtype=dtype)
                    nonfinite += int(checked.size - np.count_nonzero(np.isfinite(checked)))
                    pending = values[whole:]
                if remaining <= 0 and not compressed:
                    break  # a gzip stream is read to its end: gzip verifies its CRC and length there
                block = handle.read(_CHUNK)
                if not block:
                    break
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(f"{path} is damaged: its gzip stream is truncated or corrupt ({exc}). The file was "
                         "probably cut short by an interrupted copy or download; copy it again.") from exc
    if remaining > 0:
        raise InputError(f"{path} is truncated: its header announces {size} bytes of voxel data, the file holds "
                         f"{size - remaining}. Copy or export the file again.")
    if nonfinite:
        raise InputError(f"{path} contains {nonfinite} NaN or infinite voxels; replace them (e.g. by 0) before "
                         "imputing.")
    return True


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
        if lower.endswith(".nii") and _is_gzip(path):
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
_METAIMAGE_TYPES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4,
                    "MET_ULONG": 8, "MET_LONG": 8, "MET_ULONG_LONG": 8, "MET_LONG_LONG": 8, "MET_FLOAT": 4,
                    "MET_DOUBLE": 8}


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as raw:
        return raw.read(2) == b"\x1f\x8b"


def check_metaimage_data(path: PathLike) -> None:
    """Refuse a ``.mhd`` header whose data file is missing or shorter than the header announces, naming the data
    file (ITK says only "No such file or directory"). Compressed, listed and pattern data files are left to ITK.

    Example:
        >>> check_metaimage_data("scan.mhd")   # doctest: +SKIP
        InputError: scan.mhd's data file scan.raw is missing ...
    """
    path = Path(path)
    fields = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    data = fields.get("elementdatafile", "")
    if not data or data.upper() in ("LOCAL", "LIST") or "%" in data or fields.get("compresseddata", "").lower() == \
            "true":
        return
    data_path = Path(data) if Path(data).is_absolute() else path.parent / data
    if not data_path.is_file():
        raise InputError(f"{path}'s data file {data_path} is missing (a .mhd holds the header only): copy the data "
                         "file beside it, or give a .mha/.nii.gz that holds both.")
    try:
        dims = [int(v) for v in fields.get("dimsize", "").split()]
        size = int(np.prod(dims, dtype=np.int64)) * _METAIMAGE_TYPES[fields.get("elementtype", "").upper()] * \
            int(fields.get("elementnumberofchannels", "1"))
        offset = max(0, int(fields.get("headersize", "0")))
    except (KeyError, ValueError):
        return  # a header ITK will refuse with its own message
    if data_path.stat().st_size < offset + size:
        raise InputError(f"{path}'s data file {data_path} is truncated: the header announces {size} bytes, the file "
                         f"holds {data_path.stat().st_size}. Copy or export the file again.")


def sheared_sform_note(path: PathLike) -> Optional[str]:
    """A warning when a NIfTI-1 file's sform (its voxel-to-world matrix) is sheared: ITK then places the volume by
    its qform, which may differ. None when the sform is a rotation times scaling, or absent.

    Example:
        >>> sheared_sform_note("case-t1n.nii.gz") is None   # doctest: +SKIP
        True
    """
    path = Path(path)
    with (gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")) as handle:
        head = handle.read(348)
    for order in "<>":
        if len(head) == 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            break
    else:
        return None
    if struct.unpack(order + "h", head[254:256])[0] <= 0:
        return None  # no sform
    matrix = np.array([struct.unpack(order + "4f", head[o:o + 16])[:3] for o in (280, 296, 312)], dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=0)
    if not np.all(np.isfinite(matrix)) or np.any(norms == 0):
        return None
    columns = matrix / norms
    shear = float(np.abs(columns.T @ columns - np.eye(3)).max())
    if shear <= 1e-3:
        return None
    return (f"{path.name}'s sform is sheared (its axes are {np.degrees(np.arcsin(min(1.0, shear))):.1f} degrees off "
            "perpendicular): the volume was placed by its qform, which may differ. Check the result's orientation "
            "against the inputs, or export the scan again.")


def synthetic_label(image: sitk.Image) -> Optional[str]:
    """Why ``image``'s header says it is not an acquired scan (None when it does not): a ``collagan_synthetic`` or
    ``collagan_uncertainty`` key set to true (NRRD, MHA, a Slicer node), or a description (NIfTI descrip) written
    by this package ("SYNTHETIC ...", "UNCERTAINTY ...").

    Example:
        >>> synthetic_label(read_volume("out/P1-t1c-synthetic-collagan.nii.gz"))   # doctest: +SKIP
        "its header's description reads 'SYNTHETIC t1c imputed by CollaGAN from t1n+t2f; not acquired'"
    """
    keys = set(image.GetMetaDataKeys())
    for key in ("collagan_synthetic", "collagan_uncertainty"):
        if key in keys and image.GetMetaData(key).strip().lower() == "true":
            source = image.GetMetaData("collagan_synthetic_source") if "collagan_synthetic_source" in keys else ""
            return source or f"its header's {key} is true"
    for key in ("descrip", "ITK_FileNotes", "collagan_description"):
        if key in keys and image.GetMetaData(key).strip().upper().startswith(("SYNTHETIC", "UNCERTAINTY")):
            return f"its header's description reads '{image.GetMetaData(key).strip()}'"
    return None


#: Contrast names in case file names ``<case>-<contrast>.<ext>`` → the contrast they denote: BraTS 2023 names and
#: BraTS 2021 names (``_t1``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg``). The one table for finding a case's files
#: and for cutting the contrast off a name.
CONTRAST_NAMES = {
    "t1n": ("t1n", "BraTS 2023"), "t1c": ("t1c", "BraTS 2023"), "t2w": ("t2w", "BraTS 2023"),
    "t2f": ("t2f", "BraTS 2023"), "seg": ("seg", "BraTS 2023"),
    "t1": ("t1n", "BraTS 2021"), "t1ce": ("t1c", "BraTS 2021"), "t2": ("t2w", "BraTS 2021"),
    "flair": ("t2f", "BraTS 2021"),
}
_NAME_SEPARATORS = "-_. "


def split_contrast(stem: str, anywhere: bool = False) -> Optional[tuple[str, str, str]]:
    """(case part, contrast, name as written) of a file name without extension, by :data:`CONTRAST_NAMES`: the
    contrast is the last word (``anywhere``: the last word that is a contrast name); None when there is none.
    Words are split at ``-``, ``_``, ``.`` and spaces only, so a case name is never cut inside a word.

    Example:
        >>> split_contrast("BraTS2021_00012_t1ce")
        ('BraTS2021_00012', 't1c', 't1ce')
        >>> split_contrast("TCGA-HT-7882-t2f_reg", anywhere=True)
        ('TCGA-HT-7882', 't2f', 't2f')
    """
    words = [m for m in re.finditer(r"[^-_. ]+", stem)]
    for match in reversed(words if anywhere else words[-1:]):
        entry = CONTRAST_NAMES.get(match.group().lower())
        if entry is not None:
            return stem[: match.start()].rstrip(_NAME_SEPARATORS), entry[0], match.group()
    return None


def find_case_files(folder: PathLike, contrasts: Iterable[str]) -> dict[str, Path]:
    """Map each contrast found in ``folder`` to its file, by BraTS naming ``<case>-<contrast>.<ext>`` (2023 names,
    or 2021 names: :data:`CONTRAST_NAMES`).

    This package's outputs (``...-synthetic-collagan``) do not end in a contrast name and are not found.
    Contrasts not present are simply absent from the result. Two files for one contrast are refused, naming
    both (and, for two naming conventions, saying so).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"Case folder not found: {folder}.")
    wanted = set(contrasts)
    candidates: dict[str, list[tuple[Path, str]]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.name.lower().endswith(VOLUME_EXTENSIONS) or not path.is_file():
            continue
        parsed = split_contrast(_strip_extension(path.name))
        if parsed is not None and parsed[1] in wanted:
            candidates.setdefault(parsed[1], []).append((path, CONTRAST_NAMES[parsed[2].lower()][1]))
    found: dict[str, Path] = {}
    for contrast in contrasts:
        matches = candidates.get(contrast, [])
        conventions = sorted({convention for _, convention in matches})
        if len(conventions) > 1:
            raise InputError(f"{folder} mixes naming conventions for contrast '{contrast}' ({' and '.join(conventions)}"
                             f"): {[m.name for m, _ in matches]}. Keep the one file that is the '{contrast}' "
                             "acquisition, or pass the files explicitly with --input.")
        if len(matches) > 1:
            raise InputError(f"{folder} has several files for contrast '{contrast}': "
                             f"{[m.name for m, _ in matches]}. Keep one, or pass the files explicitly.")
        if matches:
            found[contrast] = matches[0][0]
    return found


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


def find_lesion_mask(folder: PathLike) -> Optional[Path]:
    """The ``<case>-seg`` lesion mask of a case folder, if there is one."""
    files = find_case_files(folder, [LESION_SUFFIX])
    return files.get(LESION_SUFFIX)


def case_name(folder: PathLike) -> str:
    return Path(folder).resolve().name


def case_name_from_files(paths: Mapping[str, PathLike]) -> str:
    """The case name for explicit input files (contrast → file): the part of their names before the contrast
    (:func:`split_contrast`; ``TCGA-HT-7882-t1n.nii.gz`` and ``TCGA-HT-7882-t2f_reg.nii.gz`` → ``TCGA-HT-7882``);
    when the names are the contrasts alone (``X/t1n.nii.gz``), their folder's name; else the first file's name
    without extension. Never a part cut out of a longer name.

    Example:
        >>> case_name_from_files({"t1n": "p7_t1n.nii.gz", "t2f": "p7_t2f.nrrd"})
        'p7'
        >>> case_name_from_files({"t1n": "a.nii.gz", "t2f": "b.nrrd"})
        'a'
    """
    parts = []
    for path in paths.values():
        stem = _strip_extension(Path(path).name)
        parsed = split_contrast(stem, anywhere=True)
        parts.append((parsed[0] if parsed is not None else stem).strip(_NAME_SEPARATORS))
    first = Path(next(iter(paths.values())))
    if parts[0]:
        return parts[0]  # differing parts: the first input's, whole (a common prefix could cut a patient's ID)
    folder = first.resolve().parent.name
    return folder or _strip_extension(first.name)


#: Longest case name: its longest output's temporary name (``.<case>-<target>-uncertainty-collagan.<owner>.<random>
#: .tmp.nii.gz.previous``) must stay within the 255 bytes most file systems allow.
MAX_CASE_NAME_BYTES = 160


def check_case_name(name: str) -> str:
    """Refuse a case name that is not a plain file-name part (it would write outside the output folder)."""
    bad = (not name or name in (".", "..") or name.startswith((".", "-")) or any(sep in name for sep in "/\\")
           or any(ord(ch) < 32 for ch in name))
    if bad:
        raise InputError(f"The case name {name!r} cannot name output files: give a plain name without folders, "
                         "'..', a leading '.' or '-' (e.g. --name patient01); choose the folder with --out.")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_CASE_NAME_BYTES:
        raise InputError(f"The case name '{name[:40]}...' is {len(name.encode('utf-8', 'surrogateescape'))} bytes "
                         f"long: its output file names would pass the file system's 255-byte limit. Give a shorter "
                         f"--name (at most {MAX_CASE_NAME_BYTES} bytes).")
    return name


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


def synthetic_filename(case: str, contrast: str, extension: str = ".nii.gz") -> str:
    """Output name that says what the file is: ``<case>-<contrast>-synthetic-collagan.nii.gz``."""
    return f"{case}-{contrast}-{SYNTHETIC_TAG}-collagan{extension}"


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
