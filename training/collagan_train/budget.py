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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

#: Steps timed before the cap is set, the first (slow: allocations, first data reads) not counted.
TIMING_STEPS = 12
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


__all__ = ["TimeBudget", "TIMING_STEPS", "VALIDATION_PER_SLICE", "scaled_every"]
