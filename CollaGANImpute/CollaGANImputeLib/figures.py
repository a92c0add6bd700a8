"""Pictures people would rather look at than read: montages of inputs / imputed / real / error map.

Example:
    >>> montage_png("montage.png", {"t1n": t1n, "t2f": t2f}, imputed, "t1c", real=t1c, mask=mask)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: works on headless clusters and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .atomic import atomic_path  # noqa: E402


def representative_slices(mask: np.ndarray, lesion: Optional[np.ndarray] = None, count: int = 1) -> list[int]:
    """Slices worth showing: those with the most lesion voxels if a lesion mask exists, else most head."""
    weight = (lesion > 0).sum(axis=(1, 2)) if lesion is not None and np.any(lesion) else mask.sum(axis=(1, 2))
    order = np.argsort(-weight, kind="stable")
    chosen = sorted(int(i) for i in order[:count])
    return chosen


def save_figure_atomic(figure: plt.Figure, path: os.PathLike | str, dpi: int = 110) -> Path:
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            figure.savefig(tmp, dpi=dpi, bbox_inches="tight", facecolor="white")
    finally:
        plt.close(figure)
    return path


def montage_png(
    path: os.PathLike | str,
    inputs: Mapping[str, np.ndarray],
    imputed: np.ndarray,
    target: str,
    real: Optional[np.ndarray] = None,
    mask: Optional[np.ndarray] = None,
    lesion: Optional[np.ndarray] = None,
    slices: Optional[Sequence[int]] = None,
    title: str = "",
    rows: int = 1,
    method: str = "CollaGAN",
    uncertainty: Optional[np.ndarray] = None,
) -> Path:
    """One row per shown slice: each input, the imputed target (marked SYNTHETIC), the real one, |error|, and
    the ``uncertainty`` map if given (:mod:`.uncertainty`).

    Arrays are canonical (S, H, W) in p99 units; images are shown on [0, 1.2] p99 units, |error| on [0, 0.5],
    uncertainty on [0, 0.4]. ``method`` names what made the synthetic image (a model name), shown in its column title.
    """
    if mask is None:
        mask = np.ones(imputed.shape, dtype=bool)
    if slices is None:
        slices = representative_slices(mask, lesion, rows)
    columns: list[tuple[str, np.ndarray, str]] = [(f"{name} (input)", array, "gray") for name, array in inputs.items()]
    columns.append((f"{target} SYNTHETIC ({method})", imputed, "gray"))
    if real is not None:
        columns.append((f"{target} real", real, "gray"))
        columns.append(("|error| in mask", np.abs(imputed - real) * mask, "magma"))
    if uncertainty is not None:
        columns.append(("uncertainty: model disagreement\n(not a confidence map)", uncertainty, "viridis"))
    figure, axes = plt.subplots(len(slices), len(columns), figsize=(2.6 * len(columns), 2.8 * len(slices)),
                                squeeze=False)
    for row, index in enumerate(slices):
        for col, (label, volume, cmap) in enumerate(columns):
            axis = axes[row][col]
            vmax = {"magma": 0.5, "viridis": 0.4}.get(cmap, 1.2)
            shown = axis.imshow(volume[index], cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
            if lesion is not None and np.any(lesion[index]) and cmap == "gray":
                axis.contour(lesion[index] > 0, levels=[0.5], colors="tab:red", linewidths=0.6)
            axis.set_axis_off()
            if row == 0:
                axis.set_title(label, fontsize=8, color="darkred" if "SYNTHETIC" in label else "black")
            if cmap != "gray" and row == len(slices) - 1:
                figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.02)
        axes[row][0].text(-0.05, 0.5, f"slice {index}", transform=axes[row][0].transAxes, rotation=90,
                          va="center", ha="right", fontsize=7)
    figure.suptitle(title or f"{target}: imputed (synthetic) vs real" if real is not None else title, fontsize=9)
    return save_figure_atomic(figure, path)
