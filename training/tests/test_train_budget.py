"""``finetune``'s time budget (``--minutes``): the steps are capped when the measured steps would overrun it, the
last step is validated and chosen from, the report and the card say what set the steps; ``--minutes 0`` and an
explicit ``--steps`` below what the budget allows run every step asked; a capped run resumes."""

from __future__ import annotations

import csv
import doctest
from pathlib import Path

import pytest
import torch
from CollaGANImputeLib import load_model

from training.collagan_train import budget
from training.collagan_train.budget import TIMING_STEPS
from training.collagan_train.main import main

from .conftest import FOUR_CONTRASTS, OPENMS_HELD_OUT

#: One more than the steps timed: the first step of a process is not timed.
FIRST_CAP = TIMING_STEPS + 1


def finetune(cohort: Path, out: Path, *options: str) -> None:
    main(["finetune", str(cohort), "--contrasts", ",".join(FOUR_CONTRASTS), "--holdout-cases", OPENMS_HELD_OUT,
          "--threads", "1", "--set", "crop=64", "--set", "batch_size=2", "--set", "val_slices=4", *options,
          "--out", str(out)])


def steps_of(run: Path) -> tuple:
    """(the step of latest.pt, the steps validated)."""
    with open(run / "val.csv", newline="") as handle:
        validated = [int(float(row["step"])) for row in csv.DictReader(handle)]
    return torch.load(run / "latest.pt", map_location="cpu", weights_only=False)["step"], validated


def test_the_budget_module_examples_hold():
    assert doctest.testmod(budget).failed == 0


def test_a_budget_already_spent_caps_the_steps_at_the_timed_ones_and_the_run_resumes(openms_cohort, tmp_path,
                                                                                      capsys):
    out = tmp_path / "model"
    # 0.01 min are spent before training starts: the cap is the steps taken when they have been timed.
    finetune(openms_cohort, out, "--steps", "40", "--minutes", "0.01")
    printed = capsys.readouterr().out
    assert f"time budget 0.01 min: {FIRST_CAP} of 40 steps (" in printed and " s/step measured)" in printed
    done, validated = steps_of(out / "run")
    assert done == FIRST_CAP and validated[-1] == FIRST_CAP  # the last step validated: it could be chosen
    assert (out / "run" / "best.pt").is_file()
    report = (out / "report.md").read_text()
    assert f"- {FIRST_CAP} steps of batch 2" in report and f"steps: time budget 0.01 min: {FIRST_CAP} of 40" in report
    training = load_model(out / "model.pt").card.training
    assert training["steps_done"] == FIRST_CAP and training["steps_set_by"].startswith("time budget 0.01 min")

    # Run again without a budget: the run goes on from its last checkpoint to every step asked.
    finetune(openms_cohort, out, "--steps", str(FIRST_CAP + 3), "--minutes", "0")
    assert "time budget" not in capsys.readouterr().out
    done, validated = steps_of(out / "run")
    assert done == FIRST_CAP + 3 and validated[-1] == FIRST_CAP + 3
    assert validated.count(FIRST_CAP) == 1  # the steps before the resume were not trained again
    assert f"- {FIRST_CAP + 3} steps of batch 2" in (out / "report.md").read_text()
    assert load_model(out / "model.pt").card.training["steps_set_by"] == f"{FIRST_CAP + 3} steps as asked (no time " \
                                                                         "budget)"


def test_no_budget_runs_every_step_asked(openms_cohort, tmp_path, capsys):
    out = tmp_path / "model"
    finetune(openms_cohort, out, "--steps", str(FIRST_CAP + 2), "--minutes", "0")
    assert "time budget" not in capsys.readouterr().out
    assert steps_of(out / "run")[0] == FIRST_CAP + 2


def test_steps_fewer_than_the_budget_allows_are_all_run(openms_finetune: Path):
    # conftest's run: --steps 2 under the default budget of 25 min
    assert steps_of(openms_finetune / "run")[0] == 2
    report = (openms_finetune / "report.md").read_text()
    assert "- 2 steps of batch 2" in report and "steps: 2 steps as asked, within the time budget of 25 min" in report
    assert load_model(openms_finetune / "model.pt").card.training["steps_done"] == 2


def test_a_negative_budget_is_refused_in_one_line(openms_cohort, tmp_path):
    with pytest.raises(SystemExit, match=r"^--minutes -1: give the minutes the whole command may take"):
        finetune(openms_cohort, tmp_path / "x", "--minutes", "-1")
    assert not (tmp_path / "x").exists()
