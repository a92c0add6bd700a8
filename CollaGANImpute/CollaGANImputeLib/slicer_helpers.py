"""Slicer-free helpers behind the CollaGANImpute Slicer module: name matching, chunked imputation, comparison.

Everything here runs without Slicer so that pytest can check it; ``CollaGANImpute.py`` only moves volumes
between the scene and SimpleITK and drives these helpers from the GUI.

Example:
    >>> match_volumes(["MRHead", "T1 post Gd", "T2-FLAIR", "T1w MPRAGE"], ["t1n", "t1c", "t2f"])
    {'t1n': 'T1w MPRAGE', 't1c': 'T1 post Gd', 't2f': 'T2-FLAIR'}
    >>> default_target(["t1n", "t1c", "t2f"], {"t1n": "a", "t1c": None, "t2f": "b"})
    't1c'
    >>> job = ChunkedImputation({"t1n": t1n, "t2f": t2f}, model, "t1c")      # doctest: +SKIP
    >>> while not job.done: job.step()          # a Qt timer calls step() once per tick   # doctest: +SKIP
    >>> job.result.images["t1c"]                # labeled synthetic, geometry of t1n     # doctest: +SKIP
"""

from __future__ import annotations

import csv
import math
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch

from .acceleration import default_batch_size
from .contract import LoadedModel
from .errors import Cancelled, InputError
from .geometry import align_to_reference, to_canonical_array
from .inference import impute_slices, resolve_device
from .metrics import error_map, per_slice_ssim, score_volume, ssim_map
from .pipeline import (
    ImputationResult,
    PreparedCase,
    apply_outside_head,
    check_request,
    label_synthetic,
    prepare_case,
)

#: Canonical contrast keys (BraTS 2023 names) and what each looks like in a series or file name.
CANONICAL_CONTRASTS = ("t1n", "t1c", "t2w", "t2f")
_FLAIR = re.compile(r"flair|^t2f$|^fl$|^darkfluid$")
_T2 = re.compile(r"^t2(w|wi|tse|fse|ax|sag|cor)?$")
_T2_STAR = re.compile(r"^t2(star|s)$|^swi$|^gre$")  # T2*/SWI are other contrasts: never guessed as T2w
_T1_POST_COMPOUND = re.compile(r"^t1(c|ce|gd|post|postgd|postcontrast|contrast|km|plusc|\+c|pc)$")
_T1_PRE_COMPOUND = re.compile(r"^t1(n|w|wi|pre|native|nc|se|tse|ax|sag|cor)?$")
_T1_SEQUENCE = re.compile(r"^(mprage|mp2rage|spgr|fspgr|bravo|tfl|tfe|vibe|t1mprage|mpr)$")
_POST_WORDS = {"post", "gd", "gad", "gado", "gadolinium", "contrast", "ce", "c", "postcontrast", "enhanced", "+c",
               "postgd", "pc"}
_STRONG_POST_WORDS = _POST_WORDS - {"c", "ce", "pc"}
_PRE_WORDS = {"pre", "precontrast", "native", "nc", "noncontrast", "plain", "n"}
_IGNORED = re.compile(r"^(seg|label|labels|mask|lesion|brainmask|synthetic|star)$")

#: Node-name suffix of every imputed volume, so that it is never taken as an acquired input.
SYNTHETIC_SUFFIX = "(synthetic, CollaGAN)"
SYNTHETIC_ATTRIBUTE = "collagan_synthetic"


def _tokens(name: str) -> list[str]:
    """Lower-case words of a volume name; '+' kept (T1+C), everything else non-alphanumeric splits."""
    return [t for t in re.split(r"[^a-z0-9+]+", name.lower()) if t]


def classify_contrast(name: str) -> Optional[str]:
    """Which canonical contrast (t1n, t1c, t2w, t2f) a volume or contrast name denotes, or None.

    Case-insensitive, on whole words of the name: ``TCGA-HT-7882-t1c``, ``T1Gd``, ``t1_post``, ``MPRAGE post``
    → t1c; ``T1w``, ``MPRAGE``, ``T1 pre`` → t1n; ``T2``, ``t2w`` → t2w; ``FLAIR``, ``T2-FLAIR``, ``t2f`` → t2f.
    Label maps (``seg``, ``mask``) and T2*/SWI give None.
    """
    if re.search(r"t2\s*\*", name.lower()):
        return None  # T2*-weighted: not a T2w
    tokens = _tokens(name)
    if not tokens or any(_IGNORED.match(t) for t in tokens) or any(_T2_STAR.match(t) for t in tokens):
        return None
    if any(_FLAIR.search(t) for t in tokens):
        return "t2f"
    if any(_T2.match(t) for t in tokens):
        return "t2w"
    if any(_T1_POST_COMPOUND.match(t) for t in tokens):
        return "t1c"
    has_t1 = any(_T1_PRE_COMPOUND.match(t) or _T1_SEQUENCE.match(t) for t in tokens)
    if has_t1 and any(t in _PRE_WORDS for t in tokens):
        return "t1n"  # "pre"/"native" wins over contrast words: "T1 precontrast" is a native T1
    post = [t for t in tokens if t in _POST_WORDS]
    # A bare "post Gd" series is a contrast-enhanced T1 in practice; short words ("c", "ce") need a T1 beside.
    if post and (has_t1 or any(t in _STRONG_POST_WORDS for t in post)):
        return "t1c"
    return "t1n" if has_t1 else None


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
                      and (kinds[n] == key or (_tokens(n) and _tokens(n)[-1] == contrast.lower()))]
        exact = [n for n in candidates if _tokens(n)[-1] == contrast.lower()]
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
    return (f"SYNTHETIC IMAGE: '{target}' was imputed by CollaGAN model '{attributes.get('collagan_model', '?')}' "
            f"from {inputs} on {attributes.get('collagan_created', '?')}. It was not acquired: do not use it for "
            "diagnosis or treatment decisions.")


