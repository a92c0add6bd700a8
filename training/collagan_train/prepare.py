"""Turn the data layouts users have into the case folders training reads.

Recognised sources (searched recursively under SRC; each folder holding recognised volumes is one case):

- BraTS 2021: ``<case>/<case>_t1.nii.gz``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg`` (-> t1n, t1c, t2w, t2f, seg);
- BraTS 2023 and later (and these case folders themselves): ``<case>/<case>-t1n.nii.gz``, ``-t1c``, ``-t2w``,
  ``-t2f``, ``-seg``;
- the public LGG slice set (kaggle_3m: ``TCGA_<site>_<patient>_<date>/*_mask.tif``), read as ``prepare-lgg``
  reads it (:mod:`.prepare_lgg`).

The contrast set is ``contrasts``, by default every contrast that all cases have (a contrast some cases lack is
named, with the flag that keeps it). Cases with every contrast of the set go to ``OUT/complete/<case>/``, the others
to ``OUT/incomplete/<case>/`` (with what they have of the set); ``OUT/cohort.json`` lists both. Volumes keep their
own grid, spacing and intensities (read and checked by the core, written as ``<case>-<contrast>.nii.gz``): training
brings every slice to the model's field as inference does (:func:`.stores.prepare_slices`), so a BraTS
240x240 slice at 1 mm is zero-padded to 256x256 and other spacings are resampled. Each case folder is written all
or nothing (the core's :class:`~CollaGANImputeLib.io.OutputSet`); a rerun keeps the cases already there
(``overwrite`` replaces them). The source is only read.

Example:
    python -m training.collagan_train.main prepare ~/BraTS2021_Training_Data ~/data/brats21
    python -m training.collagan_train.main prepare ~/BraTS-GLI ~/data/brats23 --contrasts t1n,t1c,t2w,t2f
    >>> prepare("BraTS2021_Training_Data", "data/brats21")           # doctest: +SKIP
    {'layout': ['brats2021'], 'contrasts': ['t1n', 't1c', 't2w', 't2f'], 'complete': [...], 'incomplete': {}, ...}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import SimpleITK as sitk
from CollaGANImputeLib.errors import CollaGANError
from CollaGANImputeLib.io import (
    CONTRAST_NAMES,
    LESION_SUFFIX,
    SYNTHETIC_TAG,
    VOLUME_EXTENSIONS,
    OutputSet,
    PathLike,
    check_case_name,
    check_output_folder,
    read_volume,
    remove_created,
    write_volume,
)

from . import prepare_lgg
from .prepare_lgg import PrepareError


def _suffixes(convention: str) -> dict[str, str]:
    """File-name suffix -> contrast of one naming convention, from the core's one table of contrast names."""
    return {name: contrast for name, (contrast, named_by) in CONTRAST_NAMES.items()
            if named_by == convention and contrast != LESION_SUFFIX} | {"seg": LESION_SUFFIX}


#: File-name suffix -> contrast, per layout; the separator before the suffix tells the layouts apart.
LAYOUTS = {"brats2021": ("_", _suffixes("BraTS 2021")), "brats2023": ("-", _suffixes("BraTS 2023"))}
#: The order contrasts are listed in (others follow alphabetically).
ORDER = ("t1n", "t1c", "t2w", "t2f")
SUMMARY = "cohort.json"


@dataclass
class SourceCase:
    """One case of the source: its name, layout and a reader per contrast (``seg`` included when present)."""

    name: str
    layout: str
    readers: dict[str, Callable[[], sitk.Image]]

    @property
    def contrasts(self) -> list[str]:
        return ordered(c for c in self.readers if c != LESION_SUFFIX)


def ordered(contrasts) -> list[str]:
    """Contrasts in the usual order (t1n, t1c, t2w, t2f), others after them alphabetically."""
    unique = set(contrasts)
    return [c for c in ORDER if c in unique] + sorted(unique - set(ORDER))


def _stem(name: str) -> Optional[str]:
    for ext in VOLUME_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return None


def recognise(name: str) -> Optional[tuple[str, str, str]]:
    """(case, layout, contrast) of a BraTS file name, or None.

    Example:
        >>> recognise("BraTS2021_00000_t1ce.nii.gz"), recognise("BraTS-GLI-00000-000-t2w.nii.gz")
        (('BraTS2021_00000', 'brats2021', 't1c'), ('BraTS-GLI-00000-000', 'brats2023', 't2w'))
    """
    stem = _stem(name)
    if stem is None or name.startswith(".") or SYNTHETIC_TAG in name.lower():
        return None
    for layout, (separator, suffixes) in LAYOUTS.items():
        case, sep, suffix = stem.rpartition(separator)
        if sep and case and suffix.lower() in suffixes:
            return case, layout, suffixes[suffix.lower()]
    return None


