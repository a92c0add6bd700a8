"""Shared fixtures: a small real TorchScript generator exported in the test, real NIfTI cases on disk."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CollaGANImputeLib import ModelCard, save_model
from CollaGANImputeLib.resources import resources_dir
from core_fixtures import CONTRASTS, TinyGenerator, head_phantom, make_image


@pytest.fixture(scope="session", autouse=True)
def _runtime_cache(tmp_path_factory):
    """The runtime choice (runtime="auto") is measured into a folder of the test run, not the user's cache."""
    previous = os.environ.get("COLLAGAN_CACHE_DIR")
    os.environ["COLLAGAN_CACHE_DIR"] = str(tmp_path_factory.mktemp("runtime-cache"))
    yield
    if previous is None:
        os.environ.pop("COLLAGAN_CACHE_DIR", None)
    else:
        os.environ["COLLAGAN_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    save_model(TinyGenerator(), ModelCard(name="tiny-test", contrasts=CONTRASTS, in_plane_size=(256, 256),
                                          licence="test only"), path)
    return path


@pytest.fixture(scope="session")
def sample_case() -> Path:
    return resources_dir() / "SampleData" / "TCGA-HT-7882"


@pytest.fixture
def phantom_case(tmp_path) -> Path:
    """A BraTS-named case folder of phantom volumes (with a lesion mask) written as real NIfTI files."""
    folder = tmp_path / "case-001"
    folder.mkdir()
    for seed, contrast in enumerate(CONTRASTS):
        image = make_image(head_phantom(seed=seed, scale=100 + 50 * seed))
        sitk.WriteImage(image, str(folder / f"case-001-{contrast}.nii.gz"))
    lesion = (head_phantom(seed=9) > 0.85 * 200).astype(np.uint8)
    sitk.WriteImage(make_image(lesion), str(folder / "case-001-seg.nii.gz"))
    return folder


@pytest.fixture
def copied_sample(tmp_path, sample_case) -> Path:
    target = tmp_path / sample_case.name
    shutil.copytree(sample_case, target)
    return target
