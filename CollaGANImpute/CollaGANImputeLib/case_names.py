"""Case folders and file names: which file holds which contrast (BraTS 2023 and 2021 names), the case's name,
and the names of the outputs.

Example:
    >>> split_contrast("BraTS2021_00012_t1ce")
    ('BraTS2021_00012', 't1c', 't1ce')
    >>> synthetic_filename("P1", "t1c")
    'P1-t1c-synthetic-collagan.nii.gz'
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

from .errors import InputError

PathLike = Union[str, os.PathLike]

#: Extensions tried, in order, for BraTS-style case files ``<case>-<contrast><ext>``.
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Name part that marks this package's outputs; such files are never taken as real inputs.
SYNTHETIC_TAG = "synthetic"
LESION_SUFFIX = "seg"


def _strip_extension(name: str) -> str:
    for ext in VOLUME_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name



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



def synthetic_filename(case: str, contrast: str, extension: str = ".nii.gz") -> str:
    """Output name that says what the file is: ``<case>-<contrast>-synthetic-collagan.nii.gz``."""
    return f"{case}-{contrast}-{SYNTHETIC_TAG}-collagan{extension}"

