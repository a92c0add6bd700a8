"""The model contract: one TorchScript file with its metadata, shared by training and inference.

A CollaGAN model file is a TorchScript archive with an extra file ``collagan.json`` (a :class:`ModelCard`).
Training also writes the same generator as ONNX beside it (``model.onnx`` next to ``model.pt``,
:func:`save_onnx`), the card in its ``metadata_props``: the CPU runtimes (:mod:`.runtime`) run that file, so that
imputing on a CPU needs no torch. The TorchScript file stays the reference and runs on CUDA.
The scripted module maps ``x`` of shape ``(B, 2N, H, W)`` to ``(B, 1, H, W)``: the first N channels are the
contrasts in ``card.contrasts`` order (p99 units; the target and every missing contrast are zeros), the next
N channels are the one-hot target mask (ones in the target's channel); :func:`model_input` builds it, for training
and inference alike. The output is the target in p99 units.

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
import math
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, TypeVar, Union

import numpy as np

from .atomic import atomic_path
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
#: The key of the card in an ONNX file's ``metadata_props``.
ONNX_METADATA_KEY = METADATA_FILE
ONNX_OPSET = 17


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
    """A checked model ready for inference."""

    #: The TorchScript module; None where torch is not installed (the ONNX file runs instead).
    module: Optional[torch.jit.ScriptModule]
    card: ModelCard
    path: Path
    sha256: str
    #: The ONNX export of the same weights (checked against the card), or None.
    onnx: Optional[Path] = None
    onnx_sha256: str = ""


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
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of a module's weights and buffers (names, dtypes, shapes, bytes, in state-dict order): the same
    for the module before saving and after loading, on any device.

    Example:
        >>> weights_sha256(torch.nn.Conv2d(6, 1, 1)) != ""     # doctest: +SKIP
        True
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def verify_archive(path: PathLike) -> None:
    """Refuse a model file whose zip members fail their CRC-32 (torch.jit.load does not check them: a flipped
    weight byte loads without a word)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError):
        return  # not a zip archive at all: torch.jit.load refuses it with the "not TorchScript" message
    if bad is not None:
        raise ModelError(f"{path} is damaged: its member {bad.split('/', 1)[-1]} fails its CRC check (the file "
                         "was changed or corrupted after export). Copy or download the model again.")


def save_model(model: torch.nn.Module, card: ModelCard, path: PathLike, example_input: Optional[torch.Tensor]
               = None) -> str:
    """Script ``model`` (or trace it on ``example_input``), embed ``card`` and write ``path`` atomically.

    Returns the SHA-256 of the written file.
    """
    import torch

    model = model.eval()
    if isinstance(model, torch.jit.ScriptModule):
        scripted = model
    elif example_input is not None:
        with torch.no_grad():
            scripted = torch.jit.trace(model, example_input)
    else:
        scripted = torch.jit.script(model)
    card = dataclasses.replace(card, weights_sha256=weights_sha256(scripted))  # the caller's card is untouched
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
        torch.jit.save(scripted, str(tmp), _extra_files={METADATA_FILE: card.to_json()})
    return sha256_of(path)


def onnx_path_for(path: PathLike) -> Path:
    """Where the ONNX export of the TorchScript model ``path`` lies: beside it, suffix ``.onnx``."""
    return Path(path).with_suffix(".onnx")


