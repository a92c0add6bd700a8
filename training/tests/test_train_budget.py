"""``finetune``'s time budget (``--minutes``): the steps are capped when the measured steps would overrun it, the
last step is validated and chosen from, the report and the card say what set the steps; ``--minutes 0`` and an
explicit ``--steps`` below what the budget allows run every step asked; a capped run resumes."""

from __future__ import annotations

import csv
import doctest
from pathlib import Path

import numpy as np
import pytest
import torch
from CollaGANImputeLib import load_model

from training.collagan_train import budget
from training.collagan_train.budget import RECENT_STEPS, TIMING_STEPS, StepTimes, TimeBudget
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


def test_step_times_give_the_recent_mean_and_the_budget_the_same_steps_but_the_first():
    times = StepTimes()
    seconds = [float(k * k % 17 + 1) for k in range(2 * RECENT_STEPS + 5)]
    for k in range(1, len(seconds) + 1):
        times.add(seconds[k - 1])
        assert times.mean == float(np.mean(seconds[:k][-RECENT_STEPS:]))  # the progress and the log
        assert times.timed == seconds[1:k][-RECENT_STEPS:]  # the budget: never the process's first step


def test_the_steps_that_fit_grow_with_the_minutes_left_up_to_those_asked():
    plan = {"done": 20, "requested": 1000, "sec_per_step": 1.0, "val_every": 200, "sec_per_validation": 10.0,
            "sec_per_slice": 0.1}
    fits = [TimeBudget(0.0, minutes, after_slices=600).steps_that_fit(now=60.0, **plan) for minutes in (1, 10, 15, 60)]
    assert fits[0] == 20 and fits[1] < fits[2] < 1000 and fits[3] == 1000
    # what the fitted count leaves: its steps and five validations (each scaled cadence) plus the scoring after
    budget = TimeBudget(0.0, 10, after_slices=600)
    left = 600 - 60 - budget.after_training_s(0.1)
    assert (fits[1] - 20) * 1.0 + 5 * 10.0 <= left < (fits[1] + 1 - 20) * 1.0 + 6 * 10.0


def test_the_progress_says_a_new_step_count_once_it_moves_by_five_percent():
    budget = TimeBudget(0.0, 25, requested=1000, sec_per_step=0.9)
    assert budget.tell(640) == "time budget 25 min: 640 of 1000 steps (0.90 s/step measured)"
    assert budget.tell(620) is None and budget.tell(700) is not None


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
