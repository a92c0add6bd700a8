"""Shared fixtures: the bundled sample case (in the repository) as training slices, a tiny config, and the two
OpenMS patients beside the repository as a BraTS 2021 download, prepared and fine-tuned with T2w added."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from training.collagan_train.cases import REPO_ROOT
from training.collagan_train.config import load_config
from training.collagan_train.data_loader import SliceData
from training.collagan_train.main import main
from training.collagan_train.stores import prepare_slices

SAMPLE = REPO_ROOT / "Resources" / "SampleData" / "TCGA-HT-7882"
TINY = REPO_ROOT / "training" / "collagan_train" / "configs" / "tiny.json"
OPENMS = REPO_ROOT.parent / "shared" / "data" / "openms"
OPENMS_CASES = ("OpenMS-patient07", "OpenMS-patient19")
OPENMS_HELD_OUT = "OpenMS-patient19"
FOUR_CONTRASTS = ["t1n", "t1c", "t2w", "t2f"]
BRATS2021 = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": "seg"}
OPENMS_SLICES = slice(60, 68)  # eight axial slices through the lateral ventricles and the white-matter lesions


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny models gain nothing from more threads, and the suite stays light on small machines


@pytest.fixture(scope="session")
def sample_slices() -> SliceData:
    """Real slices of the bundled LGG case, normalized through the core like the training data."""
    stack, mask, lesion, scales = prepare_slices(SAMPLE, ["t1n", "t1c", "t2f"], min_foreground=0.05)
    return SliceData(stack.astype(np.float16), mask, [(SAMPLE.name, i) for i in range(len(stack))], lesion,
                     np.tile(scales, (len(stack), 1)))


@pytest.fixture
def tiny_cfg(tmp_path: Path):
    def make(*overrides: str):
        return load_config(str(TINY), [f"out_dir={tmp_path / 'run'}", *overrides])
    return make


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def openms_download(tmp_path_factory) -> Path:
    """The OpenMS patients cropped to a few slices and named as in a BraTS 2021 download, written by SimpleITK."""
    if not OPENMS.is_dir():
        pytest.skip("the OpenMS patients are not beside the repository")
    root = tmp_path_factory.mktemp("download") / "OpenMS_2021"
    for case in OPENMS_CASES:
        folder = root / case
        folder.mkdir(parents=True)
        for contrast, suffix in BRATS2021.items():
            image = sitk.ReadImage(str(OPENMS / case / f"{case}-{contrast}.nii.gz"))
            sitk.WriteImage(image[:, :, OPENMS_SLICES], str(folder / f"{case}_{suffix}.nii.gz"))
    return root


@pytest.fixture(scope="session")
def openms_cohort(openms_download, tmp_path_factory) -> Path:
    """``prepare`` of the download: OUT (named OpenMS) with complete/<case>/ and cohort.json."""
    out = tmp_path_factory.mktemp("prepared") / "OpenMS"
    before = _digest(openms_download)
    main(["prepare", str(openms_download), str(out), "--contrasts", ",".join(FOUR_CONTRASTS)])
    assert _digest(openms_download) == before  # the source is only read
    return out


@pytest.fixture(scope="session")
def openms_finetune(openms_cohort, tmp_path_factory) -> Path:
    """``finetune`` of prepare's output folder with T2w added: two steps on patient07 (64-pixel crops, batch 2),
    patient19 held out; the folder with model.pt and report.md."""
    out = tmp_path_factory.mktemp("finetune") / "model"
    main(["finetune", str(openms_cohort), "--contrasts", ",".join(FOUR_CONTRASTS), "--holdout-cases",
          OPENMS_HELD_OUT, "--steps", "2", "--threads", "1", "--set", "crop=64", "--set", "batch_size=2",
          "--set", "val_slices=4", "--out", str(out)])
    return out
