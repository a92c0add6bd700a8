"""The cohort a run trains on (``finetune``, ``train COHORT``): the folder of its case folders, which cases are
complete, which contrasts they share, and which complete cases are held out to choose and score the model on.

Example:
    >>> folder, name = cohort_folder(Path("data/openms"))                      # doctest: +SKIP
    >>> complete, incomplete = cohort_cases(folder, default_contrasts(folder))  # doctest: +SKIP
    >>> held = pick_holdout(complete, None, [], seed=0)                         # doctest: +SKIP
    >>> cohort = Cohort(folder, name, [c for c in complete if c not in held], held, incomplete)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from CollaGANImputeLib.errors import InputError
from CollaGANImputeLib.io import find_case_files

from .cases import list_cases, select_cases
from .prepare import SUMMARY

#: Contrast names looked for in a cohort when --contrasts is not given (BraTS 2023 names), in model order.
KNOWN_CONTRASTS = ("t1n", "t1c", "t2w", "t2f")


@dataclass
class Cohort:
    """The case folders of a cohort, as trained on: ``folder`` holds the ``train`` and ``held`` cases;
    ``incomplete`` maps each case left out to the contrasts it lacks.

    Example:
        >>> Cohort(Path("data/openms/complete"), "openms", ["p07"], ["p19"], {}).held
        ['p19']
    """

    folder: Path
    name: str
    train: List[str]
    held: List[str]
    incomplete: Dict[str, List[str]]


def cohort_folder(folder: Path) -> Tuple[Path, str]:
    """(the folder of case folders to fine-tune on, the cohort's name). ``prepare``'s output (``OUT/cohort.json``
    beside ``OUT/complete/``), given as OUT or as OUT/complete, is read from OUT/complete and named after OUT; any
    other folder is itself.

    Example:
        >>> cohort_folder(Path("data/openms"))   # after prepare SRC data/openms   # doctest: +SKIP
        (PosixPath('data/openms/complete'), 'openms')
    """
    folder = folder.resolve()
    if (folder / SUMMARY).is_file() and (folder / "complete").is_dir():
        return folder / "complete", folder.name
    if folder.name == "complete" and (folder.parent / SUMMARY).is_file():
        return folder, folder.parent.name
    return folder, folder.name


def cohort_cases(folder: Path, contrasts: Sequence[str]) -> Tuple[List[str], Dict[str, List[str]]]:
    """(complete cases, {incomplete case: the contrasts it lacks}) of the case folders in ``folder``.

    Example:
        >>> cohort_cases(Path("data/openms/complete"), ["t1n", "t2w"])   # doctest: +SKIP
        (['OpenMS-patient07'], {'OpenMS-patient19': ['t2w']})
    """
    complete, incomplete = [], {}
    for case in list_cases(folder):
        found = find_case_files(folder / case, contrasts)
        missing = [c for c in contrasts if c not in found]
        if missing:
            incomplete[case] = missing
        else:
            complete.append(case)
    return complete, incomplete


def default_contrasts(folder: Path) -> List[str]:
    """Every contrast of :data:`KNOWN_CONTRASTS` that all case folders have.

    Example:
        >>> default_contrasts(Path("data/openms/complete"))   # doctest: +SKIP
        ['t1n', 't1c', 't2w', 't2f']
    """
    cases = list_cases(folder)
    found = [set(find_case_files(folder / case, KNOWN_CONTRASTS)) for case in cases]
    return [c for c in KNOWN_CONTRASTS if found and all(c in f for f in found)]


def pick_holdout(cases: Sequence[str], n: Optional[int], named: Sequence[str], seed: int) -> List[str]:
    """The held-out cases: those ``named``, else ``n`` picked with ``seed`` (default: a fifth, at least one).

    Example:
        >>> pick_holdout(["a", "b", "c"], None, ["b"], seed=0)
        ['b']
    """
    if named:
        absent = sorted(set(named) - set(cases))
        if absent:
            raise InputError(f"--holdout-cases {','.join(absent)}: not among the complete cases {list(cases)}.")
        held = sorted(named)
    else:
        held = select_cases(list(cases), max(1, round(len(cases) / 5)) if n is None else n, seed)
    if not held or len(held) >= len(cases):
        raise InputError(f"{len(cases)} complete case(s) cannot give {len(held)} held-out case(s) and still leave "
                         "one to train on: hold out fewer (--holdout N), or add complete cases.")
    return held
