"""What a run reports: its folder's CSV logs, ``log.csv`` (the loss terms of the logged steps, :data:`LOG_FIELDS`)
and ``val.csv`` (the scores of each validation), one row per step, the step first; and the progress bar's losses.

A resumed run first drops the rows written after its checkpoint (:func:`truncate_logs`: they are produced again),
then appends under the file's own header, extended by the columns newer code logs (:func:`log_header`).

Example:
    >>> append_row(Path("runs/x/val.csv"), ["step", "mean_nmse"], {"step": 200, "mean_nmse": 0.21})  # doctest: +SKIP
    >>> truncate_logs(Path("runs/x"), step=100)   # on resume from step 100: the row of step 200 goes  # doctest: +SKIP
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List

from CollaGANImputeLib.atomic import atomic_path

LOG_FIELDS = ["step", "epoch", "phase", "lr_g", "sec_per_step", "loss_d", "d_gan", "d_clsf", "loss_g", "g_gan",
              "g_clsf", "direct_l1", "direct_ssim", "cyc_l1", "cyc_ssim", "n_cycle", "direct_l2", "lesion_contrast",
              "identity", "identity_pooled"]
#: The logs of a run folder, their first column the step.
LOG_FILES = ("log.csv", "val.csv")


def log_header(path: Path, fields: List[str]) -> List[str]:
    """The header of the existing log ``path``, first extended by the ``fields`` it lacks (a log written by
    older code, resumed by newer code): old rows keep their values under their own column names and leave the
    new columns empty. One line is read when nothing is missing (the usual case)."""
    with open(path, newline="") as handle:
        header = next(csv.reader(handle), [])
    missing = [f for f in fields if f not in header]
    if not missing:
        return header
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header + missing, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return header + missing


def append_row(path: Path, fields: List[str], row: dict) -> None:
    """Append ``row`` to the log ``path`` (written with the header ``fields`` when new); keys outside the
    file's header are left out, its columns the row lacks left empty."""
    new = not path.is_file()
    columns = fields if new else log_header(path, fields)  # rows always under the file's own header
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore", restval="")
        if new:
            writer.writeheader()
        writer.writerow(row)


def truncate_logs(run_dir: Path, step: int) -> None:
    """On resume, drop log rows written after ``step``, the checkpoint's (they will be produced again)."""
    for name in LOG_FILES:
        path = run_dir / name
        if path.is_file():
            with open(path) as handle:
                rows = list(csv.reader(handle))
            keep = rows[:1] + [r for r in rows[1:] if r and int(float(r[0])) <= step]
            with open(path, "w", newline="") as handle:
                csv.writer(handle).writerows(keep)


def progress_postfix(out: Dict[str, float], warmup: int) -> Dict[str, str]:
    """The progress bar's losses of a step's ``out``: only what the run trains (no discriminator loss, nor the
    phase, when no discriminator is trained; the phase only with a classifier warm-up)."""
    postfix = {"phase": out["phase"]} if warmup else {}
    postfix["g"] = f"{out.get('loss_g', float('nan')):.3f}"
    if "loss_d" in out:
        postfix["d"] = f"{out['loss_d']:.3f}"
    return postfix