def _reader(path: Path) -> Callable[[], sitk.Image]:
    return lambda: read_volume(path)


def brats_cases(source: Path) -> list[SourceCase]:
    """Every folder under ``source`` holding BraTS-named volumes, as one case each (sorted by name)."""
    cases: dict[str, SourceCase] = {}
    for folder, subfolders, files in os.walk(source):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found = [(f, recognise(f)) for f in sorted(files)]
        found = [(f, hit) for f, hit in found if hit is not None]
        if not found:
            continue
        names = {case for _, (case, _, _) in found}
        if len(names) > 1:
            raise PrepareError(f"{folder} holds files of several cases ({sorted(names)[:4]}); give each case its "
                               "own folder, as the BraTS downloads do.")
        name = names.pop()
        if name in cases:
            raise PrepareError(f"Case {name} is in two folders under {source}; keep one.")
        readers: dict[str, Callable[[], sitk.Image]] = {}
        layouts = set()
        for file, (_, layout, contrast) in found:
            if contrast in readers:
                raise PrepareError(f"{folder} has two files for {contrast} of case {name}; keep one.")
            readers[contrast] = _reader(Path(folder) / file)
            layouts.add(layout)
        cases[name] = SourceCase(check_case_name(name), "+".join(sorted(layouts)), readers)
    return [cases[name] for name in sorted(cases)]


class _LggPatients:
    """Reads kaggle_3m patients, keeping the last one read: its contrasts are read one after another."""

    def __init__(self) -> None:
        self.folder: Optional[Path] = None
        self.patient: Optional[prepare_lgg.Patient] = None

    def read(self, folder: Path) -> prepare_lgg.Patient:
        if folder != self.folder:
            self.folder, self.patient = folder, prepare_lgg.read_patient(folder)
        return self.patient  # type: ignore[return-value]

    def reader(self, folder: Path, contrast: str) -> Callable[[], sitk.Image]:
        def read() -> sitk.Image:
            patient = self.read(folder)
            return prepare_lgg.to_image(patient.seg if contrast == LESION_SUFFIX else patient.volumes[contrast])
        return read


def lgg_cases(source: Path) -> list[SourceCase]:
    """The patients of a kaggle_3m download as cases (a contrast its source replaced by FLAIR is absent)."""
    patients = _LggPatients()
    cases = []
    for folder in prepare_lgg.patient_folders(source):
        patient = patients.read(folder)  # which contrasts it has needs its slices; read again when written
        readers = {c: patients.reader(folder, c) for c in [*patient.volumes, LESION_SUFFIX]}
        cases.append(SourceCase(patient.name, "lgg", readers))
    return cases


def find_cases(source: Path) -> list[SourceCase]:
    """The cases of ``source`` in whichever recognised layout it has; refused with the layouts when none."""
    if not source.is_dir():
        raise PrepareError(f"Source folder not found: {source}. Give the folder of a BraTS download, of case "
                           "folders, or the unpacked kaggle_3m LGG folder.")
    cases = brats_cases(source)
    if not cases and (any(source.glob("*/*_mask.tif")) or any(source.glob("kaggle_3m/*/*_mask.tif"))):
        cases = lgg_cases(source)
    if not cases:
        raise PrepareError(f"No cases found in {source}: expected case folders with BraTS 2021 files "
                           "(<case>_t1.nii.gz, _t1ce, _t2, _flair), BraTS 2023 files (<case>-t1n.nii.gz, -t1c, "
                           "-t2w, -t2f) or the kaggle_3m LGG patient folders.")
    return cases


def choose_contrasts(cases: Sequence[SourceCase], contrasts: Optional[Sequence[str]],
                     log: Optional[Callable[[str], None]] = print) -> list[str]:
    """``contrasts`` (checked: at least two, each present in some case), or every contrast all cases have."""
    everywhere = set.intersection(*(set(c.contrasts) for c in cases))
    anywhere = set().union(*(c.contrasts for c in cases))
    if contrasts:
        chosen = list(dict.fromkeys(contrasts))
        unknown = [c for c in chosen if c not in anywhere]
        if unknown:
            raise PrepareError(f"--contrasts names {unknown}, which no case has; the cases have "
                               f"{','.join(ordered(anywhere))}.")
    else:
        chosen = ordered(everywhere)
        dropped = ordered(anywhere - everywhere)
        if dropped and log:
            counts = ", ".join(f"{c} in {sum(c not in case.contrasts for case in cases)}" for c in dropped)
            log(f"Left out {', '.join(dropped)}: missing in some cases ({counts} of {len(cases)}). To keep "
                f"them, pass --contrasts {','.join(ordered(anywhere))} (cases without one go to incomplete/).")
    if len(chosen) < 2:
        raise PrepareError(f"The contrast set {chosen} has fewer than two contrasts (the cases have "
                           f"{','.join(ordered(anywhere))}); CollaGAN imputes one contrast from others: pass "
                           "--contrasts with at least two.")
    return chosen


