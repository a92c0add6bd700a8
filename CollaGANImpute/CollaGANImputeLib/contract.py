"""The model contract: one TorchScript file with its metadata, shared by training and inference.

A CollaGAN model file is a TorchScript archive with an extra file ``collagan.json`` (a :class:`ModelCard`).
The scripted module maps ``x`` of shape ``(B, 2N, H, W)`` to ``(B, 1, H, W)``: the first N channels are the
contrasts in ``card.contrasts`` order (p99 units; the target and every missing contrast are zeros), the next
N channels are the one-hot target mask (ones in the target's channel). The output is the target in p99 units.

Example:
    >>> card = ModelCard(name="tiny", contrasts=["t1n", "t1c", "t2f"])
    >>> save_model(torch.nn.Conv2d(6, 1, 1), card, "tiny.pt")           # doctest: +SKIP
    >>> loaded = load_model("tiny.pt", contrasts=["t1n", "t2f"])         # doctest: +SKIP
    >>> loaded.card.contrasts                                            # doctest: +SKIP
    ['t1n', 't1c', 't2f']
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import torch

from .errors import ModelError

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


OUTSIDE_HEAD = ("model", "zero")


@dataclass
class ModelCard:
    """Metadata embedded in every model file: what the model expects and what it was trained on."""

    name: str
    contrasts: list[str]
    in_plane_size: tuple[int, int] = (256, 256)
    pad_crop: str = "center: zero-pad or crop each axial slice to in_plane_size, undone on the output"
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
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.contrasts = [str(c) for c in self.contrasts]
        self.in_plane_size = (int(self.in_plane_size[0]), int(self.in_plane_size[1]))
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

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["in_plane_size"] = list(self.in_plane_size)
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
        return cls(**{k: v for k, v in data.items() if k in known})

    def summary(self) -> str:
        """A human-readable card, as ``collagan-impute info`` prints it."""
        lines = [
            f"Model: {self.name}",
            f"Contrasts (channel order): {', '.join(self.contrasts)}",
            f"In-plane size: {self.in_plane_size[0]}x{self.in_plane_size[1]} ({self.pad_crop})",
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
    """A checked model ready for inference."""

    module: torch.jit.ScriptModule
    card: ModelCard
    path: Path
    sha256: str


def sha256_of(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(model: torch.nn.Module, card: ModelCard, path: PathLike, example_input: Optional[torch.Tensor]
               = None) -> str:
    """Script ``model`` (or trace it on ``example_input``), embed ``card`` and write ``path`` atomically.

    Returns the SHA-256 of the written file.
    """
    model = model.eval()
    if isinstance(model, torch.jit.ScriptModule):
        scripted = model
    elif example_input is not None:
        with torch.no_grad():
            scripted = torch.jit.trace(model, example_input)
    else:
        scripted = torch.jit.script(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
            torch.jit.save(scripted, tmp, _extra_files={METADATA_FILE: card.to_json()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return sha256_of(path)


def read_card(path: PathLike) -> ModelCard:
    """Read only the metadata of a model file (cheap: the weights stay on disk)."""
    return _load(path, device="cpu")[1]


def _load(path: PathLike, device: Union[str, torch.device]) -> tuple[torch.jit.ScriptModule, ModelCard]:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Model file not found: {path}. Give the path of a CollaGAN TorchScript .pt file.")
    extra = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():
            # TorchScript is the artifact Slicer's bundled torch can run; its deprecation note is noise here.
            warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError/ValueError variants for non-archives
        raise ModelError(
            f"{path} is not a TorchScript model file ({type(exc).__name__}). CollaGANImpute needs the .pt "
            "file exported by its training (training/export.py)."
        ) from exc
    if not extra[METADATA_FILE]:
        raise ModelError(
            f"{path} is a TorchScript file but not a CollaGAN model: it has no embedded {METADATA_FILE}. "
            "Export it with CollaGANImputeLib.save_model."
        )
    text = extra[METADATA_FILE]
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return module, ModelCard.from_json(text, source=str(path))


def load_model(
    path: PathLike,
    contrasts: Optional[Iterable[str]] = None,
    sha256: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
) -> LoadedModel:
    """Load and check a model file.

    Args:
        path: the TorchScript file.
        contrasts: the contrast names the caller has or wants; every one must be among the model's.
        sha256: expected checksum (bundled models); a mismatch is refused.
        device: where to put the weights.
    """
    path = Path(path)
    digest = sha256_of(path) if path.is_file() else ""
    if sha256 is not None and digest != sha256:
        raise ModelError(
            f"{path} fails its SHA-256 check (expected {sha256[:12]}…, found {digest[:12]}…): the file is "
            "damaged or was replaced. Reinstall the extension or download the model again."
        )
    module, card = _load(path, device)
    if contrasts is not None:
        unknown = [c for c in contrasts if c not in card.contrasts]
        if unknown:
            raise ModelError(
                f"Model '{card.name}' handles contrasts {card.contrasts}; {unknown} are not among them. "
                "Rename the inputs to the model's contrast names or choose a model trained for them."
            )
    module.eval()
    return LoadedModel(module=module, card=card, path=path, sha256=digest)
