"""The Slicer module's imputation cut into short steps, so that a GUI timer (Qt in Slicer, an event loop in a
web app) can run it without freezing, with progress and cancel. Slicer-free: it works on SimpleITK images.

Example:
    >>> job = ChunkedImputation({"t1n": t1n, "t2f": t2f}, model, "t1c")      # doctest: +SKIP
    >>> while not job.step(): print(f"{job.progress:.0%}")  # a timer calls step() once per tick  # doctest: +SKIP
    >>> job.result.images["t1c"]                # labeled synthetic, geometry of t1n     # doctest: +SKIP
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Union

import SimpleITK as sitk

from ..card import LoadedModel
from ..case import ImputationResult
from ..errors import Cancelled
from ..imputation_steps import ImputationSteps
from ..inference import resolve_device
from ..registration import RigidAlignment
from ..runtime import default_batch_size

if TYPE_CHECKING:  # torch is optional: the CPU runtimes run the ONNX export without it
    import torch

#: Slices per step on the CPU: each timer tick stays short (a GPU does a whole batch in milliseconds).
CPU_SLICES_PER_STEP = 2


@dataclass
class ChunkedImputation:
    """One imputation of ``target`` cut into short steps, so that a GUI timer can run it without freezing.

    It runs the core's own steps (:class:`CollaGANImputeLib.imputation_steps.ImputationSteps`, as
    :func:`CollaGANImputeLib.impute` does), so the result is the same: co-registration one input per step
    (``register``), the preparation, then ``slices_per_step`` axial slices per step for the imputation and for
    each member of the uncertainty map (``uncertainty``; ``passes`` in all), and the labelled result. The
    reference grid is the first input's. :meth:`cancel` makes the next step raise :class:`Cancelled`; nothing is
    produced. ``cancel_flag``: an outside ``threading.Event`` (e.g. a web app's Cancel button, set from another
    thread) that cancels too. Out of GPU memory the core's policy applies (smaller batches, then the CPU;
    ``notes`` says so).
    """

    images: Mapping[str, sitk.Image]
    model: LoadedModel
    target: str
    device: Union[str, torch.device, None] = "auto"
    batch_size: Optional[int] = None  # None: chosen for the device (runtime.default_batch_size)
    precision: str = "auto"
    slices_per_step: Optional[int] = None
    reference: Optional[str] = None
    notes: list[str] = field(default_factory=list)
    result: Optional[ImputationResult] = None
    cancel_flag: Optional[threading.Event] = None
    uncertainty: bool = False
    register: bool = False
    runtime: str = "auto"  # what runs the model (runtime_choice.choose_runtime)

    def __post_init__(self) -> None:
        self.device = resolve_device(self.device)
        self._chosen_step = self.slices_per_step is None
        if self.slices_per_step is None:
            self.slices_per_step = (self.batch_size or default_batch_size(self.device)
                                    if str(self.device).startswith("cuda") else CPU_SLICES_PER_STEP)
        self._cancel = self.cancel_flag if self.cancel_flag is not None else threading.Event()
        # A given target is not an input (nor the reference grid); synthetic inputs were refused or allowed
        # with the node's name by the caller (SceneLogic.startImputation).
        self._steps = ImputationSteps({c: image for c, image in self.images.items() if c != self.target},
                                      self.model, [self.target], reference=self.reference, device=self.device,
                                      batch_size=self.batch_size, cancel=self._cancel, precision=self.precision,
                                      uncertainty=self.uncertainty, allow_synthetic=True, register=self.register,
                                      slices_per_step=self.slices_per_step, runtime=self.runtime)
        self._steps.notes = self.notes  # one list: the CPU fallback's note is the job's
        self.inputs = self._steps.inputs_by_target[self.target]
        self.members = self._steps.members[self.target]

    @property
    def warnings(self) -> list[str]:
        """What preparing the case found (field of view, input check, registration)."""
        return self._steps.warnings

    @property
    def alignments(self) -> dict[str, RigidAlignment]:
        return self._steps.alignments

    @property
    def total_slices(self) -> int:
        return self._steps.total // self.passes

    @property
    def passes(self) -> int:
        """Passes over the slices: the imputation, and one per uncertainty member."""
        return self._steps.passes

    @property
    def current_pass(self) -> int:
        """0: the imputation; 1..len(members): the uncertainty map's members."""
        return min(self.passes - 1, self._steps.done // max(1, self.total_slices))

    @property
    def slices_done(self) -> int:
        """Slices done in the current pass."""
        return self._steps.done - self.current_pass * self.total_slices

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def progress(self) -> float:
        """Fraction done in [0, 1]: preparation counts as the first 5 %."""
        if self.done:
            return 1.0
        if not self._steps.total:
            return 0.0
        return 0.05 + 0.95 * self._steps.done / self._steps.total

    def cancel(self) -> None:
        self._cancel.set()

    def step(self) -> bool:
        """Do the next piece of work; True when the result is ready."""
        if self.done:
            return True
        if self._cancel.is_set():
            raise Cancelled("Imputation cancelled; nothing was added to the scene.")
        next(self._steps, None)
        if self._steps.device != self.device:  # the CPU fallback: short CPU steps from now on
            self.device = self._steps.device
            if self._chosen_step:
                self.slices_per_step = self._steps.slices_per_step = CPU_SLICES_PER_STEP
        self.result = self._steps.result
        return self.done

    def run(self, progress: Optional[Callable[[float], None]] = None) -> ImputationResult:
        """All steps in a row (console use); ``progress`` gets the fraction done after each step."""
        while not self.step():
            if progress is not None:
                progress(self.progress)
        if progress is not None:
            progress(1.0)
        return self.result  # type: ignore[return-value]
