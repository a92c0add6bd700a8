"""CollaGANImputeLib: impute a missing MR contrast with a CollaGAN TorchScript model (no Slicer needed).

Example:
    >>> from CollaGANImputeLib import default_model, impute_case
    >>> model = default_model()                                              # doctest: +SKIP
    >>> impute_case("Resources/SampleData/TCGA-HT-7882", model, out_dir="out")  # doctest: +SKIP

The public names are loaded on first use (PEP 562), so ``import CollaGANImputeLib`` and ``collagan-impute
--help`` do not pay for torch, SimpleITK or the evaluation code until a command needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

#: public name -> submodule that defines it
_EXPORTS = {
    "LoadedModel": "card", "ModelCard": "card", "load_model": "contract", "read_card": "contract",
    "save_model": "contract",
    "Cancelled": "errors", "CollaGANError": "errors", "GeometryWarning": "errors", "InputError": "errors",
    "ModelError": "errors", "NoBundledModelError": "errors", "NoSampleCaseError": "errors",
    "bundled_models": "resources", "default_model": "models", "sample_case_dir": "resources",
    "ImputationResult": "case", "prepare_case": "case", "read_case": "case_files",
    "ImputationSteps": "imputation_steps", "impute": "pipeline", "impute_case": "pipeline",
    "impute_steps": "imputation_steps",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ below imports on first use
    from .card import LoadedModel, ModelCard  # noqa: F401
    from .case import ImputationResult, prepare_case  # noqa: F401
    from .case_files import read_case  # noqa: F401
    from .contract import load_model, read_card, save_model  # noqa: F401
    from .errors import (  # noqa: F401
        Cancelled,
        CollaGANError,
        GeometryWarning,
        InputError,
        ModelError,
        NoBundledModelError,
        NoSampleCaseError,
    )
    from .imputation_steps import ImputationSteps, impute_steps  # noqa: F401
    from .models import default_model  # noqa: F401
    from .pipeline import impute, impute_case  # noqa: F401
    from .resources import bundled_models, sample_case_dir  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
