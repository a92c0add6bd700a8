"""Patient-level split, the committed split file, batching/augmentation, and the CLI on LGG data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from training.collagan_train.cases import REPO_ROOT, lgg_folder_or_exit, locate_lgg, make_split

SPLIT = REPO_ROOT / "training" / "splits" / "lgg_split.json"


def test_make_split_is_seeded_and_by_patient():
    cases = [f"case{i:02d}" for i in range(64)]
    a = make_split(cases, 12, seed=3, required_val=["case05"])
    assert a == make_split(cases, 12, seed=3, required_val=["case05"])
    assert "case05" in a["val"] and len(a["val"]) == 12 and len(a["train"]) == 52
    assert not set(a["train"]) & set(a["val"])
    assert make_split(cases, 12, seed=4, required_val=["case05"])["val"] != a["val"]


def test_committed_split_keeps_the_demo_case_in_validation():
    split = json.loads(SPLIT.read_text())
    assert "TCGA-HT-7882" in split["val"]
    assert len(split["train"]) == 52 and len(split["val"]) == 12
    assert not set(split["train"]) & set(split["val"])


def test_the_lgg_folder_is_the_one_given_or_its_complete_subfolder_and_an_empty_one_is_refused(tmp_path):
    (tmp_path / "lgg" / "complete" / "TCGA-XX-0001").mkdir(parents=True)
    assert lgg_folder_or_exit(str(tmp_path / "lgg")) == tmp_path / "lgg" / "complete"
    assert lgg_folder_or_exit(str(tmp_path / "lgg" / "complete")) == tmp_path / "lgg" / "complete"
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty holds no case folders: pass --set data_dir=PATH"):
        lgg_folder_or_exit(str(tmp_path / "empty"), "--set data_dir=PATH")


def test_without_lgg_data_the_error_names_where_it_looked_and_what_to_pass(tmp_path, monkeypatch):
    from training.collagan_train import cases

    monkeypatch.setattr(cases, "REPO_ROOT", tmp_path / "repo")  # no shared/data/lgg beside it
    monkeypatch.setenv(cases.DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit) as raised:
        lgg_folder_or_exit(None, "--data-dir PATH")
    message = str(raised.value)
    assert "LGG data not found" in message and str(tmp_path / "shared/data/lgg") in message
    assert "pass --data-dir PATH" in message and cases.DATA_ENV in message


def test_batch_crop_flip_and_scale(sample_slices):
    gen = torch.Generator().manual_seed(0)
    images, masks, lesions = sample_slices.batch([0, 5], gen, crop=64, flip=True, intensity_scale=0.1)
    assert images.shape == (2, 3, 64, 64) and masks.shape == (2, 64, 64)
    assert masks.float().mean() > 0.2  # crops centred on head voxels
    plain, *_ = sample_slices.batch([0], torch.Generator(), 0, False, 0.0)
    scaled, *_ = sample_slices.batch([0], torch.Generator().manual_seed(1), 0, False, 0.1)
    ratio = scaled[0].sum(dim=(1, 2)) / plain[0].sum(dim=(1, 2))
    assert ((ratio > 0.9 - 1e-4) & (ratio < 1.1 + 1e-4)).all() and not torch.allclose(ratio, torch.ones(3))
    assert np.isclose(float(plain.max()), float(np.asarray(sample_slices.images[0]).max()), rtol=1e-3)


@pytest.mark.skipif(locate_lgg() is None, reason="LGG data (../shared/data/lgg or COLLAGAN_LGG_DIR) absent")
def test_cli_trains_and_resumes_on_lgg(tmp_path):
    base = [sys.executable, "-m", "training.collagan_train.main", "train", "--config",
            "training/collagan_train/configs/tiny.json", "--set", f"out_dir={tmp_path}", "--set", "max_cases=2",
            "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "steps=3", "--set", "val_every=3"]
    subprocess.run(base, cwd=REPO_ROOT, check=True, capture_output=True)
    subprocess.run([*base[:4], "--resume", str(tmp_path / "latest.pt"), "--set", "steps=4"], cwd=REPO_ROOT,
                   check=True, capture_output=True)
    steps = [line.split(",")[0] for line in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4"]
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "curves.png").is_file()


def test_train_on_an_unreadable_case_says_so_in_one_line(tmp_path):
    """A damaged file in the cohort stops training with the core's one-line message, not a traceback."""
    import json

    from training.collagan_train import main

    case = tmp_path / "complete" / "case-1"
    case.mkdir(parents=True)
    for contrast in ("t1n", "t1c", "t2f"):
        (case / f"case-1-{contrast}.nii.gz").write_bytes(b"\x1f\x8b not a volume")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["case-1"], "val": ["case-1"]}))
    with pytest.raises(SystemExit) as exit_info:
        main.main(["train", "--config", "training/collagan_train/configs/tiny.json",
                   "--set", f"data_dir=\"{tmp_path}\"", "--set", f"out_dir=\"{tmp_path / 'run'}\"",
                   "--set", f"split_file=\"{split}\"", "--set", "val_cases_required=[]"])
    message = str(exit_info.value)
    assert message.startswith("error:") and "case-1-t1n.nii.gz" in message and "\n" not in message


def test_targets_are_trained_in_the_units_the_evaluation_scores_them_in():
    """A skull-stripped T1+Gd is bright in a rim (vessels, dura) that the other contrasts' head mask leaves out: in
    the evaluation's units (mask from the inputs) it is ~10 % brighter than in the mask of all four contrasts."""
    from CollaGANImputeLib.case import prepare_case
    from CollaGANImputeLib.case_files import read_case
    from CollaGANImputeLib.metrics import scored_target

    from training.collagan_train.stores import target_scales

    from .conftest import FOUR_CONTRASTS, OPENMS

    folder = OPENMS / "OpenMS-patient07"
    if not folder.is_dir():
        pytest.skip("OpenMS data not found beside the repository")
    images = read_case(folder, FOUR_CONTRASTS)
    case = prepare_case(images)
    scales = target_scales([case.arrays[c] for c in FOUR_CONTRASTS], case.mask)
    for t, target in enumerate(FOUR_CONTRASTS):
        inputs = prepare_case({c: images[c] for c in FOUR_CONTRASTS if c != target})
        real, region = scored_target(inputs.normalize_like_inputs(images[target]), inputs.mask)
        inside = region & (case.arrays[target] > 0)
        evaluated = float(np.median(real[inside] / case.arrays[target][inside]))
        assert scales[t] == pytest.approx(evaluated, abs=0.005), target
    assert scales[FOUR_CONTRASTS.index("t1c")] > 1.05


def test_the_data_modules_examples_hold():
    import doctest

    from training.collagan_train import cases, data_loader, stores

    for module in (cases, stores, data_loader):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__
