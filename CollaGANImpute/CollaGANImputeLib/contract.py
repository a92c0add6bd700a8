"""The model contract: one TorchScript file with its metadata, shared by training and inference.

A CollaGAN model file is a TorchScript archive with an extra file ``collagan.json`` (a :class:`.card.ModelCard`,
with the input layout :func:`.card.model_input`). Training also writes the same generator as ONNX beside it
(:mod:`.onnx_file`). This module writes and reads the files: it checks the archive, the weights' hash, the
bundled models' SHA-256 and that the ONNX export carries the same card. The names of :mod:`.card` and
:mod:`.onnx_file` are importable from here too.

Example:
    >>> card = ModelCard(name="tiny", contrasts=["t1n", "t1c", "t2f"])
    >>> save_model(torch.nn.Conv2d(6, 1, 1), card, "tiny.pt")           # doctest: +SKIP
    >>> loaded = load_model("tiny.pt", contrasts=["t1n", "t2f"])         # doctest: +SKIP
    >>> loaded.card.contrasts                                            # doctest: +SKIP
    ['t1n', 't1c', 't2f']
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Union

from .atomic import atomic_path
from .card import (  # noqa: F401  (re-exported: callers import the model's names from the contract)
    DEFAULT_PIXEL_SPACING,
    FORMAT_NAME,
    FORMAT_VERSION,
    METADATA_FILE,
    OUTSIDE_HEAD,
    P99_NORMALIZATION,
    LoadedModel,
    ModelCard,
    PathLike,
    model_input,
    sha256_of,
)
from .errors import ModelError
from .hardware import torch_threads
from .onnx_file import (  # noqa: F401  (re-exported, as above)
    ONNX_METADATA_KEY,
    ONNX_OPSET,
    copy_onnx_with_card,
    onnx_card_text,
    onnx_path_for,
    onnx_readable,
    save_onnx,
)

if TYPE_CHECKING:  # torch is optional on the CPU path: imported where a function needs it
    import torch


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


def copy_with_card(source: PathLike, out: PathLike, card: ModelCard) -> Path:
    """Write ``out`` (it may be ``source``): the model file ``source`` with ``card`` in place of its own and, where
    ``source`` has its ONNX export beside it, that export beside ``out`` with the same card; the weights are not
    exported again, so a card can take figures measured on the exported model itself. ``card`` describes the same
    weights (e.g. ``source``'s card with other metrics); their hash is computed again, and ``load_model`` checks the
    copy as it checks any export.

    Example:
        >>> card = read_card("runs/x/draft.pt")                                                  # doctest: +SKIP
        >>> copy_with_card("runs/x/draft.pt", "out/model.pt",
        ...                dataclasses.replace(card, metrics={"t2w": {"nmse": 0.1}}))             # doctest: +SKIP
        PosixPath('out/model.pt')
    """
    source, out = Path(source), Path(out)
    module, _ = _load(source, "cpu")  # its weights checked against its own card first
    save_model(module, card, out)
    if onnx_path_for(source).is_file():
        copy_onnx_with_card(onnx_path_for(source), onnx_path_for(out), read_card(out))  # the card with its hash
    elif onnx_path_for(out).is_file():
        onnx_path_for(out).unlink()  # an export of other weights must not stay beside the copy
    return out


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
        return ModelCard.from_json(onnx_card_text(path), source=str(path))
    text = _archive_card_text(path)
    if text is None:
        raise ModelError(f"{path} is not a CollaGAN model: it has no embedded {METADATA_FILE}. "
                         "Export it with CollaGANImputeLib.save_model.")
    return ModelCard.from_json(text, source=str(path))


def torch_available() -> bool:
    """Whether torch can be imported (it is optional where an ONNX runtime runs the model); it is not imported."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules
        return False


def _load(path: PathLike, device: Union[str, torch.device]) -> tuple[torch.jit.ScriptModule, ModelCard]:
    import torch

    torch_threads()  # --threads, set before torch was imported
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


def _load_checked(path: Path, device: Union[str, torch.device], card: ModelCard) -> torch.jit.ScriptModule:
    """The module of ``path``, loaded when first used (:attr:`.card.LoadedModel.module`): :func:`_load` checks its
    weights against the card's hash; the card must still be the one read at load time."""
    module, loaded = _load(path, device)
    if loaded.to_json() != card.to_json():
        raise ModelError(f"{path} was replaced after it was loaded (its card differs): load the model again.")
    return module.eval()


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

    The card is read from the archive (no torch); the TorchScript module is loaded, and its weights checked against
    the card's hash, when ``module`` is first used (without torch it stays None and the ONNX file beside it runs).
    The ONNX file is refused when its card differs from the TorchScript file's (another model's export, or an
    older one left behind); with ``onnx_sha256`` its checksum stands for that check, made when it was bundled.
    """
    path = Path(path)
    digest = _check_sha(path, sha256)
    onnx_file: Optional[Path] = path if path.suffix == ".onnx" else onnx_path_for(path)
    loader = None
    if path.suffix != ".onnx":
        _check_file(path)
        verify_archive(path)  # a flipped byte is refused now, before torch is needed
    card = read_card(path)
    if path.suffix != ".onnx" and torch_available():
        loader = functools.partial(_load_checked, path, device, card)
    onnx_digest = digest if path.suffix == ".onnx" else ""
    if onnx_file is not None and onnx_file != path:
        if onnx_sha256 is not None or (onnx_file.is_file() and onnx_readable()):
            onnx_digest = _check_sha(onnx_file, onnx_sha256)  # a listed ONNX file that is missing is refused
            # A listed SHA-256 is of the file whose card was checked against the TorchScript file's when it was
            # bundled: reading it again (import onnx, the whole graph) would check nothing more.
            if onnx_sha256 is None and read_card(onnx_file).to_json() != card.to_json():  # JSON: NaN == NaN
                raise ModelError(f"{onnx_file} does not carry the card of {path.name} (another model's export or an "
                                 "older one): export both again from one checkpoint, or remove the .onnx file.")
        else:
            onnx_file = None
    if loader is None and onnx_file is None:
        raise ModelError(f"{path} is a TorchScript model and torch is not installed: install torch (pip install "
                         "'collagan-impute[torch]') or give a model with its ONNX export beside it.")
    if contrasts is not None:
        unknown = [c for c in contrasts if c not in card.contrasts]
        if unknown:
            raise ModelError(
                f"Model '{card.name}' handles contrasts {card.contrasts}; {unknown} are not among them. "
                "Rename the inputs to the model's contrast names or choose a model trained for them."
            )
    return LoadedModel(card=card, path=path, sha256=digest, onnx=onnx_file, onnx_sha256=onnx_digest, loader=loader)
