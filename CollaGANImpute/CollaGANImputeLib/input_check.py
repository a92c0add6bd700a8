"""Input check: is each input like the data the model was trained on? A warning when not, never a refusal.

A model card may carry the **training data profile** (``card.input_profile``, written at export by
:func:`training_profile`): per contrast, the mean intensity histogram inside the head mask in p99 units and how far
the training scans themselves lie from it; and the range of the head mask's shape (largest axial cross-section,
anterior-posterior and left-right extents). :func:`check_case` compares a prepared case with it. Scans unlike the
training data (skull-stripped when the training data was not, z-scored or offset intensities, constant volumes,
inputs covering part of the head only, a tiny field) give findings, shown by the CLI, the Slicer panel and the
output's provenance: the result is then unreliable.

Example:
    >>> profile = training_profile(training_cases, ["t1n", "t1c", "t2f"], source="52 LGG cases")  # doctest: +SKIP
    >>> check = check_case(model.card, prepared_case, inputs=["t1n", "t2f"])           # doctest: +SKIP
    >>> check.ok, check.findings                                                        # doctest: +SKIP
    (False, ["t2f: intensities inside the head unlike the training scans' (histogram distance 0.71; ...)"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from .geometry import canonical_spacing

if TYPE_CHECKING:  # pragma: no cover - types only

    from .card import ModelCard
    from .case import PreparedCase


PROFILE_VERSION = 1
#: Histogram bins in p99 units (values beyond are counted in the end bins): 0.05 wide from -0.5 to 2.
HISTOGRAM_RANGE = (-0.5, 2.0)
HISTOGRAM_BINS = 50
#: Margins above the training scans' own spread: a limit is the training maximum plus this (histogram
#: distance, fractions) or the training range widened by this factor (head shape).
DISTANCE_MARGIN = 0.05
FRACTION_MARGIN = 0.02
SHAPE_FACTOR = 1.3
#: Fewer training scans than this say nothing about their spread: their histogram-distance and head-shape limits
#: (the training scans' own range) are not judged; the fractions of negative or empty voxels still are.
MIN_PROFILE_CASES = 3
SHAPE_KEYS = {"max_area_cm2": "largest axial head cross-section (cm²)",
              "extent_ap_mm": "head extent front to back (mm)",
              "extent_lr_mm": "head extent left to right (mm)"}


def histogram(values: np.ndarray) -> np.ndarray:
    """Normalized histogram of ``values`` (p99 units) on the profile's bins."""
    low, high = HISTOGRAM_RANGE
    index = np.clip(((values - low) * (HISTOGRAM_BINS / (high - low))).astype(np.int64), 0, HISTOGRAM_BINS - 1)
    counts = np.bincount(index, minlength=HISTOGRAM_BINS).astype(np.float64)
    return counts / max(1.0, counts.sum())


