"""The Python packages the core needs at run time, in one place: the Slicer module installs the missing ones,
and a test checks that they agree with ``pyproject.toml``'s ``[project] dependencies``.

Example:
    >>> RUNTIME_REQUIREMENTS["skimage"]
    'scikit-image>=0.20'
    >>> missing_requirements()                     # doctest: +SKIP
    []
"""

from __future__ import annotations

import importlib.util

#: Import name -> pip requirement. In Slicer, SimpleITK and numpy import already; torch preferably comes from the
#: PyTorch extension, which picks the CUDA build matching the driver.
RUNTIME_REQUIREMENTS = {
    "torch": "torch>=2.0",
    "SimpleITK": "SimpleITK>=2.2",
    "numpy": "numpy>=1.22",
    "skimage": "scikit-image>=0.20",
    "scipy": "scipy>=1.8",
    "matplotlib": "matplotlib>=3.5",
    "tqdm": "tqdm>=4.60",
}


def missing_requirements() -> list[str]:
    """The pip requirements whose package cannot be imported here (checked without importing it)."""
    return [req for module, req in RUNTIME_REQUIREMENTS.items() if importlib.util.find_spec(module) is None]
