"""Convert the public "LGG segmentation" slice set (kaggle_3m) into the BraTS-named NIfTI case folders training reads.

The source (Buda et al. 2019 / Mazurowski et al. 2017, TCGA-LGG from TCIA; CC BY-NC-SA 4.0) has one folder per
patient, ``TCGA_<site>_<patient>_<date>/``, holding ``<folder>_<n>.tif`` (RGB, 256x256, 8-bit: channels =
pre-contrast T1, FLAIR, post-contrast T1; a contrast the patient lacks is a copy of FLAIR) and
``<folder>_<n>_mask.tif`` (FLAIR abnormality, 0/255) for every axial slice ``n``. The conversion:

- slices stacked in slice-number order (numeric: 9 before 10), array ``[slice, row, column]``, uint8;
- spacing 1 mm, origin 0, identity direction (the source kept no geometry);
- channels split into ``t1n`` / ``t2f`` / ``t1c``; a channel equal to FLAIR in every slice is a missing contrast
  and is left out; mask > 0 -> 1 (``-seg``);
- case name ``TCGA-<site>-<patient>`` (the date dropped), files ``<case>-<contrast>.nii.gz``;
- cases with all three contrasts go to ``OUT/complete/``, the others to ``OUT/incomplete/``.

``Resources/SampleData/TCGA-HT-7882`` is exactly this conversion of its source folder (byte for byte).
Each case folder is written to a temporary folder and renamed into place, so an interrupted run leaves only
whole cases; a rerun skips the cases already there (``overwrite=True`` replaces them). The source is only read.

Example:
    python -m training.collagan_train.main prepare-lgg ~/Downloads/kaggle_3m ~/data/lgg
    >>> prepare_lgg("kaggle_3m", "data/lgg")          # doctest: +SKIP
    {'complete': ['TCGA-CS-4941', ...], 'incomplete': {'TCGA-DU-6407': ['t1c'], ...}, 'skipped': []}
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import SimpleITK as sitk
from CollaGANImputeLib.atomic import atomic_path
from CollaGANImputeLib.errors import InputError

#: The source's RGB channel order (its README: "pre-contrast, FLAIR, post-contrast").
SOURCE_CHANNELS = ("t1n", "t2f", "t1c")
FLAIR = "t2f"
#: Contrasts in the order they are written (and listed).
CONTRASTS = ("t1n", "t1c", "t2f")
PathLike = Union[str, os.PathLike]


class PrepareError(InputError):
    """The source folder is not in the kaggle_3m layout; the message names the file and what to do."""


@dataclass
class Patient:
    """One converted patient: BraTS case name, volumes by contrast ([slice, row, column] uint8), lesion mask."""

    name: str
    source: Path
    volumes: dict[str, np.ndarray]
    seg: np.ndarray

    @property
    def missing(self) -> list[str]:
        return [c for c in CONTRASTS if c not in self.volumes]


def case_name(folder_name: str) -> str:
    """``TCGA_HT_7882_19970125`` -> ``TCGA-HT-7882`` (the acquisition date dropped, BraTS-style dashes)."""
    parts = folder_name.split("_")
    if len(parts) > 1 and re.fullmatch(r"\d{8}", parts[-1]):
        parts = parts[:-1]
    return "-".join(parts)


def slice_files(folder: Path) -> list[tuple[int, Path, Path]]:
    """(slice number, image, mask) of a patient folder in numeric slice order; refuses holes and lone files."""
    pattern = re.compile(re.escape(folder.name) + r"_(\d+)(_mask)?\.tiff?$")
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    for path in folder.iterdir():
        match = pattern.fullmatch(path.name)
        if match:
            (masks if match.group(2) else images)[int(match.group(1))] = path
    if not images:
        raise PrepareError(f"{folder} holds no slices named {folder.name}_<n>.tif; give the kaggle_3m folder "
                           "whose subfolders are the patients (TCGA_<site>_<patient>_<date>).")
    lone = sorted(set(images) ^ set(masks))
    if lone:
        raise PrepareError(f"{folder}: slice(s) {lone} lack their image or _mask.tif partner; download the "
                           "folder again (the set has one mask per slice).")
    numbers = sorted(images)
    holes = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if holes:
        raise PrepareError(f"{folder}: slice(s) {holes} are missing between {numbers[0]} and {numbers[-1]}; "
                           "stacking without them would misplace every later slice. Download the folder again.")
    return [(n, images[n], masks[n]) for n in numbers]


def _read_slice(path: Path, channels: int) -> np.ndarray:
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    if array.dtype != np.uint8:
        raise PrepareError(f"{path} is {array.dtype}, not 8-bit; this is not a kaggle_3m slice.")
    if channels == 1 and array.ndim == 3:
        array = array[..., 0]  # a mask saved as RGB/grey+alpha: its channels are equal
    expected = 3 if channels == 3 else 2
    if array.ndim != expected or (channels == 3 and array.shape[-1] != 3):
        raise PrepareError(f"{path} has shape {array.shape}; expected "
                           f"{'rows x columns x 3 (RGB)' if channels == 3 else 'rows x columns'}.")
    return array


def read_patient(folder: PathLike) -> Patient:
    """Read one kaggle_3m patient folder into volumes; a channel that is FLAIR in every slice is left out."""
    folder = Path(folder)
    files = slice_files(folder)
    rgb = [_read_slice(image, 3) for _, image, _ in files]
    seg = [_read_slice(mask, 1) for _, _, mask in files]
    shapes = {a.shape for a in rgb} | {a.shape + (3,) for a in seg}
    if len(shapes) != 1:
        raise PrepareError(f"{folder}: slices differ in size ({sorted(shapes)}); one patient has one grid.")
    stack = np.stack(rgb)  # [slice, row, column, channel]
    flair = stack[..., SOURCE_CHANNELS.index(FLAIR)]
    volumes = {}
    for index, contrast in enumerate(SOURCE_CHANNELS):
        channel = np.ascontiguousarray(stack[..., index])
        if contrast != FLAIR and np.array_equal(channel, flair):
            continue  # the source's stand-in for a contrast this patient lacks
        volumes[contrast] = channel
    return Patient(name=case_name(folder.name), source=folder, volumes=volumes,
                   seg=(np.stack(seg) > 0).astype(np.uint8))


def to_image(array: np.ndarray) -> sitk.Image:
    """The source's geometry: 1 mm spacing, origin 0, identity direction (it kept none of its own)."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    image.SetOrigin((0.0, 0.0, 0.0))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return image


