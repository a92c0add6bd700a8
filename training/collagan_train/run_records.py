"""What a training run's folder records, and what ``export``, ``select``, ``average`` and ``blend`` read from it:
the run a checkpoint belongs to, its split (with the set-aside patients), the commands that made it, its best
validation row, the runs it was warm-started from and the generators a weight mean was made of.

Example:
    >>> from pathlib import Path
    >>> run_folder(Path("runs/lgg/d/snapshots/step_4000.pt"))
    PosixPath('runs/lgg/d')
"""

from __future__ import annotations

import csv
import json
import shlex
import shutil
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from .config import TrainConfig


def run_folder(checkpoint: Path) -> Path:
    """The training run a checkpoint belongs to, where its records are (``commands.txt``, ``split_used.json``):
    the checkpoint's folder, or the one above for a run's ``snapshots/``."""
    folder = checkpoint.parent
    return folder.parent if folder.name == "snapshots" else folder


def split_used(run_dir: Path) -> dict:
    """The split a training run used (with its set-aside ``select`` patients), {} for older runs."""
    path = run_dir / "split_used.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def record_run(out: Path, source: Path, command: Sequence[str] = ()) -> None:
    """The run records that ``select`` and ``export`` read, for a snapshot ``out`` made from ``source`` (a weight mean,
    a blend): the source run's ``split_used.json`` beside it, and ``command`` appended to its ``commands.txt``."""
    run_dir, split = run_folder(out), run_folder(source) / "split_used.json"
    if split.is_file() and split.resolve() != (run_dir / "split_used.json").resolve():
        shutil.copyfile(split, run_dir / "split_used.json")
    if command:
        with open(run_dir / "commands.txt", "a") as handle:
            handle.write(f"python -m training.collagan_train.main {shlex.join(command)}\n")


def training_state(path: Path) -> Optional[dict]:
    """The pickled training state in ``path``, or None when it holds something else (e.g. a TorchScript model)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.load names a TorchScript archive before loading it as one
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:
            return None
    return state if isinstance(state, dict) else None


def snapshot_contrasts(checkpoint: Path) -> List[str]:
    """The contrasts a checkpoint's generator was trained on (its config), in model order."""
    return list(torch.load(checkpoint, map_location="cpu", weights_only=False)["config"]["contrasts"])


def last_validation(run_dir: Path) -> dict:
    path = run_dir / "val.csv"
    if not path.is_file():
        return {}
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    best = min(rows, key=lambda r: float(r["mean_nmse"]))
    return {"protocol": "training validation: fixed validation slices, full 256x256, all other inputs, "
                        "CollaGANImputeLib.metrics (not the full-volume evaluation of evaluate.py)",
            **{k: float(v) for k, v in best.items()}}


def warm_start_lineage(cfg: TrainConfig, max_depth: int = 5) -> list:
    """The runs this one was warm-started from (``init_g``, followed back): method, steps, cost, commands.

    Why: a staged recipe's card must name every stage, not only the last one's command and cost.
    """
    from .cases import repo_path

    stages, init = [], cfg.init_g
    while init and len(stages) < max_depth:
        path = repo_path(init)
        stage = {"checkpoint": init}
        state = training_state(path) if path.is_file() else None
        if path.is_file() and state is None:  # a model file (finetune --from model.pt): its card has the rest
            stage["model_file"] = True
            init = ""
        elif state is not None:
            theirs = state.get("config", {})
            commands = path.parent / "commands.txt"
            stage.update(method=theirs.get("method"), steps=state.get("step"),
                         hours=round(state.get("train_seconds", 0.0) / 3600, 2),
                         command=commands.read_text().splitlines() if commands.is_file() else [])
            init = theirs.get("init_g", "")
        else:
            init = ""
        stages.append(stage)
    return stages


def weight_mean_of(averaged_from: list) -> List[dict]:
    """The card's list of the generators a weight mean was made of (``average``; older means recorded
    (checkpoint, weight) pairs only)."""
    return [dict(m) if isinstance(m, dict) else {"checkpoint": m[0], "weight": m[1]} for m in averaged_from]

