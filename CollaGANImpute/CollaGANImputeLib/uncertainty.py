"""A per-voxel uncertainty map for an imputed volume: how much the model's own predictions of it disagree.

CollaGAN imputes a target from any non-empty subset of the available inputs (missing slots are zeros), and a
left-right mirrored head is as valid an input as the head itself. Each such *member* (an input subset, or the
mirrored inputs) is another prediction of the same target by the same model. The map is the **mean absolute
deviation of the members from the delivered prediction** (the one from all inputs), averaged in-plane over about
a pixel, in p99 units of the target: 0.2 means the predictions differ from the delivered one by 0.2 of the
target's 99th percentile there. It needs no retraining and works with any model that keeps the contract
(:mod:`.contract`). Default members (chosen by measurement, docs/RESULTS.md "Uncertainty maps"): every smaller
input subset and the mirrored full input set, 3 more passes of the model for two inputs.

What it measures is disagreement, not error: where every member is wrong in the same way (a lesion feature no
input shows) it stays low. With the bundled model it tracks the real error only weakly, below the bar for a
confidence map; docs/RESULTS.md gives the figures. Show it as what it is: where the predictions disagree.

Example:
    >>> u = estimate_uncertainty(model, {"t1n": t1n, "t2f": t2f}, "t1c", prediction, mask)  # doctest: +SKIP
    >>> result = impute({"t1n": t1n_image, "t2f": t2f_image}, model, uncertainty=True)       # doctest: +SKIP
    >>> result.uncertainty["t1c"]      # SimpleITK image, geometry of the synthetic one       # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .card import LoadedModel
from .inference import ProgressCallback, impute_slices

#: Default members besides the delivered prediction: every smaller input subset, and the mirrored full input set.
DEFAULT_SUBSETS = True
DEFAULT_FLIP = True
#: In-plane Gaussian averaging of the deviations (pixels): the error is not predictable voxel by voxel, and a
#: local mean of the disagreement tracks it a little better (docs/RESULTS.md, "Uncertainty maps").
SMOOTH_PIXELS = 1.0
#: The level the Slicer legend and the docs speak of (p99 units of the target).
DISAGREEMENT_LEVEL = 0.2
UNITS = "p99 units of the target: mean |member prediction - delivered prediction|, 1-pixel Gaussian in-plane"


@dataclass(frozen=True)
class Member:
    """One extra prediction of the target: from ``inputs`` (a subset of the available ones), mirrored or not."""

    inputs: tuple[str, ...]
    flip: bool = False

    def describe(self) -> str:
        return "+".join(self.inputs) + (" mirrored" if self.flip else "")


def ensemble_members(inputs: Sequence[str], subsets: bool = DEFAULT_SUBSETS, flip: bool = DEFAULT_FLIP,
                     flip_subsets: bool = False) -> list[Member]:
    """The members for an imputation from ``inputs`` (model order), the delivered prediction itself excluded:
    every non-empty proper subset (``subsets``), the mirrored full set (``flip``) and mirrored subsets
    (``flip_subsets``). With a single input and ``flip=False`` there is none (the map cannot be made).

    Example:
        >>> [m.describe() for m in ensemble_members(["t1n", "t2f"])]
        ['t1n', 't2f', 't1n+t2f mirrored']
    """
    full = tuple(inputs)
    smaller = [combo for size in range(len(full) - 1, 0, -1) for combo in itertools.combinations(full, size)]
    members = [Member(combo) for combo in smaller] if subsets else []
    if flip:
        members.append(Member(full, flip=True))
    if flip_subsets:
        members += [Member(combo, flip=True) for combo in smaller]
    return members


def member_prediction(model: LoadedModel, arrays: Mapping[str, np.ndarray], target: str, member: Member,
                      **options: Any) -> np.ndarray:
    """The target predicted from ``member`` (canonical (S, P, L) arrays; mirrored left-right along the last axis
    and back). ``options`` go to :func:`.inference.impute_slices` (device, precision, batch size, spacing...)."""
    if member.flip:
        mirrored = {c: np.ascontiguousarray(arrays[c][:, :, ::-1]) for c in member.inputs}
        return np.ascontiguousarray(impute_slices(model, mirrored, target, **options)[:, :, ::-1])
    return impute_slices(model, {c: arrays[c] for c in member.inputs}, target, **options)


def disagreement(prediction: np.ndarray, members: Sequence[np.ndarray], mask: Optional[np.ndarray] = None,
                 smooth: float = SMOOTH_PIXELS) -> np.ndarray:
    """Mean absolute deviation of the ``members`` from the delivered ``prediction``, float32, 0 outside ``mask``,
    then averaged in-plane with a Gaussian of ``smooth`` pixels (0: none; the deviations outside ``mask`` count
    as 0, so the untrained background of a head-only model does not bleed in).

    Example:
        >>> disagreement(np.zeros((1, 2, 2)), [np.full((1, 2, 2), 0.5), np.zeros((1, 2, 2))], smooth=0)[0, 0, 0]
        0.25
    """
    total = np.zeros(prediction.shape, dtype=np.float32)
    for member in members:
        total += np.abs(member.astype(np.float32) - prediction.astype(np.float32))
    total /= max(1, len(members))
    inside = np.ones(prediction.shape, dtype=bool) if mask is None else mask.astype(bool)
    total[~inside] = 0
    if smooth > 0:
        from scipy import ndimage  # here, not at the top: imputing without uncertainty never loads scipy

        total = ndimage.gaussian_filter(total, sigma=(0, smooth, smooth), mode="constant").astype(np.float32)
        total[~inside] = 0
    return total


def estimate_uncertainty(
    model: LoadedModel,
    arrays: Mapping[str, np.ndarray],
    target: str,
    prediction: np.ndarray,
    mask: Optional[np.ndarray] = None,
    members: Optional[Sequence[Member]] = None,
    progress: Optional[ProgressCallback] = None,
    progress_offset: int = 0,
    progress_total: Optional[int] = None,
    smooth: float = SMOOTH_PIXELS,
    **options: Any,
) -> np.ndarray:
    """The uncertainty map of ``prediction`` (the target imputed from all of ``arrays``), p99 units, 0 outside
    ``mask``. ``members`` default to :func:`ensemble_members` of the inputs; ``options`` go to
    :func:`.inference.impute_slices` (device, precision, batch_size, cancel, spacing); ``progress`` counts the
    members' slices after ``progress_offset`` (of ``progress_total``); ``smooth``: see :func:`disagreement`.

    Raises ValueError when there is no member (one input and no mirroring).
    """
    inputs = [c for c in arrays if c != target]
    members = list(ensemble_members(inputs) if members is None else members)
    if not members:
        raise ValueError(f"No second prediction of '{target}' from {inputs}: an uncertainty map needs at least "
                         "two inputs or mirroring.")
    n_slices = prediction.shape[0]
    total = progress_total if progress_total is not None else n_slices * len(members)
    predictions = []
    for index, member in enumerate(members):
        predictions.append(member_prediction(model, arrays, target, member, progress=progress,
                                             progress_offset=progress_offset + index * n_slices,
                                             progress_total=total, **options))
    return disagreement(prediction, predictions, mask, smooth=smooth)


#: How viewers show the map: colour window (p99 units) and the level below which it is left uncoloured.
DISPLAY_RANGE = (0.0, 2 * DISAGREEMENT_LEVEL)
DISPLAY_THRESHOLD = 0.05
LEGEND_TITLE = "Model disagreement (p99 units)"


def legend_text(target: str, level: float = DISAGREEMENT_LEVEL) -> str:
    """What the colours of the uncertainty overlay mean, in words (the Slicer panel and any other viewer).

    Example:
        >>> "disagree by more than 0.2 of the 99th percentile here" in legend_text("t1c")
        True
    """
    low, high = DISPLAY_THRESHOLD, DISPLAY_RANGE[1]
    return (f"Uncertainty overlay on the synthetic {target}: bright (orange to yellow) = the model's predictions "
            f"disagree by more than {level:g} of the 99th percentile here; purple to red = by {low:g} to "
            f"{level:g}; no colour = below {low:g} (colour range 0 to {high:g}). The predictions come from fewer "
            "inputs and mirrored inputs. This is not a confidence map: it misses errors that all predictions "
            "share (for example a lesion no input shows), and it tracks the real error only weakly.")


def uncertainty_description(target: str, inputs: Sequence[str]) -> str:
    """The header description of an uncertainty map: what it is, and that it is not an image of the head."""
    return f"UNCERTAINTY of synthetic {target} from {'+'.join(inputs)} (CollaGAN); p99 units, not an image"


def uncertainty_filename(case: str, target: str, extension: str = ".nii.gz") -> str:
    """``<case>-<target>-uncertainty-collagan.nii.gz``: beside the synthetic volume, never read as an input (its
    name does not end in a contrast)."""
    return f"{case}-{target}-uncertainty-collagan{extension}"


def uncertainty_path(synthetic: Union[str, os.PathLike]) -> Path:
    """The uncertainty map's file beside a synthetic volume ``<case>-<target>-synthetic-collagan.<ext>``.

    Example:
        >>> uncertainty_path("out/case-t1c-synthetic-collagan.nii.gz").name
        'case-t1c-uncertainty-collagan.nii.gz'
    """
    synthetic = Path(synthetic)
    return synthetic.with_name(synthetic.name.replace("-synthetic-collagan", "-uncertainty-collagan", 1))


def label_uncertainty(image: sitk.Image, synthetic: sitk.Image, members: Sequence[Member]) -> sitk.Image:
    """Attach :func:`uncertainty_metadata` (from the ``synthetic`` volume's labels) to ``image``, in place."""
    labels = {key: synthetic.GetMetaData(key) for key in synthetic.GetMetaDataKeys()}
    for key, value in uncertainty_metadata(labels, members).items():
        image.SetMetaData(key, value)
    return image


def uncertainty_metadata(synthetic: Mapping[str, str], members: Sequence[Member]) -> dict[str, str]:
    """The ``collagan_*`` labels of an uncertainty map, from its synthetic volume's labels: the same model,
    inputs and target, marked as an uncertainty map (not synthetic, not an image), with its members and units."""
    labels = {key: value for key, value in synthetic.items() if key.startswith("collagan_")}
    labels.update({
        "collagan_synthetic": "false",
        "collagan_uncertainty": "true",
        "collagan_kind": "uncertainty map, not an image",
        "collagan_note": "model disagreement, not a confidence map: it misses errors all predictions share",
        "collagan_units": UNITS,
        "collagan_uncertainty_members": ",".join(m.describe() for m in members),
    })
    return labels