def head_shape(mask: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Shape statistics of a head mask (S, rows, columns) with in-plane ``spacing`` (mm): see :data:`SHAPE_KEYS`."""
    if not mask.any():
        return {key: 0.0 for key in SHAPE_KEYS}
    area = mask.sum(axis=(1, 2)).max() * spacing[0] * spacing[1] / 100.0
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    cols = np.flatnonzero(mask.any(axis=(0, 1)))
    return {"max_area_cm2": float(area), "extent_ap_mm": float((rows[-1] - rows[0] + 1) * spacing[0]),
            "extent_lr_mm": float((cols[-1] - cols[0] + 1) * spacing[1])}


def case_features(arrays: Mapping[str, np.ndarray], mask: np.ndarray, spacing: Sequence[float]) -> dict[str, Any]:
    """What the check compares, for canonical p99 ``arrays`` (contrast → (S, H, W)) and their head ``mask``:
    per contrast the histogram inside the mask, the fraction of the whole volume below 0 and the fraction of the
    head at or below 0; the head's shape."""
    contrasts = {}
    for name, array in arrays.items():
        inside = array[mask]
        contrasts[name] = {"histogram": histogram(inside),
                           "negative": float(np.count_nonzero(array < 0) / max(1, array.size)),
                           "nonpositive_in_head": float(np.count_nonzero(inside <= 0) / max(1, inside.size))}
    return {"contrasts": contrasts, "head": head_shape(mask, spacing)}


def _distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Total variation distance of two normalized histograms: 0 identical, 1 disjoint."""
    return float(0.5 * np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).sum())


def training_profile(cases: Iterable[PreparedCase], contrasts: Sequence[str], source: str = "") -> dict[str, Any]:
    """The training data profile a model card stores (``ModelCard.input_profile``), from prepared training cases
    (:func:`CollaGANImputeLib.prepare_case` on every contrast, as training sees them).

    Limits come from the training scans themselves: the largest histogram distance of a training scan to the
    mean histogram plus :data:`DISTANCE_MARGIN`, the largest fractions plus :data:`FRACTION_MARGIN`, the head-shape
    range widened by :data:`SHAPE_FACTOR`.

    Example:
        >>> cases = [prepare_case(read_case(folder, contrasts)) for folder in training_folders]   # doctest: +SKIP
        >>> card.input_profile = training_profile(cases, contrasts, source="52 LGG training cases")  # doctest: +SKIP
    """
    spacings, features = [], []
    for case in cases:  # one case at a time: a case's arrays are dropped once measured
        spacings.append(canonical_spacing(case.reference))
        features.append(case_features(case.arrays, case.mask, spacings[-1]))
    if not features:
        raise ValueError("training_profile needs at least one prepared case.")
    profile: dict[str, Any] = {"version": PROFILE_VERSION, "source": source, "cases": len(features),
                               "pixel_spacing": [round(float(v), 4) for v in np.median(np.array(spacings), axis=0)],
                               "histogram_range": list(HISTOGRAM_RANGE), "histogram_bins": HISTOGRAM_BINS,
                               "contrasts": {}, "head": {}}
    for name in contrasts:
        per_case = [f["contrasts"][name] for f in features if name in f["contrasts"]]
        if not per_case:
            continue
        mean = np.mean([c["histogram"] for c in per_case], axis=0)
        distances = [_distance(c["histogram"], mean) for c in per_case]
        profile["contrasts"][name] = {
            "histogram": [round(float(v), 6) for v in mean],
            "distance_max": round(max(distances), 4), "distance_limit": round(max(distances) + DISTANCE_MARGIN, 4),
            "negative_limit": round(max(c["negative"] for c in per_case) + FRACTION_MARGIN, 4),
            "nonpositive_in_head_limit": round(max(c["nonpositive_in_head"] for c in per_case) + FRACTION_MARGIN, 4),
        }
    for key in SHAPE_KEYS:
        values = [f["head"][key] for f in features]
        profile["head"][key] = {"min": round(min(values), 2), "max": round(max(values), 2),
                                "limits": [round(min(values) / SHAPE_FACTOR, 2), round(max(values) * SHAPE_FACTOR, 2)]}
    return profile


@dataclass
class InputCheck:
    """The result of :func:`check_case`: ``checked`` is False when the card carries no profile; ``findings``
    lists what is unlike the training data (empty: nothing found); ``values`` has the measured statistics."""

    checked: bool
    findings: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def ok(self) -> bool:
        """True when checked and nothing unlike the training data was found."""
        return self.checked and not self.findings

    @property
    def status(self) -> str:
        """``passed``, ``warning`` or ``not checked`` (for provenance)."""
        return "not checked" if not self.checked else ("passed" if self.ok else "warning")

    def message(self, model_name: str = "the model") -> str:
        """One warning for the user (empty when there is nothing to say)."""
        if not self.findings:
            return ""
        data = f" ({self.source})" if self.source else ""
        return (f"The inputs are unlike the data {model_name} was trained on{data}: " + "; ".join(self.findings)
                + ". The synthetic image is unreliable: check it against acquired images before any use, or use a "
                  "model trained on data like these.")

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "findings": list(self.findings), "values": self.values,
                "profile_source": self.source}


def check_case(card: ModelCard, case: PreparedCase, inputs: Optional[Sequence[str]] = None) -> InputCheck:
    """Compare the ``inputs`` of a prepared case (default: all its arrays) with the card's training profile."""
    profile = card.input_profile or {}
    if profile.get("version") != PROFILE_VERSION or not profile.get("contrasts"):
        return InputCheck(checked=False)
    names = [n for n in (inputs or list(case.arrays)) if n in case.arrays]
    features = case_features({n: case.arrays[n] for n in names}, case.mask, canonical_spacing(case.reference))
    check = InputCheck(checked=True, source=str(profile.get("source", "")))
    spread_known = profile.get("cases", MIN_PROFILE_CASES) >= MIN_PROFILE_CASES
    for name in names:
        reference = profile["contrasts"].get(name)
        if reference is None:
            continue
        measured = features["contrasts"][name]
        distance = _distance(measured["histogram"], reference["histogram"])
        check.values[name] = {"histogram_distance": round(distance, 4), "negative": round(measured["negative"], 4),
                              "nonpositive_in_head": round(measured["nonpositive_in_head"], 4)}
        if measured["negative"] > reference["negative_limit"]:
            check.findings.append(
                f"{name} has negative intensities in {100 * measured['negative']:.0f} % of the volume (training "
                f"scans: at most {100 * max(0.0, reference['negative_limit'] - FRACTION_MARGIN):.0f} %): it looks "
                "standardized (z-scored) or offset, not a raw magnitude image")
        if measured["nonpositive_in_head"] > reference["nonpositive_in_head_limit"]:
            check.findings.append(
                f"{name} is 0 or below in {100 * measured['nonpositive_in_head']:.0f} % of the head (training scans: "
                f"at most {100 * max(0.0, reference['nonpositive_in_head_limit'] - FRACTION_MARGIN):.0f} %): it "
                "covers only part of the head (field of view, registration) or was masked")
        if spread_known and distance > reference["distance_limit"]:
            check.findings.append(
                f"{name}'s intensities inside the head differ from the training scans' (histogram distance "
                f"{distance:.2f}; training scans up to {reference['distance_max']:.2f}): another kind of "
                "acquisition or preprocessing (e.g. skull-stripped, not windowed, constant)")
    head = profile.get("head", {}) if spread_known else {}
    check.values["head"] = {k: round(v, 2) for k, v in features["head"].items()}
    small, large = [], []
    for key, label in SHAPE_KEYS.items():
        if key not in head:
            continue
        value, (low, high) = features["head"][key], head[key]["limits"]
        if not (low <= value <= high):
            (small if value < low else large).append(
                f"{label} {value:.0f}, training {head[key]['min']:.0f}-{head[key]['max']:.0f}")
    if small:
        check.findings.append(f"the head mask is smaller than the training heads' ({'; '.join(small)}): "
                              "skull-stripped, cropped to the brain, or a child's head or a small field of view?")
    if large:
        check.findings.append(f"the head mask is larger than the training heads' ({'; '.join(large)}): "
                              "more than the head (neck, shoulders, a phantom) or a wrong pixel spacing?")
    return check
