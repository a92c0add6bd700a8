"""Shared fixtures: the bundled sample case (in the repository) as training slices, and a tiny config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.collagan_train.config import load_config
from training.collagan_train.data_loader import REPO_ROOT, SliceData, prepare_slices

SAMPLE = REPO_ROOT / "Resources" / "SampleData" / "TCGA-HT-7882"
TINY = REPO_ROOT / "training" / "collagan_train" / "configs" / "tiny.json"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny models gain nothing from more threads, and the suite stays light on small machines


@pytest.fixture(scope="session")
def sample_slices() -> SliceData:
    """Real slices of the bundled LGG case, normalized through the core like the training data."""
    stack, mask, lesion = prepare_slices(SAMPLE, ["t1n", "t1c", "t2f"], min_foreground=0.05)
    return SliceData(stack.astype(np.float16), mask, [(SAMPLE.name, i) for i in range(len(stack))], lesion)


@pytest.fixture
def tiny_cfg(tmp_path: Path):
    def make(*overrides: str):
        return load_config(str(TINY), [f"out_dir={tmp_path / 'run'}", *overrides])
    return make
