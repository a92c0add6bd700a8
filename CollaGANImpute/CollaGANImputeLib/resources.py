"""The bundled resources, found in one place: the ``Resources`` folder, the models its manifest lists (and which
is the default), and the sample case. Torch-free, so the Slicer module and ``collagan-impute --help`` can ask.

The manifest (``Resources/Models/models.json``) names each model file with its SHA-256, and its ONNX
export (``onnx``, ``onnx_sha256``) where one is bundled; loading a bundled model checks both
(:meth:`BundledModel.load`, :func:`.models.default_model`).

Example:
    >>> [m.name for m in bundled_models()]        # doctest: +SKIP
    ['collagan-lgg-v3']
    >>> sample_case_dir().name                     # doctest: +SKIP
    'TCGA-HT-7882'
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .errors import ModelError, NoBundledModelError, NoSampleCaseError

if TYPE_CHECKING:
    from .card import LoadedModel

MANIFEST = "models.json"
RESOURCES_ENV = "COLLAGAN_RESOURCES"
#: The bundled sample case (one TCGA-LGG patient, CC BY-NC-SA 4.0: see Resources/SampleData/NOTICE).
SAMPLE_CASE = "TCGA-HT-7882"


def resources_dir() -> Path:
    """The ``Resources`` folder: $COLLAGAN_RESOURCES, the source tree's, a wheel's or the Slicer module's."""
    if os.environ.get(RESOURCES_ENV):
        return Path(os.environ[RESOURCES_ENV])
    here = Path(__file__).resolve().parent
    candidates = [here.parents[1] / "Resources",  # source tree / editable install: <repo>/Resources
                  here / "Resources",              # wheel: CollaGANImputeLib/Resources (pyproject package-dir)
                  here.parent / "Resources"]       # Slicer install: qt-scripted-modules/Resources
    for candidate in candidates:
        if (candidate / "Models").is_dir() or (candidate / "SampleData").is_dir():
            return candidate
    return candidates[0]


@dataclass(frozen=True)
class BundledModel:
    """One manifest entry: the model file, its SHA-256, its card page and whether it is the default."""

    name: str
    path: Path
    sha256: str
    card: Optional[Path]
    default: bool
    onnx_sha256: Optional[str] = None  # the ONNX export beside ``path`` (same stem), where one is bundled

    def load(self, device: str = "cpu") -> LoadedModel:
        from .contract import load_model  # torch is paid for only when a model is loaded

        return load_model(self.path, sha256=self.sha256, device=device, onnx_sha256=self.onnx_sha256)


def bundled_models(resources: Optional[Path] = None) -> list[BundledModel]:
    """Models listed in the manifest, default first; an empty list when none is bundled."""
    folder = (resources or resources_dir()) / "Models"
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return []
    try:
        data = json.loads(manifest.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{manifest} is not valid JSON ({exc}); reinstall CollaGANImpute.") from exc
    default = data.get("default")
    models = [
        BundledModel(name=entry["name"], path=folder / entry["file"], sha256=entry["sha256"],
                     card=folder / entry["card"] if entry.get("card") else None,
                     default=entry["name"] == default, onnx_sha256=_onnx_sha(folder, entry))
        for entry in data.get("models", [])
    ]
    return sorted(models, key=lambda m: not m.default)


def _onnx_sha(folder: Path, entry: dict) -> Optional[str]:
    """The listed ONNX file's SHA-256; the file must lie beside the TorchScript one under the same stem."""
    if not entry.get("onnx"):
        return None
    if folder / entry["onnx"] != (folder / entry["file"]).with_suffix(".onnx"):
        raise ModelError(f"{folder / MANIFEST}: the ONNX file of '{entry['name']}' must be named like its model file "
                         f"({Path(entry['file']).with_suffix('.onnx')}); reinstall CollaGANImpute.")
    return entry["onnx_sha256"]


def default_bundled_model(resources: Optional[Path] = None) -> BundledModel:
    """The manifest's default model (not loaded), or explain that none is bundled."""
    models = bundled_models(resources)
    if not models:
        raise NoBundledModelError(
            "No trained model is bundled with this installation yet (Resources/Models/models.json is absent). "
            "Pass --model PATH with a model exported by training/, or install a release that bundles one."
        )
    return models[0]


def sample_case_dir(resources: Optional[Path] = None) -> Path:
    """The bundled sample case folder: :data:`SAMPLE_CASE`, else the first case under ``Resources/SampleData``."""
    folder = (resources or resources_dir()) / "SampleData"
    if (folder / SAMPLE_CASE).is_dir():
        return folder / SAMPLE_CASE
    cases = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not cases:
        raise NoSampleCaseError(f"No sample case found under {folder}: reinstall CollaGANImpute (or the CollaGAN "
                                f"Slicer extension), or point ${RESOURCES_ENV} at a Resources folder that has "
                                "SampleData/<case>.")
    return cases[0]
