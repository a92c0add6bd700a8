"""The model card: what a CollaGAN model expects and was trained on, and the one input layout it takes.

Every model file carries a :class:`ModelCard` (``collagan.json`` in the TorchScript archive, the ONNX file's
``metadata_props``; :mod:`.contract` reads and writes the files). The model maps ``x`` of shape ``(B, 2N, H, W)``
to ``(B, 1, H, W)``: the first N channels are the contrasts in ``card.contrasts`` order (p99 units; the target and
every missing contrast are zeros), the next N channels are the one-hot target mask (ones in the target's channel);
:func:`model_input` builds it, for training and inference alike. The output is the target in p99 units.
This module needs neither torch nor a runtime.

Example:
    >>> card = ModelCard(name="tiny", contrasts=["t1n", "t1c", "t2f"])
    >>> card.field_of_view
    (256.0, 256.0)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union

import numpy as np

from .errors import ModelError

if TYPE_CHECKING:  # torch is optional on the CPU path: imported where a function needs it
    import torch

FORMAT_NAME = "collagan-impute-model"
FORMAT_VERSION = 1
METADATA_FILE = "collagan.json"

#: How inputs are normalized; the only rule this version of the package implements (EVALUATION.md).
P99_NORMALIZATION: dict[str, Any] = {
    "method": "p99-in-mask",
    "percentile": 99.0,
    "mask": "otsu(mean of p99-normalized inputs) + fill holes + largest component, from inputs only",
    "missing_inputs": "zeros",
}

PathLike = Union[str, os.PathLike]
ArrayT = TypeVar("ArrayT")

OUTSIDE_HEAD = ("model", "zero")
#: In-plane pixel spacing (mm, rows then columns) assumed for a card that states none: the grid of the LGG
#: training data (256x256 axial slices stored at 1.0 mm; the curated set kept no scanner spacing, and its
#: slices span a 220-256 mm head field, so about 1 mm a pixel).
DEFAULT_PIXEL_SPACING = (1.0, 1.0)


@dataclass
class ModelCard:
    """Metadata embedded in every model file: what the model expects and what it was trained on."""

    name: str
    contrasts: list[str]
    in_plane_size: tuple[int, int] = (256, 256)
    pad_crop: str = "center: zero-pad or crop each axial slice to in_plane_size, undone on the output"
    #: In-plane pixel spacing in mm (rows, columns) of the training slices; slices on another spacing are
    #: resampled to it (and back). None: DEFAULT_PIXEL_SPACING. The model's field of view is
    #: in_plane_size x pixel_spacing.
    pixel_spacing: Optional[tuple[float, float]] = None
    slice_orientation: str = "axial slices of the volume re-oriented to LPS (SimpleITK DICOMOrient)"
    normalization: dict[str, Any] = field(default_factory=lambda: dict(P99_NORMALIZATION))
    output: str = "the target contrast in p99 units of the target (1.0 = its 99th percentile in the mask)"
    #: "model": keep the network's output everywhere; "zero": set voxels outside the inputs' head mask to 0
    #: (for models trained with losses inside the head only, whose output there is untrained).
    outside_head: str = "model"
    architecture: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    licence: str = "unspecified"
    metrics: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    #: What the model is for, the data it was trained on (skull or not, intensity form, contrasts) and what it
    #: cannot do, in words for users (``collagan-impute info`` shows them first).
    intended_use: str = ""
    domain: str = ""
    limitations: list[str] = field(default_factory=list)
    #: The training data's profile for the input check (:func:`.input_check.training_profile`); {} = none.
    input_profile: dict[str, Any] = field(default_factory=dict)
    #: SHA-256 of the weights (:func:`weights_sha256`), written by :func:`save_model`, verified on load.
    weights_sha256: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.contrasts, str) or not isinstance(self.contrasts, (list, tuple)):
            raise ModelError(f"contrasts must be a list of names, got {self.contrasts!r}.")
        self.contrasts = [str(c) for c in self.contrasts]
        try:
            height, width = (int(v) for v in self.in_plane_size)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"in_plane_size must be two integers, got {self.in_plane_size!r}.") from exc
        if not (0 < height <= 8192 and 0 < width <= 8192):
            raise ModelError(f"in_plane_size must be two positive sizes (pixels), got {[height, width]}.")
        self.in_plane_size = (height, width)
        if self.pixel_spacing is not None:
            try:
                spacing = tuple(float(v) for v in self.pixel_spacing)
            except (TypeError, ValueError) as exc:
                raise ModelError(f"pixel_spacing must be two numbers (mm), got {self.pixel_spacing!r}.") from exc
            if len(spacing) != 2 or not all(math.isfinite(v) and v > 0 for v in spacing):
                raise ModelError(f"pixel_spacing must be two positive sizes in mm, got {self.pixel_spacing!r}.")
            self.pixel_spacing = spacing  # type: ignore[assignment]
        for name in ("normalization", "architecture", "training", "metrics", "input_profile"):
            if not isinstance(getattr(self, name), dict):
                raise ModelError(f"{name} must be a JSON object, got {type(getattr(self, name)).__name__}.")
        if self.outside_head not in OUTSIDE_HEAD:
            raise ModelError(f"outside_head must be one of {OUTSIDE_HEAD}, got '{self.outside_head}'. "
                             "Re-export the model with a supported value.")
        if len(self.contrasts) < 2 or len(set(self.contrasts)) != len(self.contrasts):
            raise ModelError(
                f"A CollaGAN model needs at least two distinct contrast names, got {self.contrasts}."
            )

    @property
    def n_contrasts(self) -> int:
        return len(self.contrasts)

    @property
    def spacing(self) -> tuple[float, float]:
        """The in-plane pixel spacing the model works on (mm, rows then columns): the card's, or the default."""
        return tuple(self.pixel_spacing or DEFAULT_PIXEL_SPACING)  # type: ignore[return-value]

    @property
    def field_of_view(self) -> tuple[float, float]:
        """The model's in-plane field (mm): in_plane_size x spacing."""
        return (self.in_plane_size[0] * self.spacing[0], self.in_plane_size[1] * self.spacing[1])

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["in_plane_size"] = list(self.in_plane_size)
        if self.pixel_spacing is not None:
            data["pixel_spacing"] = list(self.pixel_spacing)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model file") -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"{source}: {METADATA_FILE} is not valid JSON ({exc}).") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise ModelError(f"{source} is not a CollaGANImpute model: its {METADATA_FILE} has no "
                             f"format '{FORMAT_NAME}'. Export models with CollaGANImputeLib.save_model.")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ModelError(
                f"{source} uses model format version {version}, newer than this CollaGANImpute reads "
                f"(version {FORMAT_VERSION}). Upgrade CollaGANImpute (pip install -U collagan-impute or "
                "update the Slicer extension)."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        missing = {"name", "contrasts"} - set(data)
        if missing:
            raise ModelError(f"{source}: {METADATA_FILE} lacks {sorted(missing)}.")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except ModelError as exc:
            raise ModelError(f"{source}: {METADATA_FILE} is invalid: {exc} Re-export the model.") from exc
        except (TypeError, ValueError) as exc:  # e.g. a number where a list belongs
            raise ModelError(f"{source}: {METADATA_FILE} is invalid ({exc}). Re-export the model.") from exc

    def summary(self) -> str:
        """A human-readable card, as ``collagan-impute info`` prints it."""
        lines = [
            f"Model: {self.name}",
            f"Contrasts (channel order): {', '.join(self.contrasts)}",
            f"In-plane size: {self.in_plane_size[0]}x{self.in_plane_size[1]} ({self.pad_crop})",
            f"Pixel spacing: {self.spacing[0]:g} x {self.spacing[1]:g} mm"
            + ("" if self.pixel_spacing else " (not stated by the card: the default, the LGG training grid)")
            + f", field of view {self.field_of_view[0]:g} x {self.field_of_view[1]:g} mm",
            f"Normalization: {self.normalization.get('method')} ({self.normalization.get('mask')})",
            f"Output: {self.output}" + ("; 0 outside the head mask" if self.outside_head == "zero" else ""),
            f"Licence: {self.licence}",
        ]
        if self.description:
            lines.append(f"Description: {self.description}")
        for key, value in self.training.items():
            lines.append(f"Training {key}: {value}")
        if self.metrics:
            lines.append("Validation metrics:")
            lines.append(json.dumps(self.metrics, indent=2, sort_keys=True))
        return "\n".join(lines)


@dataclass
class LoadedModel:
    """A checked model ready for inference.

    The TorchScript module is loaded on first use of :attr:`module` (``loader``, which checks its weights' hash
    before handing it out): a CPU run on an ONNX runtime needs neither torch nor the weights in memory.

    Example:
        >>> model = load_model("model.pt")                                 # doctest: +SKIP
        >>> model.has_module, "torch" in sys.modules                       # doctest: +SKIP
        (True, False)
        >>> model.module(x)            # torch.jit.load and the weights check happen here    # doctest: +SKIP
    """

    card: ModelCard
    path: Path
    sha256: str
    #: The ONNX export of the same weights (checked against the card), or None.
    onnx: Optional[Path] = None
    onnx_sha256: str = ""
    #: Loads and checks the TorchScript module when :attr:`module` is first read; None: no module to load.
    loader: Optional[Callable[[], torch.jit.ScriptModule]] = field(default=None, repr=False, compare=False)
    _module: Optional[torch.jit.ScriptModule] = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @property
    def module(self) -> Optional[torch.jit.ScriptModule]:
        """The TorchScript module, loaded (and its weights checked) on first use; None where torch is not
        installed (the ONNX file runs instead). A damaged file raises :class:`.errors.ModelError` here."""
        with self._lock:  # a GUI and its worker thread may ask at once: load once
            if self._module is None and self.loader is not None:
                self._module = self.loader()
                self.loader = None
            return self._module

    @module.setter
    def module(self, value: Optional[torch.jit.ScriptModule]) -> None:
        self._module, self.loader = value, None

    @property
    def has_module(self) -> bool:
        """Whether torch can run this model (a module loaded or to load), without loading it."""
        return self._module is not None or self.loader is not None


def model_input(images: ArrayT, available: Any, target: Any) -> ArrayT:
    """The model's input ``(B, 2N, H, W)``, the one layout training and inference both build.

    Array-generic: torch tensors give a tensor, NumPy arrays a NumPy array (the CPU runtimes need no torch),
    with the same values.

    ``images`` (B, N, H, W) holds the contrasts in ``card.contrasts`` order; a slot is kept where ``available``
    (B, N) is true and zeroed elsewhere, the target's always (it is what the model must produce). Then come the N
    one-hot planes of ``target`` (B,), ones over the whole field: the images are padded or resampled to the
    model's grid first, so the planes cover the field even where a small slice left zeros.

    Example:
        >>> x = model_input(torch.ones(2, 3, 4, 4), torch.tensor([[True, True, False]] * 2), torch.tensor([2, 0]))
        >>> x.shape, float(x[0, 2].sum()), float(x[0, 5].mean()), float(x[1, 0].sum()), float(x[1, 3].mean())
        (torch.Size([2, 6, 4, 4]), 0.0, 1.0, 0.0, 1.0)
    """
    n = images.shape[1]
    if isinstance(images, np.ndarray):
        planes_np = (np.asarray(target)[:, None] == np.arange(n)[None, :]).astype(images.dtype)
        keep_np = np.asarray(available).astype(images.dtype) * (1 - planes_np)
        return np.concatenate([images * keep_np[:, :, None, None],
                               np.broadcast_to(planes_np[:, :, None, None], planes_np.shape + images.shape[-2:])],
                              axis=1)
    import torch

    planes = torch.nn.functional.one_hot(target.long(), n).to(images.dtype)[:, :, None, None]
    keep = available.to(images.dtype) * (1 - planes[:, :, 0, 0])
    return torch.cat([images * keep[:, :, None, None], planes.expand(-1, -1, *images.shape[-2:])], dim=1)


def sha256_of(path: PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (model files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