def save_onnx(model: torch.nn.Module, card: ModelCard, path: PathLike, example_input: torch.Tensor) -> str:
    """Export the eager ``model`` to ONNX (opset :data:`ONNX_OPSET`, any batch size) with ``card`` in its
    ``metadata_props``, atomically; returns the file's SHA-256. Batch, height and width are free.

    Give the card of the TorchScript file of the same weights (``load_model(pt).card``): loading checks that both
    files carry the same card. ``example_input`` needs a batch of two or more, so that a unit that treats a single
    slice apart (:class:`.ccnr_export.FastCCNR`) is traced on its batch form.

    Example:
        >>> card = load_model("model.pt").card                                          # doctest: +SKIP
        >>> save_onnx(generator, card, "model.onnx", torch.rand(2, 6, 256, 256))        # doctest: +SKIP
    """
    import onnx
    import torch

    if example_input.shape[0] < 2:
        raise ModelError("save_onnx needs an example batch of at least two slices (the batch form is exported).")

    with atomic_path(Path(path), suffix=".onnx") as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation note
        # The TorchScript-based exporter writes opset 17 as asked (the dynamo one moves to 18) in a second.
        torch.onnx.export(model.eval(), (example_input,), str(tmp), input_names=["x"], output_names=["y"],
                          opset_version=ONNX_OPSET, dynamo=False,
                          dynamic_axes={axis: {0: "batch", 2: "height", 3: "width"} for axis in ("x", "y")})
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = ONNX_METADATA_KEY, card.to_json()
        onnx.save(proto, str(tmp))
    return sha256_of(path)


def _onnx_card_text(path: Path) -> str:
    """The card JSON in an ONNX file's metadata, read with ``onnx`` where installed, else ONNX Runtime."""
    try:
        import onnx
    except ImportError:
        onnx = None
    try:
        if onnx is not None:
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        else:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            props = dict(session.get_modelmeta().custom_metadata_map)
    except ImportError as exc:
        raise ModelError(f"{path} is an ONNX model: reading it needs onnxruntime (pip install "
                         "'collagan-impute[cpu]').") from exc
    except Exception as exc:  # protobuf DecodeError, onnxruntime's Fail/InvalidGraph
        raise ModelError(f"{path} is not an ONNX model file ({type(exc).__name__}). Give the .onnx file written "
                         "by training's export beside the .pt model.") from exc
    if ONNX_METADATA_KEY not in props:
        raise ModelError(f"{path} is an ONNX file but not a CollaGAN model: its metadata has no {METADATA_FILE}. "
                         "Export it with CollaGANImputeLib.contract.save_onnx.")
    return props[ONNX_METADATA_KEY]


