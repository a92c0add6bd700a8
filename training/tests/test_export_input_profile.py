"""Export writes the training data profile (the core's input check) and the pixel spacing into the card."""

from __future__ import annotations

import json

import pytest
from CollaGANImputeLib.case import prepare_case
from CollaGANImputeLib.case_files import read_case
from CollaGANImputeLib.contract import load_model
from CollaGANImputeLib.input_check import check_case

from training.collagan_train.cases import locate_lgg
from training.collagan_train.export import export_checkpoint, training_input_profile
from training.collagan_train.solver import Solver

from .conftest import SAMPLE

pytestmark = pytest.mark.skipif(locate_lgg() is None, reason="needs the LGG data (../shared/data/lgg)")


def test_export_writes_the_training_profile_and_spacing(tiny_cfg, sample_slices, tmp_path):
    split = json.loads((SAMPLE.parents[2] / "training" / "splits" / "lgg_split.json").read_text())
    small = tmp_path / "split.json"  # three training cases keep the test short; the real split has 52
    small.write_text(json.dumps({**split, "train": split["train"][:3]}))
    cfg = tiny_cfg("steps=1", f"split_file={small}", f"cache_dir={tmp_path / 'cache'}")
    solver = Solver(cfg, sample_slices, None, out_dir=str(tmp_path))
    solver.train_step()
    model = load_model(export_checkpoint(str(solver.save("latest.pt")), str(tmp_path / "model.pt")))
    profile = model.card.input_profile
    assert profile["cases"] == 3 and sorted(profile["contrasts"]) == ["t1c", "t1n", "t2f"]
    assert model.card.pixel_spacing == (1.0, 1.0) and len(model.card.weights_sha256) == 64
    assert list((tmp_path / "cache").glob("profile-*.json"))  # cached: a second export reads it
    assert training_input_profile(cfg) == profile
    images = read_case(SAMPLE, ["t1n", "t2f"])
    check = check_case(model.card, prepare_case(images), ["t1n", "t2f"])
    assert check.checked and check.values["t1n"]["histogram_distance"] < 1
