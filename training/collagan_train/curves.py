"""Training-curve PNG from a run folder's log.csv and val.csv.

Example:
    >>> plot_curves("runs/collagan")      # writes runs/collagan/curves.png   # doctest: +SKIP
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from CollaGANImputeLib.atomic import atomic_path  # noqa: E402


def _read(path: Path) -> Dict[str, List[float]]:
    if not path.is_file():
        return {}
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    columns: Dict[str, List[float]] = {}
    for key in rows[0] if rows else []:
        try:
            columns[key] = [float(r[key]) if r[key] not in ("", None) else float("nan") for r in rows]
        except ValueError:
            continue
    return columns


def plot_curves(run_dir) -> Path:
    run = Path(run_dir)
    log, val = _read(run / "log.csv"), _read(run / "val.csv")
    fig, axes = plt.subplots(2, 3, figsize=(16, 8))
    axes = axes.ravel()
    for key in ("loss_g", "cyc_l1", "cyc_ssim", "direct_l1", "direct_l2", "direct_ssim", "lesion_contrast", "g_gan",
                "g_clsf"):
        if key in log and any(v == v for v in log[key]):
            axes[0].plot(log["step"], log[key], label=key, lw=0.8)
    for key in ("loss_d", "d_gan", "d_clsf"):
        if key in log and any(v == v for v in log[key]):
            axes[1].plot(log["step"], log[key], label=key, lw=0.8)
    panels = ((axes[2], "_nmse"), (axes[3], "_ssim"), (axes[4], "_identity"), (axes[5], "_lesion_kept"))
    for key in sorted(val):
        for ax, suffix in panels:
            if key.endswith(suffix) and not key.endswith("lesion" + suffix):
                ax.plot(val["step"], val[key], marker="o", ms=3, label=key)
    for ax, level in ((axes[4], 0.0), (axes[5], 0.5)):  # the bars: I > 0, K >= 0.5
        ax.axhline(level, color="k", lw=0.6, ls="--")
    titles = ("generator losses", "discriminator losses", "validation NMSE (lower better)",
              "validation SSIM (higher better)", "contrast identity I (> 0: the target contrast)",
              "lesion kept share K (1: as real, 0: vanished)")
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out = run / "curves.png"
    try:
        with atomic_path(out, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=90)
    finally:
        plt.close(fig)
    return out
