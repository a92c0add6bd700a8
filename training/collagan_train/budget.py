"""A wall-clock budget for a whole training command (``finetune --minutes``): once the first steps are timed,
the step count is capped so that the remaining steps, their validations and the work after training (scoring
the held-out cases, export, report) end within the budget, counted from the command's start.

Example:
    >>> budget = TimeBudget(started=0.0, minutes=25, after_slices=1200)
    >>> budget.steps_that_fit(now=120.0, done=16, requested=1000, sec_per_step=1.6, val_every=200,
    ...                       sec_per_validation=20.0, sec_per_slice=0.1)
    699
    >>> budget.line(699, 1000, 1.6)
    'time budget 25 min: 699 of 1000 steps (1.60 s/step measured)'

The trainer times its steps with :class:`StepTimes` and applies the budget through :class:`BudgetedSteps`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, List, Optional, Tuple

import numpy as np

if TYPE_CHECKING:
    from .config import TrainConfig
    from .data_loader import SliceData

#: Steps timed before the cap is set, the first (slow: allocations, first data reads) not counted.
TIMING_STEPS = 12
#: The recent steps a mean step time is taken over (the progress, the log, the budget).
RECENT_STEPS = 50
#: The work after training that does not scale with the slices scored: imports, loading models, fitting the voxel
#: regression, reading the training cases' profile, the exports (the network, the blend) and the final card.
AFTER_FIXED_S = 90.0
#: Seconds of scoring per slice inference after training, in units of a validation's seconds per slice (both run
#: slices through a generator and score them; a validation also writes checkpoints): on 240x240x155 cases the
#: scoring took 0.45-0.6 of it; 0.8 leaves a margin.
AFTER_PER_SLICE = 0.8
#: A validation's seconds per slice before one is measured, in units of the generator's time per slice alone.
VALIDATION_PER_SLICE = 1.2


@dataclass
class TimeBudget:
    """The budget of one command: ``minutes`` from ``started`` (``time.time()``); ``after_slices`` slice
    inferences run after training; ``minutes`` 0: no budget. What the trainer did is kept for the report:
    ``steps`` (None while uncapped) of ``requested`` at ``sec_per_step``, and the steps ``done``."""

    started: float
    minutes: float
    after_slices: int = 0
    timing_steps: int = TIMING_STEPS
    requested: int = 0
    steps: Optional[int] = None
    sec_per_step: float = 0.0
    done: int = 0
    said: int = 0

    @property
    def deadline(self) -> float:
        return self.started + 60.0 * self.minutes

    def after_training_s(self, sec_per_slice: float) -> float:
        """Estimated seconds from the end of training to the written report."""
        return AFTER_FIXED_S + AFTER_PER_SLICE * self.after_slices * sec_per_slice

    def steps_that_fit(self, now: float, done: int, requested: int, sec_per_step: float, val_every: int,
                       sec_per_validation: float, sec_per_slice: float) -> int:
        """The largest step count in [done, requested] whose remaining steps and validations (every
        ``val_every`` steps at ``requested``, the same number of them at a cap, plus the last step's) and the work
        after training end by the deadline; ``done`` when none does."""
        left = self.deadline - now - self.after_training_s(sec_per_slice)
        for steps in range(requested, done, -1):
            every = scaled_every(val_every, steps, requested)
            validations = (steps // every - done // every) + (steps % every != 0)
            if (steps - done) * sec_per_step + validations * sec_per_validation <= left:
                return steps
        return done

    def line(self, steps: int, requested: int, sec_per_step: float) -> str:
        """The progress line and the report's note of a cap."""
        return (f"time budget {self.minutes:g} min: {steps} of {requested} steps "
                f"({sec_per_step:.2f} s/step measured)")

    def tell(self, steps: int) -> Optional[str]:
        """The progress line of a new step count: the first, then only those 5 % or more from the last said."""
        if self.said and abs(steps - self.said) < 0.05 * self.said:
            return None
        self.said = steps
        return self.line(steps, self.requested, self.sec_per_step)

    def note(self) -> str:
        """What set the number of steps done, for the report and the card."""
        if self.steps is not None:
            return self.line(self.steps, self.requested, self.sec_per_step)
        if self.minutes <= 0:
            return f"{self.done} steps as asked (no time budget)"
        return f"{self.done} steps as asked, within the time budget of {self.minutes:g} min"


def scaled_every(every: int, steps: int, requested: int) -> int:
    """A cadence (validation, checkpoint) of ``requested`` steps for ``steps`` instead: as many along the way.

    Example:
        >>> scaled_every(200, 640, 1000)
        128
    """
    if steps >= requested:
        return every
    return max(1, round(every * steps / requested))


class StepTimes:
    """The seconds of a process's recent steps, kept in one place for both of their uses: :attr:`mean` over the
    last ``recent`` steps (the progress and the log) and :attr:`timed`, the same steps without the process's
    first (allocations, first data reads), which the budget plans with.

    Example:
        >>> times = StepTimes(recent=2)
        >>> for seconds in (5.0, 1.0, 2.0):
        ...     times.add(seconds)
        >>> times.mean, times.timed
        (1.5, [1.0, 2.0])
    """

    def __init__(self, recent: int = RECENT_STEPS) -> None:
        self.recent = recent
        self.count = 0  # steps added in this process
        self.seconds: List[float] = []  # the last recent + 1, so that timed can leave the first step out

    def add(self, seconds: float) -> None:
        self.count += 1
        self.seconds = (self.seconds + [seconds])[-(self.recent + 1):]

    @property
    def mean(self) -> float:
        """Mean seconds of the last ``recent`` steps."""
        return float(np.mean(self.seconds[-self.recent:]))

    @property
    def timed(self) -> List[float]:
        """The seconds of the last ``recent`` steps but the process's first."""
        first_kept = self.count == len(self.seconds)
        return (self.seconds[1:] if first_kept else self.seconds)[-self.recent:]


class BudgetedSteps:
    """The budget side of :class:`~.solver.Solver`: its step count (and cadences) set to what fits a
    :class:`TimeBudget`; the time per slice comes from its validation (``seconds_per_slice``)."""

    # What it reads and sets on the solver.
    cfg: TrainConfig
    base_cfg: TrainConfig
    val_data: Optional[SliceData]
    n: int
    step: int

    def apply_budget(self, budget: TimeBudget, sec_per_step: float, sec_per_validation: Optional[float],
                     every: Tuple[int, int, int]) -> Optional[str]:
        """Set ``cfg.steps`` to what fits in ``budget`` (at most the requested steps), with the validation and
        checkpoint cadence ``every`` = (requested steps, val_every, ckpt_every) scaled to it; the progress line to
        print, if any. ``sec_per_validation``: the mean validation with its checkpoint, None before the first."""
        requested, val_every, ckpt_every = every
        slices = min(self.cfg.val_slices, len(self.val_data)) if self.val_data is not None else 0
        if sec_per_validation is not None and slices:
            # A validation runs its slices through G and scores them, as the scoring after training does.
            sec_per_slice = sec_per_validation / (slices * self.n)
        else:
            sec_per_slice = self.seconds_per_slice()
            sec_per_validation = VALIDATION_PER_SLICE * slices * self.n * sec_per_slice
        steps = budget.steps_that_fit(time.time(), self.step, requested, sec_per_step, val_every,
                                      sec_per_validation, sec_per_slice)
        if steps == self.cfg.steps:
            return None
        budget.steps, budget.sec_per_step = (steps if steps < requested else None), sec_per_step
        capped = {"steps": steps, "val_every": scaled_every(val_every, steps, requested),
                  "ckpt_every": scaled_every(ckpt_every, steps, requested)}
        # The checkpoints record the capped count: a resume asks the budget again from what was asked.
        self.cfg, self.base_cfg = replace(self.cfg, **capped), replace(self.base_cfg, **capped)
        return budget.tell(steps)


__all__ = ["TimeBudget", "TIMING_STEPS", "VALIDATION_PER_SLICE", "RECENT_STEPS", "StepTimes", "BudgetedSteps",
           "scaled_every"]
