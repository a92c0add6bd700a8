"""Loading the bundled models; where they are (and the sample case) is :mod:`.resources`' job.

Example:
    >>> [m.name for m in bundled_models()]        # doctest: +SKIP
    >>> model = default_model()                   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .card import LoadedModel
from .resources import (  # noqa: F401  (re-exported: long-standing import path)
    MANIFEST,
    RESOURCES_ENV,
    BundledModel,
    bundled_models,
    default_bundled_model,
    resources_dir,
    sample_case_dir,
)


def default_model(device: str = "cpu", resources: Optional[Path] = None) -> LoadedModel:
    """Load the default bundled model (SHA-256 checked), or explain that none is bundled."""
    return default_bundled_model(resources).load(device=device)