def _archive_card_text(path: Path) -> Optional[str]:
    """The card JSON of a TorchScript archive, read from the zip (no torch, no weights); None without one."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")]
            return _decode(archive.read(names[0]), path) if names else None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"{path} is not a TorchScript model file ({type(exc).__name__}). CollaGANImpute needs the "
                         ".pt file exported by its training (training/collagan_train/export.py).") from exc


def _decode(text: Union[str, bytes], path: Path) -> str:
    if isinstance(text, bytes):
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelError(f"{path}: its {METADATA_FILE} is not UTF-8 text ({exc.reason} at byte {exc.start}). "
                             "Re-export the model with CollaGANImputeLib.save_model.") from exc
    return text


def _check_file(path: Path) -> None:
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pt"))
        raise ModelError(f"{path} is a folder, not a model file. Give the .pt file itself"
                         + (f" (this folder holds {', '.join(inside[:5])})." if inside else "."))
    if not path.is_file():
        raise ModelError(f"Model file not found: {path}. Give the path of a CollaGAN TorchScript .pt file.")


def read_card(path: PathLike) -> ModelCard:
    """Read only the card of a model file, ``.pt`` or ``.onnx``: cheap, no torch, the weights stay unread.

    Example:
        >>> read_card("Resources/Models/collagan_lgg_t1n_t1c_t2f.pt").contrasts     # doctest: +SKIP
        ['t1n', 't1c', 't2f']
    """
    path = Path(path)
    _check_file(path)
    if path.suffix == ".onnx":
        return ModelCard.from_json(_onnx_card_text(path), source=str(path))
    text = _archive_card_text(path)
    if text is None:
        raise ModelError(f"{path} is not a CollaGAN model: it has no embedded {METADATA_FILE}. "
                         "Export it with CollaGANImputeLib.save_model.")
    return ModelCard.from_json(text, source=str(path))


def torch_available() -> bool:
    """Whether torch can be imported (it is optional where an ONNX runtime runs the model)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_readable() -> bool:
    """Whether an ONNX file's card can be read here (``onnx`` or ``onnxruntime`` installed)."""
    import importlib.util

    return any(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def _load(path: PathLike, device: Union[str, torch.device]) -> tuple[torch.jit.ScriptModule, ModelCard]:
    import torch

    path = Path(path)
    _check_file(path)
    verify_archive(path)
    extra = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():
            # TorchScript is the artifact Slicer's bundled torch can run; its deprecation note is noise here.
            warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError/ValueError variants for non-archives
        raise ModelError(
            f"{path} is not a TorchScript model file ({type(exc).__name__}). CollaGANImpute needs the .pt "
            "file exported by its training (training/collagan_train/export.py)."
        ) from exc
    if not extra[METADATA_FILE]:
        raise ModelError(
            f"{path} is a TorchScript file but not a CollaGAN model: it has no embedded {METADATA_FILE}. "
            "Export it with CollaGANImputeLib.save_model."
        )
    card = ModelCard.from_json(_decode(extra[METADATA_FILE], path), source=str(path))
    if card.weights_sha256 and weights_sha256(module) != card.weights_sha256:
        raise ModelError(f"{path}: its weights do not match the hash its card was saved with (the file was "
                         "changed after export). Copy or download the model again.")
    return module, card


def _check_sha(path: Path, expected: Optional[str]) -> str:
    digest = sha256_of(path) if path.is_file() else ""
    if expected is not None and digest != expected:
        raise ModelError(
            f"{path} fails its SHA-256 check (expected {expected[:12]}…, found {digest[:12]}…): the file is "
            "damaged or was replaced. Reinstall the extension or download the model again."
        )
    return digest


def load_model(
    path: PathLike,
    contrasts: Optional[Iterable[str]] = None,
    sha256: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    onnx_sha256: Optional[str] = None,
) -> LoadedModel:
    """Load and check a model file, with its ONNX export where one lies beside it.

    Args:
        path: the TorchScript file (or, where torch is not installed, its ``.onnx`` export alone).
        contrasts: the contrast names the caller has or wants; every one must be among the model's.
        sha256: expected checksum (bundled models); a mismatch is refused.
        device: where to put the weights.
        onnx_sha256: expected checksum of the ONNX file beside ``path`` (bundled models).

    Without torch the TorchScript module is not loaded (``module`` is None): its card is read from the archive
    and the ONNX file beside it must carry the same card. The ONNX file is refused when its card differs from the
    TorchScript file's (another model's export, or an older one left behind).
    """
    path = Path(path)
    digest = _check_sha(path, sha256)
    onnx_file: Optional[Path] = path if path.suffix == ".onnx" else onnx_path_for(path)
    module = None
    if path.suffix == ".onnx":
        card = read_card(path)
    elif torch_available():
        module, card = _load(path, device)
        module.eval()
    else:
        _check_file(path)
        verify_archive(path)
        card = read_card(path)
    onnx_digest = digest if path.suffix == ".onnx" else ""
    if onnx_file is not None and onnx_file != path:
        if onnx_sha256 is not None or (onnx_file.is_file() and onnx_readable()):
            onnx_digest = _check_sha(onnx_file, onnx_sha256)  # a listed ONNX file that is missing is refused
            if read_card(onnx_file).to_json() != card.to_json():  # JSON: a NaN metric equals itself
                raise ModelError(f"{onnx_file} does not carry the card of {path.name} (another model's export or an "
                                 "older one): export both again from one checkpoint, or remove the .onnx file.")
        else:
            onnx_file = None
    if module is None and onnx_file is None:
        raise ModelError(f"{path} is a TorchScript model and torch is not installed: install torch (pip install "
                         "'collagan-impute[torch]') or give a model with its ONNX export beside it.")
    if contrasts is not None:
        unknown = [c for c in contrasts if c not in card.contrasts]
        if unknown:
            raise ModelError(
                f"Model '{card.name}' handles contrasts {card.contrasts}; {unknown} are not among them. "
                "Rename the inputs to the model's contrast names or choose a model trained for them."
            )
    return LoadedModel(module=module, card=card, path=path, sha256=digest, onnx=onnx_file, onnx_sha256=onnx_digest)
