"""Checks of a file uploaded to ``collagan-impute web`` before any of its voxel data is read.

Two ways an upload could hurt the server that the core's reader does not guard against, because on the command
line the user owns both the file and the machine:

- a header-plus-data format (``.mhd`` with ``ElementDataFile``, ``.nhdr``/``.nrrd`` with ``data file:``) names
  its data file, which could be any file the server can read (``/etc/passwd``, another user's scan). The data
  file must have been uploaded with the header, named by its file name alone, inside the upload folder.
- a compressed file can declare (or hold) far more voxel data than its size suggests: a 4 MB ``.nii.gz`` can
  expand to 4 GiB. The size the header declares is checked against a limit without reading the data
  (``ImageFileReader.ReadImageInformation``), and a gzip stream is never inflated beyond what its header declares.

Example:
    >>> check_upload(Path("/tmp/collagan-web-x/case-t1n.nii.gz"), Path("/tmp/collagan-web-x"))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import zlib
from pathlib import Path
from typing import Any, Optional

import SimpleITK as sitk

from .errors import InputError

#: Largest upload accepted, per file (a 3D MR volume is a few to a few hundred MB); COLLAGAN_WEB_MAX_UPLOAD_MB.
MAX_UPLOAD_BYTES = int(float(os.environ.get("COLLAGAN_WEB_MAX_UPLOAD_MB", "512")) * 1024 * 1024)
#: The most voxel data an uploaded volume may declare (a 512^3 float32 volume is 512 MiB); COLLAGAN_WEB_MAX_IMAGE_MB.
MAX_IMAGE_BYTES = int(float(os.environ.get("COLLAGAN_WEB_MAX_IMAGE_MB", "1024")) * 2 ** 20)
#: Data files of header-plus-data formats, accepted only as companions of an uploaded header.
DATA_EXTENSIONS = (".raw.gz", ".raw", ".zraw", ".dat", ".img")
#: Header and NIfTI extensions a gzip stream may hold beyond the declared voxel data.
_GZIP_SLACK = 64 * 2 ** 20
_CHUNK = 1 << 22
_HEADER_BYTES = 1 << 16  # a header longer than this is not one a scanner export writes


def _data_file_reference(path: Path) -> Optional[str]:
    """The data file a MetaImage or NRRD header names (None when the data is in the file itself)."""
    with open(path, "rb") as handle:
        head = handle.read(_HEADER_BYTES).decode("latin-1")
    lower = path.name.lower()
    if lower.endswith((".mhd", ".mha")):
        for line in head.splitlines():
            key, _, value = line.partition("=")
            if key.strip().lower() == "elementdatafile":
                value = value.strip()
                return None if value.upper() == "LOCAL" else value
        return None
    if lower.endswith((".nhdr", ".nrrd")):
        for line in head.splitlines():
            if not line.strip():
                break  # the blank line that ends a NRRD header: what follows is data
            key, _, value = line.partition(":")
            if key.strip().lower() in ("data file", "datafile"):
                return value.strip()
    return None


def check_data_file(path: Path, folder: Path) -> None:
    """Refuse a header whose data file was not uploaded with it or lies outside the upload folder.

    >>> check_data_file(Path("/tmp/up/a.mhd"), Path("/tmp/up"))  # doctest: +SKIP
    """
    reference = _data_file_reference(path)
    if reference is None:
        return
    if not reference or " " in reference or "%" in reference or reference.upper() == "LIST":
        raise InputError(f"its header names its data as '{reference}' (several files or a pattern); upload a "
                         "single-file format instead (.nii.gz, .nrrd, .mha).")
    if re.search(r"[\\/]", reference) or reference.startswith("~"):
        raise InputError(f"its header names the data file '{reference}' by a path; in the web app the data file "
                         "must be named by its file name alone and uploaded with the header (or use .nii.gz, "
                         ".nrrd, .mha).")
    data = (folder / reference).resolve()
    if data.parent != folder.resolve() or not data.is_file():
        raise InputError(f"its data file '{reference}' was not uploaded with it; select the header and its data "
                         "file together (or use a single-file format: .nii.gz, .nrrd, .mha).")


def declared_bytes(path: Path) -> int:
    """The voxel data a file's header declares, in bytes, read without reading the voxels.

    >>> declared_bytes(Path("case-t1n.nii.gz"))  # doctest: +SKIP
    38400000
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"its header cannot be read ({str(exc).strip().splitlines()[-1]}).") from exc
    kind = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    bits = re.search(r"(\d+)-bit", kind)
    component = (int(bits.group(1)) // 8 if bits else 8) * (2 if "complex" in kind else 1)
    count = 1
    for size in reader.GetSize():
        count *= int(size)
    return count * component * max(1, reader.GetNumberOfComponents())


def _check_gzip_bound(path: Path, limit: int) -> None:
    """Inflate a gzip file in chunks, at most ``limit`` bytes: a stream holding more is refused."""
    total = 0
    try:
        with gzip.open(path, "rb") as handle:
            while block := handle.read(_CHUNK):
                total += len(block)
                if total > limit:
                    raise InputError("its compressed data holds more than its header declares; a file built to "
                                     "exhaust the server's memory is refused. Export the volume again.")
    except (EOFError, gzip.BadGzipFile, zlib.error):
        return  # a damaged stream: the core's reader refuses it with its own message


def check_upload(path: Path, folder: Path, limit: int = 0) -> None:
    """Every check of an uploaded volume that reads no voxel data; raises InputError naming the fix.

    ``limit`` is the most voxel data in bytes (default :data:`MAX_IMAGE_BYTES`).
    """
    limit = limit or MAX_IMAGE_BYTES
    check_data_file(path, folder)
    size = declared_bytes(path)
    if size > limit:
        raise InputError(f"its header declares {size / 2 ** 20:.0f} MB of voxel data, more than the "
                         f"{limit // 2 ** 20} MB limit (COLLAGAN_WEB_MAX_IMAGE_MB); crop or downsample it, or use "
                         "the command line.")
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    if compressed:
        _check_gzip_bound(path, size + _GZIP_SLACK)


#: The volume formats a page may upload (their data files, DATA_EXTENSIONS, come with a header).
UPLOAD_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def sanitize_filename(name: str) -> str:
    """A safe file name from an uploaded one: the base name only, letters, digits, '.', '-', '_' kept.

    >>> sanitize_filename("../../etc/x t1c.nii.gz")
    'x_t1c.nii.gz'
    """
    base = re.split(r"[\\/]", name or "")[-1]
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "upload"
    return clean[:120]


def volume_extension(name: str) -> Optional[str]:
    lower = name.lower()
    return next((e for e in UPLOAD_EXTENSIONS if lower.endswith(e)), None)


def write_upload(folder: Path, name: str, content, size: int = 0, limit: int = 0) -> Path:
    """Write an uploaded file (bytes, or the chunks large files arrive in) into ``folder`` under a sanitized
    name, refusing an unsupported type, an empty file or one over ``limit`` bytes before anything is written.

    Example:
        >>> write_upload(Path("/tmp/collagan-web-x"), "P1-t1n.nii.gz", data, limit=2 ** 29)   # doctest: +SKIP
        PosixPath('/tmp/collagan-web-x/P1-t1n.nii.gz')
    """
    if volume_extension(name) is None and not name.lower().endswith(DATA_EXTENSIONS):
        raise InputError("unsupported file type; upload NIfTI (.nii, .nii.gz), NRRD (.nrrd) or MHA (.mha).")
    if isinstance(content, list):  # large files arrive in chunks
        content = b"".join(bytes(c) for c in content)
    data = bytes(content or b"")
    if limit and max(int(size or 0), len(data)) > limit:
        raise InputError(f"the file is larger than the {limit // 2 ** 20} MB upload limit.")
    if not data:
        raise InputError("the file is empty.")
    path = folder / sanitize_filename(name)
    path.write_bytes(data)
    return path


def check_saved_upload(path: Path, folder: Path) -> None:
    """The checks that read no voxels (data file, declared size), then the core's (damaged, NaN, ...); a refused
    upload is deleted."""
    from .io import read_volume

    try:
        if volume_extension(path.name) is None:
            raise InputError("is a data file without its header; select the header (.mhd, .nhdr) with it.")
        check_upload(path, folder)
        read_volume(path)  # the core's checks: truncated/damaged files, NaN/Inf, a clear message
    except Exception:
        path.unlink(missing_ok=True)  # a refused upload is not kept
        raise


class UploadReceiver:
    """What the web app does with the files a page sends: written to the app's private ``upload_dir``, checked
    (:func:`check_saved_upload`) and read into its scene (``self.logic``); messages go to ``self.state``. Mixed into
    :class:`.web.WebApp`."""

    upload_dir: Path
    logic: Any  # the app's SceneLogic
    state: Any  # the page's trame state

    async def on_uploads(self, uploads=None) -> None:
        """The files chosen in the page, sent to the server alone: data files first (a header's companions), then
        each volume checked off the event loop (other tabs stay live) and added to the scene."""
        files = [f for f in (uploads if isinstance(uploads, list) else [uploads]) if isinstance(f, dict)]
        if not files:
            return
        loop = asyncio.get_running_loop()
        messages, loaded, companions, volumes = [], [], [], []
        for item in files:
            name = str(item.get("name", ""))
            if volume_extension(name) or not name.lower().endswith(DATA_EXTENSIONS):
                volumes.append(item)  # a volume, or a file refused below with its own message
                continue
            try:
                companions.append(self._write_upload(str(item.get("name")), item.get("content"), item.get("size")))
            except Exception as error:
                messages.append(self._upload_message(str(item.get("name")), error))
        try:
            for item in volumes:
                name = str(item.get("name", "upload"))
                try:
                    path = self._write_upload(name, item.get("content"), item.get("size"))
                    await loop.run_in_executor(None, self._check_upload, path)
                    loaded.append(self._add_upload(path))
                except Exception as error:
                    messages.append(self._upload_message(name, error))
        finally:
            for path in companions:  # read into the scene with their headers: not kept
                path.unlink(missing_ok=True)
        with self.state:
            self.state.error = " ".join(messages)
            if loaded:
                self._refresh_volumes()
                self.state.status = f"Loaded {', '.join(loaded)}."

    def _upload_message(self, name: str, error: Exception) -> str:
        text = self.logic.plainError(error).replace(str(self.upload_dir) + os.sep, "")
        return f"'{name}' was not loaded: {text}"  # no server paths on the page

    def read_upload(self, name: str, content, size: int = 0) -> str:
        """Write one uploaded file to the private folder, check it and read it with Slicer's reader; the node's
        name (the page's uploads do the same, with the checks off the event loop)."""
        path = self._write_upload(name, content, size)
        self._check_upload(path)
        return self._add_upload(path)

    def _write_upload(self, name: str, content, size=0) -> Path:
        return write_upload(self.upload_dir, name, content, size, limit=MAX_UPLOAD_BYTES)

    def _check_upload(self, path: Path) -> None:
        check_saved_upload(path, self.upload_dir)

    def _add_upload(self, path: Path) -> str:
        try:
            node = self.logic.readVolume(path)
        except Exception:
            path.unlink(missing_ok=True)
            raise
        return node.GetName()
