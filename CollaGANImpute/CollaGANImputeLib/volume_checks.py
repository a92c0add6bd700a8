"""Checks on a volume file and image before it is used: a 3-D scalar volume with finite values, a NIfTI file whose
voxel data is complete, a MetaImage header whose data file is there, a NIfTI sform that is not sheared.

Why here and not left to ITK: ITK reads a truncated NIfTI file's missing voxels, and its NaN/Inf voxels, as zeros
without an error, and says only "No such file or directory" for a missing MetaImage data file.

Example:
    >>> check_nifti_data("case-t1n.nii.gz")   # doctest: +SKIP
    True
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk

from .errors import InputError

PathLike = Union[str, os.PathLike]


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


_METAIMAGE_TYPES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4,
                    "MET_ULONG": 8, "MET_LONG": 8, "MET_ULONG_LONG": 8, "MET_LONG_LONG": 8, "MET_FLOAT": 4,
                    "MET_DOUBLE": 8}


def is_gzip(path: Path) -> bool:
    """Whether ``path`` starts with the gzip magic, whatever its name."""
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
    with (gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")) as handle:
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