def write_patient(patient: Patient, case_dir: Path) -> None:
    """Write ``case_dir`` whole or not at all: files go to a temporary sibling folder that is then renamed."""
    with atomic_path(case_dir, directory=True) as tmp:
        for contrast in CONTRASTS:
            if contrast in patient.volumes:
                sitk.WriteImage(to_image(patient.volumes[contrast]), str(tmp / f"{patient.name}-{contrast}.nii.gz"),
                                useCompression=True)
        sitk.WriteImage(to_image(patient.seg), str(tmp / f"{patient.name}-seg.nii.gz"), useCompression=True)


def patient_folders(source: Path) -> list[Path]:
    """The patient folders of a kaggle_3m download (``source`` itself, or its ``kaggle_3m`` subfolder)."""
    if not source.is_dir():
        raise PrepareError(f"Source folder not found: {source}. Give the unpacked kaggle_3m folder of the "
                           "'LGG segmentation' download.")
    if (source / "kaggle_3m").is_dir():
        source = source / "kaggle_3m"
    folders = sorted(p for p in source.iterdir()
                     if p.is_dir() and not p.name.startswith(".") and any(p.glob(f"{p.name}_*_mask.tif")))
    if not folders:
        raise PrepareError(f"No patient folders (TCGA_<site>_<patient>_<date>/ with *_mask.tif slices) in {source}; "
                           "give the kaggle_3m folder of the 'LGG segmentation' download.")
    return folders


def prepare_lgg(source: PathLike, out: PathLike, overwrite: bool = False,
                log: Optional[Callable[[str], None]] = print) -> dict:
    """Convert every patient of ``source`` (kaggle_3m) into ``out/complete/<case>`` or ``out/incomplete/<case>``.

    Returns ``{"complete": [case, ...], "incomplete": {case: [missing contrasts]}, "skipped": [case, ...]}``;
    skipped cases were already in ``out`` (kept unless ``overwrite``).
    """
    source, out = Path(source).expanduser(), Path(out).expanduser()
    folders = patient_folders(source)
    names = [case_name(f.name) for f in folders]
    doubles = sorted({n for n in names if names.count(n) > 1})
    if doubles:
        raise PrepareError(f"{source} holds more than one folder for {doubles}; keep one per patient.")
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise PrepareError(f"Write the output outside the source folder ({out} is inside {source}).")
    summary: dict = {"complete": [], "incomplete": {}, "skipped": []}
    for number, folder in enumerate(folders, 1):
        name = case_name(folder.name)
        existing = [out / kind / name for kind in ("complete", "incomplete") if (out / kind / name).is_dir()]
        if existing and not overwrite:
            summary["skipped"].append(name)
            continue
        patient = read_patient(folder)
        for old in existing:
            shutil.rmtree(old)
        kind = "incomplete" if patient.missing else "complete"
        write_patient(patient, out / kind / name)
        if patient.missing:
            summary["incomplete"][name] = patient.missing
        else:
            summary["complete"].append(name)
        if log:
            note = f" (no {', '.join(patient.missing)} in the source)" if patient.missing else ""
            log(f"[{number}/{len(folders)}] {kind}/{name}: {patient.seg.shape[0]} slices{note}")
    if log:
        log(f"{len(summary['complete'])} complete and {len(summary['incomplete'])} incomplete cases written to "
            f"{out}" + (f"; {len(summary['skipped'])} already there, kept (--overwrite replaces them)"
                        if summary["skipped"] else ""))
    return summary


def cmd_prepare_lgg(args: argparse.Namespace) -> None:
    try:
        prepare_lgg(args.source, args.out, overwrite=args.overwrite)
    except PrepareError as exc:
        raise SystemExit(f"error: {exc}") from None


def add_parser(sub) -> None:
    p = sub.add_parser("prepare-lgg", help="convert the public kaggle_3m LGG slices into BraTS-named NIfTI cases",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("source", metavar="KAGGLE_3M_DIR", help="the unpacked kaggle_3m folder (one folder per patient)")
    p.add_argument("out", metavar="OUT_DIR", help="writes OUT_DIR/complete/<case>/ and OUT_DIR/incomplete/<case>/")
    p.add_argument("--overwrite", action="store_true", help="replace cases already in OUT_DIR (default: keep them)")
    p.set_defaults(func=cmd_prepare_lgg)