@dataclass
class ChunkedImputation:
    """One imputation cut into short steps, so that a GUI timer can run it without freezing.

    Step 1 prepares the case (alignment, mask, p99 normalization: :func:`prepare_case`); each further step
    runs the model on ``slices_per_step`` axial slices with :func:`impute_slices`; the last step assembles the
    image and labels it synthetic exactly as :func:`CollaGANImputeLib.impute` does. :meth:`cancel` makes the
    next step raise :class:`Cancelled`; nothing is produced. A CUDA out-of-memory error that survives the
    core's batch halving switches the remaining slices to the CPU (``notes`` says so).
    """

    images: Mapping[str, sitk.Image]
    model: LoadedModel
    target: str
    device: Union[str, torch.device, None] = "auto"
    batch_size: Optional[int] = None  # None: chosen for the device (acceleration.default_batch_size)
    precision: str = "auto"
    slices_per_step: Optional[int] = None
    reference: Optional[str] = None
    notes: list[str] = field(default_factory=list)
    result: Optional[ImputationResult] = None

    def __post_init__(self) -> None:
        # Model order for the metadata and the mask (as the core's impute does); the caller's order for the
        # reference grid (its first volume).
        self.inputs = check_request(self.model.card, list(self.images), [self.target])[self.target]
        self._prepare_order = [c for c in self.images if c != self.target]
        self.device = resolve_device(self.device)
        if self.slices_per_step is None:
            # Small CPU steps keep each timer tick short; a GPU does a whole batch in milliseconds.
            self.slices_per_step = (self.batch_size or default_batch_size(self.device)
                                    if self.device.type == "cuda" else 2)
        self._cancel = threading.Event()
        self._case: Optional[PreparedCase] = None
        self._output: Optional[np.ndarray] = None
        self._next_slice = 0
        self.warnings: list[str] = []

    @property
    def total_slices(self) -> int:
        return 0 if self._case is None else self._case.mask.shape[0]

    @property
    def slices_done(self) -> int:
        return self._next_slice

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def progress(self) -> float:
        """Fraction done in [0, 1]: preparation counts as the first 5 %."""
        if self.done:
            return 1.0
        if self._case is None:
            return 0.0
        return 0.05 + 0.95 * self._next_slice / max(1, self.total_slices)

    def cancel(self) -> None:
        self._cancel.set()

    def step(self) -> bool:
        """Do the next piece of work; True when the result is ready."""
        if self.done:
            return True
        if self._cancel.is_set():
            raise Cancelled("Imputation cancelled; nothing was added to the scene.")
        if self._case is None:
            self._case = prepare_case({c: self.images[c] for c in self._prepare_order}, self.reference,
                                      mask_from=self.inputs, device=self.device)
            self.warnings = list(self._case.warnings)
            self._output = np.zeros(self._case.mask.shape, dtype=np.float32)
            return False
        if self._next_slice < self.total_slices:
            self._run_chunk()
            return False
        self._output = apply_outside_head(self.model.card, self._case.mask, self._output)
        image = label_synthetic(self._case.to_image(self._output), self.model, self.inputs, self.target)
        self.result = ImputationResult(images={self.target: image}, case=self._case, model_name=self.model.card.name,
                                       inputs=sorted(self.inputs), arrays={self.target: self._output},
                                       cases={self.target: self._case})
        return True

    def run(self, progress: Optional[Callable[[float], None]] = None) -> ImputationResult:
        """All steps in a row (console use); ``progress`` gets the fraction done after each step."""
        while not self.step():
            if progress is not None:
                progress(self.progress)
        if progress is not None:
            progress(1.0)
        return self.result  # type: ignore[return-value]

    def _run_chunk(self) -> None:
        start = self._next_slice
        stop = min(start + int(self.slices_per_step or 1), self.total_slices)
        chunk = {c: self._case.arrays[c][start:stop] for c in self.inputs}
        try:
            predicted = impute_slices(self.model, chunk, self.target, device=self.device, batch_size=self.batch_size,
                                      precision=self.precision,
                                      cancel=self._cancel)
        except torch.cuda.OutOfMemoryError:
            if self.device.type != "cuda":
                raise
            torch.cuda.empty_cache()
            self.device = torch.device("cpu")
            self.slices_per_step = 2
            self.notes.append("The GPU ran out of memory even one slice at a time; the rest ran on the CPU.")
            predicted = impute_slices(self.model, chunk, self.target, device=self.device, batch_size=1,
                                      precision=self.precision,
                                      cancel=self._cancel)
        self._output[start:stop] = predicted
        self._next_slice = stop


