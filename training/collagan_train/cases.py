"""The training cases: where the repository and the LGG data are, a cohort's case folders, and the patient-level
splits (validation patients, and training patients set aside to choose checkpoints on).

Config paths are relative to the repository root (:func:`repo_path`); the split file is written once and reused
by every run, so every run trains and validates on the same patients.

Example:
    >>> split = make_split([f"case{i}" for i in range(10)], n_val=3, seed=0, required_val=["case5"])
    >>> len(split["train"]), len(split["val"]), "case5" in split["val"]
    (7, 3, True)
    >>> select_cases(split["train"], 2, seed=0) == select_cases(split["train"], 2, seed=0)
    True
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import List, Optional, Sequence

from CollaGANImputeLib.atomic import write_text_atomic
from CollaGANImputeLib.errors import InputError

from .config import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_ENV = "COLLAGAN_LGG_DIR"


def repo_path(path: str) -> Path:
    """Config paths are relative to the repository root, whatever the working directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def locate_lgg(data_dir: str = "") -> Optional[Path]:
    """The folder of complete LGG cases: ``data_dir``, $COLLAGAN_LGG_DIR or <repo>/../shared/data/lgg; None if
    absent (tests skip)."""
    candidates = [data_dir] if data_dir else [os.environ.get(DATA_ENV, ""), str(REPO_ROOT.parent / "shared/data/lgg")]
    for candidate in filter(None, candidates):
        root = repo_path(candidate)
        for folder in (root / "complete", root):
            if folder.is_dir() and any(p.is_dir() for p in folder.iterdir()):
                return folder
    return None


def lgg_folder_or_exit(data: Optional[str], flag: str = "--data PATH") -> Path:
    """The folder of complete LGG cases a command was given with ``flag`` (the folder or the one holding
    ``complete/``), or found as :func:`locate_lgg` does; exits with what to pass when there is none."""
    folder = locate_lgg(data or "")
    if folder is None:
        default = REPO_ROOT.parent / "shared/data/lgg"
        given = f"{data} holds no case folders" if data else f"LGG data not found (looked in {DATA_ENV} and {default})"
        raise SystemExit(f"{given}: pass {flag} (the folder of complete cases), or set {DATA_ENV}.")
    return folder


def list_cases(folder: Path) -> List[str]:
    """The case folders in ``folder``, sorted (hidden folders left out)."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def make_split(cases: Sequence[str], n_val: int, seed: int, required_val: Sequence[str] = ()) -> dict:
    """Patient-level split: ``required_val`` (the bundled demo case) plus a seeded random pick in validation."""
    missing = [c for c in required_val if c not in cases]
    if missing:
        raise InputError(f"Cases {missing} must be in validation (val_cases_required) but are not in the data "
                         "folder; for another cohort pass --set 'val_cases_required=[]' (or name its own cases).")
    rest = sorted(c for c in cases if c not in required_val)
    random.Random(seed).shuffle(rest)
    n_pick = max(0, n_val - len(required_val))
    val = sorted(list(required_val) + rest[:n_pick])
    return {"seed": seed, "n_cases": len(cases), "required_val": list(required_val),
            "train": sorted(rest[n_pick:]), "val": val}


def load_or_make_split(cfg: TrainConfig, folder: Path) -> dict:
    """Read the split file (reused by every run), or write it once from the cases in ``folder``."""
    path = repo_path(cfg.split_file)
    cases = list_cases(folder)
    if path.is_file():
        split = json.loads(path.read_text())
        absent = sorted(set(split["train"] + split["val"]) - set(cases))
        if absent:
            raise InputError(f"Split {path} names cases absent from {folder}: {absent[:5]}. Point data_dir at "
                             "the cohort the split was made for, or give another cohort its own split file "
                             "(--set split_file=runs/<cohort>_split.json, made on first use).")
        return split
    split = make_split(cases, cfg.n_val, cfg.split_seed, cfg.val_cases_required)
    write_text_atomic(path, json.dumps(split, indent=2) + "\n")
    return split


def select_cases(train_cases: List[str], n: int, seed: int) -> List[str]:
    """The ``n`` training patients set aside to choose checkpoints on (seeded, reproducible)."""
    rest = sorted(train_cases)
    random.Random(seed + 1).shuffle(rest)
    return sorted(rest[:n])
