"""Shared by the tests marked ``slicer_core``: 3D Slicer's own libraries (PyPI ``slicer-core``: MRML, Slicer's
logic and readers, the real ``slicer/util.py``), a fresh scene per test and small real cases on disk.

Locally the tests skip with a message when slicer-core is not installed; in CI (``CI`` set) a missing
slicer-core is an error, so none of them is skipped there.

Example:
    >>> slicer = require_slicer_core()                                  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import SimpleITK as sitk

SLICER_CORE_VERSION = "5.11.0.6"  # the version trame-slicer 2.0 needs; pinned in pyproject's test extra


def require_slicer_core():
    """``import slicer`` from slicer-core; skip (locally) or fail (CI) without it."""
    try:
        import slicer
        import slicer.util  # noqa: F401 - the real slicer/util.py

        slicer.vtkMRMLScene  # noqa: B018 - MRML is there, not some other package named 'slicer'
    except (ImportError, AttributeError) as error:
        if os.environ.get("CI"):
            raise RuntimeError(f"slicer-core is needed in CI: pip install 'slicer-core=={SLICER_CORE_VERSION}' "
                               f"(it is in the test extra): {error}") from error
        pytest.skip(f"slicer-core not installed (pip install 'slicer-core=={SLICER_CORE_VERSION}')",
                    allow_module_level=True)
    return slicer


def crop_case(source: Path, target: Path, slices: slice, contrasts=("t1n", "t1c", "t2f", "seg")) -> Path:
    """A few axial slices of a BraTS-named case written as NIfTI (geometry kept: the origin moves with them)."""
    target.mkdir(parents=True, exist_ok=True)
    for contrast in contrasts:
        image = sitk.ReadImage(str(source / f"{source.name}-{contrast}.nii.gz"))
        sitk.WriteImage(image[:, :, slices], str(target / f"{target.name}-{contrast}.nii.gz"))
    return target