@dataclass
class Comparison:
    """Scores of a synthetic volume against the acquired one, as the evaluation protocol defines them."""

    scores: dict[str, float]
    error_image: sitk.Image
    slice_ssim: np.ndarray
    error_limit: float


def compare_to_reference(
    synthetic: sitk.Image,
    reference: sitk.Image,
    inputs: Mapping[str, sitk.Image],
    lesion: Optional[sitk.Image] = None,
    case: Optional[PreparedCase] = None,
) -> Comparison:
    """Score ``synthetic`` (p99 units, as imputed) against the acquired ``reference`` volume.

    The head mask and the reference's p99 scaling come from the ``inputs`` the synthetic was imputed from
    (or from ``case`` when the imputation result is at hand), never from the target: EVALUATION.md. The
    lesion label map, if any, is resampled nearest-neighbour onto the case grid. Returns NMSE/PSNR/SSIM (+
    lesion scores), the signed error map as an image on the case grid, and the per-slice SSIM.
    """
    if case is None:
        if not inputs:
            raise InputError("Comparing needs the input volumes the synthetic one was imputed from (for the mask).")
        case = prepare_case(inputs)
    grid = case.reference
    pred = to_canonical_array(align_to_reference({"ref": grid, "pred": synthetic}, reference="ref")["pred"])
    gt = case.normalize_like_inputs(reference)
    region = None
    if lesion is not None:
        on_grid = sitk.Resample(lesion, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, lesion.GetPixelID())
        region = to_canonical_array(on_grid) > 0
    scores = score_volume(pred, gt, case.mask, lesion=region)
    errors = error_map(pred, gt, case.mask)
    error_image = case.to_image(errors)
    error_image.SetMetaData("collagan_error_map", "synthetic minus acquired, p99 units, 0 outside the head mask")
    inside = np.abs(errors[case.mask])
    limit = float(np.percentile(inside, 99)) if inside.size else 1.0
    return Comparison(scores=scores, error_image=error_image, slice_ssim=per_slice_ssim(
        ssim_map(pred, gt, case.mask), case.mask), error_limit=max(limit, 1e-3))


#: Rows of the results table: key in the core's score dict, label, unit / meaning.
SCORE_ROWS = (
    ("nmse", "NMSE", "lower is better"),
    ("psnr", "PSNR (dB)", "higher is better; images clipped to [0, 1] p99 units"),
    ("ssim", "SSIM", "masked mean, 1 = identical"),
    ("lesion_nmse", "Lesion NMSE", "inside mask and lesion"),
    ("lesion_ssim", "Lesion SSIM", "inside mask and lesion"),
    ("lesion_voxels", "Lesion voxels", "count"),
)


def score_table(scores: Mapping[str, float]) -> list[tuple[str, str, str]]:
    """(metric, value, note) rows for a table node; NaN (no lesion) reads 'n/a'."""
    rows = []
    for key, label, note in SCORE_ROWS:
        value = scores.get(key, float("nan"))
        if value is None or (isinstance(value, float) and math.isnan(value)):
            text = "n/a"
        elif key == "lesion_voxels":
            text = str(int(value))
        elif math.isinf(value):
            text = "inf"
        else:
            text = f"{value:.4f}"
        rows.append((label, text, note))
    return rows


def write_scores_csv(path: Union[str, os.PathLike], scores: Mapping[str, float],
                     context: Optional[Mapping[str, str]] = None) -> Path:
    """Write the scores (and who/what produced them) as a two-column CSV, atomically."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise InputError(f"{path.name}: give a file name ending in .csv.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.csv", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["metric", "value"])
            for key, value in (context or {}).items():
                writer.writerow([key, value])
            for key, _, _ in SCORE_ROWS:
                writer.writerow([key, repr(float(scores.get(key, float("nan"))))])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def slice_ssim_table(slice_ssim: Iterable[float]) -> np.ndarray:
    """(slice index, SSIM) rows for a plot, slices without head voxels left out."""
    values = np.asarray(list(slice_ssim), dtype=np.float64)
    index = np.arange(values.size, dtype=np.float64)
    keep = np.isfinite(values)
    return np.stack([index[keep], values[keep]], axis=1)
