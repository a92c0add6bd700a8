"""Input guessing and synthetic labels of the Slicer module: which scene volume is which contrast, what the
result node is called, and the banner that says it is synthetic. Pure Python, no Slicer needed.

Example:
    >>> match_volumes(["MRHead", "T1 post Gd", "T2-FLAIR", "T1w MPRAGE"], ["t1n", "t1c", "t2f"])
    {'t1n': 'T1w MPRAGE', 't1c': 'T1 post Gd', 't2f': 'T2-FLAIR'}
    >>> default_target(["t1n", "t1c", "t2f"], {"t1n": "a", "t1c": None, "t2f": "b"})
    't1c'
    >>> synthetic_node_name("t1c")
    't1c (synthetic, CollaGAN)'
"""

from __future__ import annotations

from typing import Collection, Mapping, Optional, Sequence

import SimpleITK as sitk

from ..contrast_names import CANONICAL_CONTRASTS, classify_contrast, name_words  # noqa: F401  (re-exported)

#: Node-name suffix of every imputed volume, so that it is never taken as an acquired input.
SYNTHETIC_SUFFIX = "(synthetic, CollaGAN)"
SYNTHETIC_ATTRIBUTE = "collagan_synthetic"


def is_synthetic_name(name: str) -> bool:
    """Volumes this module (or the CLI) produced carry 'synthetic' in their name."""
    return "synthetic" in name.lower()


def match_volumes(
    volume_names: Sequence[str],
    contrasts: Sequence[str],
    exclude: Collection[str] = (),
) -> dict[str, Optional[str]]:
    """Pre-fill one input selector per model contrast from the names of the loaded volumes.

    Each volume fills at most one contrast; synthetic volumes and names in ``exclude`` are never used. Among
    several candidates the one whose last word is the contrast name itself (``case-t1c``) wins, then the
    first in scene order. Contrasts without a candidate map to None (the selector stays empty).
    """
    usable = [n for n in volume_names if n not in exclude and not is_synthetic_name(n)]
    kinds = {name: classify_contrast(name) for name in usable}
    taken: set[str] = set()
    matches: dict[str, Optional[str]] = {}
    for contrast in contrasts:
        key = classify_contrast(contrast) or contrast.lower()
        candidates = [n for n in usable if n not in taken
                      and (kinds[n] == key or (name_words(n) and name_words(n)[-1] == contrast.lower()))]
        exact = [n for n in candidates if name_words(n)[-1] == contrast.lower()]
        chosen = (exact or candidates or [None])[0]
        matches[contrast] = chosen
        if chosen is not None:
            taken.add(chosen)
    return matches


def default_target(contrasts: Sequence[str], assigned: Mapping[str, Optional[str]]) -> Optional[str]:
    """The contrast to impute by default: the first model contrast with no input volume.

    When every contrast has a volume (a complete case, e.g. to see how well the model does), the contrast-
    enhanced T1 is proposed (imputing it is the gadolinium-free use case), else the last contrast; its own
    volume then serves as the reference for comparison. None for an empty contrast list.
    """
    missing = next((c for c in contrasts if not assigned.get(c)), None)
    if missing is not None or not contrasts:
        return missing
    return next((c for c in contrasts if classify_contrast(c) == "t1c"), contrasts[-1])


def synthetic_node_name(target: str) -> str:
    """Name of the result node, e.g. ``t1c (synthetic, CollaGAN)``."""
    return f"{target} {SYNTHETIC_SUFFIX}"


def synthetic_attributes(image: sitk.Image) -> dict[str, str]:
    """The ``collagan_*`` labels the core put on an imputed image, to copy as node attributes."""
    return {key: image.GetMetaData(key) for key in image.GetMetaDataKeys() if key.startswith("collagan_")}


def synthetic_banner(attributes: Mapping[str, str]) -> str:
    """Warning text shown in the panel while a synthetic volume is displayed."""
    target = attributes.get("collagan_target", "?")
    inputs = attributes.get("collagan_inputs", "?").replace(",", " + ")
    text = (f"SYNTHETIC IMAGE: '{target}' was imputed by CollaGAN model '{attributes.get('collagan_model', '?')}' "
            f"from {inputs} on {attributes.get('collagan_created', '?')}. It was not acquired: do not use it for "
            "diagnosis or treatment decisions.")
    if attributes.get("collagan_input_check") == "warning":  # the core's input check (input_check.py)
        text += (" UNRELIABLE: the inputs are unlike the data the model was trained on ("
                 f"{attributes.get('collagan_input_check_findings', 'see the input check')}).")
    if "does not fit the field of view" in attributes.get("collagan_warnings", ""):
        text += " Part of the head lay outside the model's field of view and is 0 in this image."
    return text


