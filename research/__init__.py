"""Studies behind the figures and numbers of docs/RESULTS.md: the uncertainty maps' validation, the bound on the
contrast identity of a regression, and what the choices the protocol leaves open move. Not part of the installed
product; run them from the repository root:

    python -m research.validate_uncertainty --lgg DATA/lgg --openms DATA/openms --out runs/uncertainty
    python -m research.identity_counterfactual --data DATA/lgg > runs/cf.txt

Data folders are given on the command line or by $COLLAGAN_LGG_DIR / $COLLAGAN_OPENMS_DIR; models and splits
default to the repository's own.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from CollaGANImputeLib.card import LoadedModel

REPO = Path(__file__).resolve().parents[1]
LGG_ENV = "COLLAGAN_LGG_DIR"
OPENMS_ENV = "COLLAGAN_OPENMS_DIR"
#: The split whose validation patients the studies score (the one training uses).
DEFAULT_SPLIT = REPO / "training" / "splits" / "lgg_split.json"


def lgg_folder(given: Optional[str], flag: str = "--data") -> Path:
    """The folder of complete LGG cases: ``given`` or $COLLAGAN_LGG_DIR (that folder, or the one holding
    ``complete/``); exits saying what to pass when there is none.

    Example:
        >>> lgg_folder("/data/lgg")   # doctest: +SKIP
        PosixPath('/data/lgg/complete')
    """
    root = given or os.environ.get(LGG_ENV, "")
    if not root:
        raise SystemExit(f"Give {flag} PATH (the folder of complete LGG cases, or the one holding complete/), "
                         f"or set ${LGG_ENV}.")
    for folder in (Path(root) / "complete", Path(root)):
        if folder.is_dir():
            return folder
    raise SystemExit(f"{flag} {root} is not a folder: give the folder of complete LGG cases.")


def add_study_arguments(parser: argparse.ArgumentParser, subset_help: str = "the split's patients to score") -> None:
    """The arguments every per-patient study takes: model, data, split and its subset, target, limit, threads."""
    parser.add_argument("--model", help="model .pt file (default: the bundled default model)")
    parser.add_argument("--data", help=f"LGG case folders (default: ${LGG_ENV})")
    parser.add_argument("--split", default=str(DEFAULT_SPLIT))
    parser.add_argument("--target", default="t2f")
    parser.add_argument("--subset", choices=("val", "train"), default="val", help=subset_help)
    parser.add_argument("--limit", type=int, default=0, help="score only the first N patients of the subset")
    parser.add_argument("--threads", type=int, default=1)


@dataclass
class Study:
    """What :func:`add_study_arguments` names: the model, the case folders to score, the target and its inputs."""

    model: LoadedModel
    folders: list[Path]
    target: str
    inputs: list[str]


def study(args: argparse.Namespace) -> Study:
    """The :class:`Study` of parsed :func:`add_study_arguments` (torch gets ``--threads``)."""
    import torch
    from CollaGANImputeLib.contract import load_model
    from CollaGANImputeLib.resources import default_bundled_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model) if args.model else default_bundled_model().load()
    data = lgg_folder(args.data)
    cases = json.loads(Path(args.split).read_text())[args.subset][: args.limit or None]
    return Study(model, [data / case for case in cases], args.target,
                 [c for c in model.card.contrasts if c != args.target])