def write_case(case: SourceCase, contrasts: Sequence[str], case_dir: Path) -> None:
    """Write the case's ``contrasts`` (those it has) and its ``-seg`` into ``case_dir``, all or nothing."""
    created = check_output_folder(case_dir)
    try:
        with OutputSet() as outputs:
            for contrast in [c for c in contrasts if c in case.readers] + [LESION_SUFFIX]:
                if contrast in case.readers:
                    write_volume(case.readers[contrast](), case_dir / f"{case.name}-{contrast}.nii.gz",
                                 outputs=outputs)
            outputs.commit()
    except BaseException:
        remove_created(created)
        raise


def prepare(source: PathLike, out: PathLike, contrasts: Optional[Sequence[str]] = None, overwrite: bool = False,
            log: Optional[Callable[[str], None]] = print) -> dict:
    """Convert every case of ``source`` into ``out/complete/<case>`` or ``out/incomplete/<case>``.

    Returns (and writes to ``out/cohort.json``) ``{"layout": [...], "contrasts": [...], "complete": [case, ...],
    "incomplete": {case: [missing contrasts]}, "skipped": [case, ...]}``; skipped cases were already in ``out``
    (kept unless ``overwrite``).
    """
    source, out = Path(source).expanduser(), Path(out).expanduser()
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise PrepareError(f"Write the output outside the source folder ({out} is inside {source}).")
    cases = find_cases(source)
    chosen = choose_contrasts(cases, contrasts, log)
    summary: dict = {"layout": sorted({c.layout for c in cases}), "contrasts": chosen, "complete": [],
                     "incomplete": {}, "skipped": []}
    for number, case in enumerate(cases, 1):
        missing = [c for c in chosen if c not in case.contrasts]
        kind = "incomplete" if missing else "complete"
        existing = [out / k / case.name for k in ("complete", "incomplete") if (out / k / case.name).is_dir()]
        if existing and not overwrite:
            summary["skipped"].append(case.name)
        else:
            for old in existing:
                shutil.rmtree(old)
            write_case(case, chosen, out / kind / case.name)
        if missing:
            summary["incomplete"][case.name] = missing
        else:
            summary["complete"].append(case.name)
        if log:
            note = f" (no {', '.join(missing)})" if missing else ""
            log(f"[{number}/{len(cases)}] {kind}/{case.name}{note}")
    with OutputSet() as outputs:
        outputs.stage(out / SUMMARY, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2) + "\n"))
        outputs.commit()
    if log:
        log(f"{len(summary['complete'])} complete and {len(summary['incomplete'])} incomplete cases "
            f"({','.join(chosen)}) in {out}" + (f"; {len(summary['skipped'])} already there, kept (--overwrite "
                                                  "replaces them)" if summary["skipped"] else ""))
    return summary


def cmd_prepare(args: argparse.Namespace) -> None:
    contrasts = [c.strip() for c in args.contrasts.split(",") if c.strip()] if args.contrasts else None
    try:
        prepare(args.source, args.out, contrasts, overwrite=args.overwrite)
    except CollaGANError as exc:  # PrepareError included: one line naming the problem and the fix
        raise SystemExit(f"error: {exc}") from None


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", help="turn BraTS 2021/2023 folders or the kaggle_3m LGG download into the case "
                       "folders training reads", description=__doc__.split("\n\n")[0])
    p.add_argument("source", metavar="SRC", help="the downloaded data (searched recursively for case folders)")
    p.add_argument("out", metavar="OUT", help="writes OUT/complete/<case>/, OUT/incomplete/<case>/, OUT/cohort.json")
    p.add_argument("--contrasts", metavar="A,B,...",
                   help="the contrast set, e.g. t1n,t1c,t2w,t2f (default: every contrast all cases have)")
    p.add_argument("--overwrite", action="store_true", help="replace cases already in OUT (default: keep them)")
    p.set_defaults(func=cmd_prepare)
