"""Studies behind the figures and numbers of docs/RESULTS.md: the uncertainty maps' validation and the bound on the
contrast identity of a regression. Not part of the installed product; run them from the repository root:

    python -m research.validate_uncertainty --lgg DATA/lgg --openms DATA/openms --out runs/uncertainty
    python -m research.identity_counterfactual --data DATA/lgg > runs/cf.txt

Data folders are given on the command line or by $COLLAGAN_LGG_DIR / $COLLAGAN_OPENMS_DIR; models and splits
default to the repository's own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

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
