"""DICOM folders with several series: which series is which contrast, from its tags, and reading the chosen one.

A clinical export often puts every series of an examination in one folder. :func:`read_dicom_series` takes the series
whose tags (series description; repetition, echo and inversion times; contrast agent) say it is the wanted
contrast, or the one numbered N (``FOLDER#N``), and refuses an ambiguous folder, listing its series.

Example:
    >>> [(s["number"], s["description"], s["contrast"]) for s in dicom_series("exam")]   # doctest: +SKIP
    [('3', 'AX FLAIR', 't2f'), ('5', 'T1 MPRAGE', 't1n')]
    >>> image, note = read_dicom_series(Path("exam"), "t2f")                            # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import SimpleITK as sitk

from .contrast_names import classify_contrast
from .errors import InputError

PathLike = Union[str, os.PathLike]

#: The image key that records the DICOM series an input was read from (its Series Instance UID tag).
SERIES_UID = "0020|000e"
#: DICOM tags that tell a folder's series apart (:func:`dicom_series`).
_DICOM_TAGS = {"uid": SERIES_UID, "number": "0020|0011", "description": "0008|103e", "tr": "0018|0080",
               "te": "0018|0081", "ti": "0018|0082", "agent": "0018|0010", "sequence": "0018|0020"}


def dicom_selector(path: Path) -> tuple[Optional[Path], Optional[int]]:
    """(DICOM folder, series number or None) for ``FOLDER`` or ``FOLDER#N``; (None, None) for anything else.

    Example:
        >>> dicom_selector(Path("exam#5"))   # doctest: +SKIP
        (PosixPath('exam'), 5)
        >>> dicom_selector(Path("no-such-scan.nii.gz"))
        (None, None)
    """
    if path.is_dir():
        return path, None
    folder, sep, number = str(path).rpartition("#")
    if sep and number.isdigit() and Path(folder).is_dir():
        return Path(folder), int(number)
    return None, None


def _tag_number(value: str) -> float:
    try:
        return float(value.split("\\")[0])
    except ValueError:
        return 0.0


#: Series that are none of the model contrasts, whatever their timing: T2*/SWI, diffusion, perfusion, localizers.
_OTHER_SERIES = re.compile(r"t2\s*\*|t2star|swi|dwi|diff|adc|trace|perf|dsc|asl|local|scout|survey|calib|mip",
                           re.IGNORECASE)
_DARK_FLUID = re.compile(r"dark.?fluid|tirm|flair", re.IGNORECASE)


def _contrast_from_timing(tr: float, te: float, ti: float, sequence: str) -> Optional[str]:
    """The contrast the timing tags (ms) and the scanning sequence (0018,0020) denote, or None: FLAIR a long TI
    and TE; T1w a short TE with a short TR or a T1 inversion (MPRAGE); T2w a long TE and TR. EPI (diffusion,
    perfusion) and gradient echoes with a T2* echo time are none of them."""
    if te <= 0 or "EP" in sequence.upper().split("\\"):
        return None
    if ti >= 1500 and te >= 70:
        return "t2f"
    if "GR" in sequence.upper().split("\\") and "IR" not in sequence.upper() and te >= 10:
        return None  # a T2*-weighted gradient echo
    if te <= 30 and (0 < tr <= 1200 or 300 <= ti <= 1300):
        return "t1n"
    if te >= 60 and tr >= 1500 and ti <= 0:
        return "t2w"
    return None


def _contrast_from_tags(info: Mapping[str, str]) -> Optional[str]:
    """The contrast a series' tags denote: its description's words (as Slicer's input guess reads them), else its
    timing (:func:`_contrast_from_timing`); the timing corrects a T2 description to FLAIR (``t2_tirm_dark-fluid``)
    and a FLAIR description to T1w (a T1-FLAIR); a contrast agent tag makes a T1w a T1+Gd. T2*, diffusion,
    perfusion and localizer series are none of the contrasts."""
    description = info["description"]
    if _OTHER_SERIES.search(description):
        return None
    timing = _contrast_from_timing(*(_tag_number(info[key]) for key in ("tr", "te", "ti")), info.get("sequence", ""))
    contrast = classify_contrast(description) if description else None
    if contrast is None:
        contrast = timing
    elif contrast == "t2w" and (timing == "t2f" or _DARK_FLUID.search(description)):
        contrast = "t2f"
    elif contrast == "t2f" and timing == "t1n":
        contrast = "t1n"
    if contrast == "t1n" and info["agent"].strip():
        contrast = "t1c"
    return contrast


def dicom_series(folder: PathLike) -> list[dict[str, Any]]:
    """The DICOM series of ``folder``: per series its tags (:data:`_DICOM_TAGS`), files, size and the contrast its
    tags denote (None when they do not tell).

    Example:
        >>> [(s["number"], s["description"], s["contrast"]) for s in dicom_series("exam")]   # doctest: +SKIP
        [('3', 'AX FLAIR', 't2f'), ('5', 'T1 MPRAGE', 't1n')]
    """
    series = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[0])
        reader.ReadImageInformation()
        info: dict[str, Any] = {key: reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""
                                for key, tag in _DICOM_TAGS.items()}
        info.update(uid=uid, files=files, size=(*reader.GetSize()[:2], len(files)))
        info["contrast"] = _contrast_from_tags(info)
        series.append(info)
    return series


def read_dicom_series(folder: Path, contrast: Optional[str] = None, number: Optional[int] = None
                      ) -> tuple[sitk.Image, Optional[str]]:
    """The series of a DICOM ``folder`` numbered ``number``, or its only series, or the one whose tags say it is
    ``contrast`` (else refused, listing the series and how to choose); with a note when the chosen series' tags
    say another contrast. The image carries the series' UID under :data:`SERIES_UID`.

    Example:
        >>> image, note = read_dicom_series(Path("exam"), "t2f")   # doctest: +SKIP
    """
    series = dicom_series(folder)
    if not series:
        raise InputError(f"{folder} is a folder with no DICOM series; give a volume file or a DICOM folder.")
    if number is not None:
        chosen = [s for s in series if s["number"] and int(_tag_number(s["number"])) == number]
        why = f"numbered {number}"
    elif len(series) == 1:
        chosen, why = series, ""
    else:
        chosen = [s for s in series if contrast is not None and s["contrast"] == contrast]
        why = f"whose tags say '{contrast}'" if contrast else "chosen"
    if len(chosen) != 1:
        listed = "; ".join(f"#{s['number'] or '?'} '{s['description']}' {'x'.join(map(str, s['size']))} "
                           f"({s['contrast'] or 'contrast not told'})" for s in series)
        raise InputError(f"{folder} holds {len(series)} DICOM series and {'none' if not chosen else 'several'} "
                         f"{why}: {listed}. Choose one by its number as FOLDER#NUMBER (e.g. "
                         f"--input {contrast or 't1n'}={folder}#{series[0]['number'] or 1}).")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(chosen[0]["files"])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"Cannot read the DICOM series {chosen[0]['uid']} in {folder} "
                         f"({str(exc).strip().splitlines()[-1]}).") from exc
    image.SetMetaData(SERIES_UID, chosen[0]["uid"])
    told = chosen[0]["contrast"]
    if contrast is not None and told is not None and told != contrast:  # the folder's only series, or chosen by N
        return image, (f"the DICOM series #{chosen[0]['number'] or '?'} '{chosen[0]['description']}' in {folder} was "
                       f"given as '{contrast}' but its tags say '{told}': check that it is the right series.")
    return image, None
