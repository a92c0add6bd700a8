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

import numpy as np
import SimpleITK as sitk

from ..contract import LoadedModel
from ..errors import Cancelled
from ..inference import impute_slices, resolve_device
from ..pipeline import (
    ImputationResult,
    PreparedCase,
    apply_outside_head,
    check_request,
    label_synthetic,
    prepare_case,
)
from ..registration import RigidAlignment, register_rigid
from ..runtime import cuda_out_of_memory, default_batch_size
from ..uncertainty import disagreement, ensemble_members, label_uncertainty, member_prediction

if TYPE_CHECKING:  # torch is optional: the CPU runtimes run the ONNX export without it
    import torch


@dataclass
class ChunkedImputation:
    """One imputation cut into short steps, so that a GUI timer can run it without freezing.

    Step 1 prepares the case (alignment, mask, p99 normalization: :func:`prepare_case`); each further step
    runs the model on ``slices_per_step`` axial slices with :func:`impute_slices`; the last step assembles the
    image and labels it synthetic exactly as :func:`CollaGANImputeLib.impute` does. :meth:`cancel` makes the
    next step raise :class:`Cancelled`; nothing is produced. A CUDA out-of-memory error that survives the
    core's batch halving switches the remaining slices to the CPU (``notes`` says so). ``cancel_flag``: an
    outside ``threading.Event`` (e.g. a web app's Cancel button, set from another thread) that cancels too.
    ``uncertainty``: after the imputation, one more pass over the slices per member of :mod:`..uncertainty`
    (``passes`` in all), then the uncertainty map in ``result.uncertainty`` as :func:`CollaGANImputeLib.impute`
    makes it.
    ``register``: first co-register each input to the reference (:mod:`..registration`), one input per step,
    as :func:`CollaGANImputeLib.impute` does with ``register=True``.
    """

    images: Mapping[str, sitk.Image]
    model: LoadedModel
    target: str
    device: Union[str, torch.device, None] = "auto"
    batch_size: Optional[int] = None  # None: chosen for the device (acceleration.default_batch_size)
    precision: str = "auto"
    slices_per_step: Optional[int] = None
    reference: Optional[str] = None
    notes: list[str] = field(default_factory=list)
    result: Optional[ImputationResult] = None
    cancel_flag: Optional[threading.Event] = None
    uncertainty: bool = False
    register: bool = False
    runtime: str = "auto"  # what runs the model (runtime.choose_runtime)

    def __post_init__(self) -> None:
        # Model order for the metadata and the mask (as the core's impute does); the caller's order for the
        # reference grid (its first volume).
        self.inputs = check_request(self.model.card, list(self.images), [self.target])[self.target]
        self._prepare_order = [c for c in self.images if c != self.target]
        self.device = resolve_device(self.device)
        if self.slices_per_step is None:
            # Small CPU steps keep each timer tick short; a GPU does a whole batch in milliseconds.
            self.slices_per_step = (self.batch_size or default_batch_size(self.device)
                                    if str(self.device).startswith("cuda") else 2)
        self._cancel = self.cancel_flag if self.cancel_flag is not None else threading.Event()
        self._case: Optional[PreparedCase] = None
        self._output: Optional[np.ndarray] = None
        self._next_slice = 0
        self.warnings: list[str] = []
        self.members = ensemble_members(self.inputs) if self.uncertainty else []
        self._member_outputs: list[np.ndarray] = []
        self._prediction: Optional[np.ndarray] = None
        self.current_pass = 0  # 0: the imputation; 1..len(members): the uncertainty map's members
        reference = self.reference or self._prepare_order[0]
        self._to_register = [c for c in self._prepare_order if c != reference] if self.register else []
        self.alignments: dict[str, RigidAlignment] = {}

    @property
    def total_slices(self) -> int:
        return 0 if self._case is None else self._case.mask.shape[0]

    @property
    def slices_done(self) -> int:
        """Slices done in the current pass."""
        return self._next_slice

    @property
    def passes(self) -> int:
        """Passes over the slices: the imputation, and one per uncertainty member."""
        return 1 + len(self.members)

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def progress(self) -> float:
        """Fraction done in [0, 1]: preparation counts as the first 5 %."""
        if self.done:
            return 1.0
        if self._case is None:
            return 0.0
        done = self.current_pass * self.total_slices + self._next_slice
        return 0.05 + 0.95 * done / max(1, self.total_slices * self.passes)

    def cancel(self) -> None:
        self._cancel.set()

    def step(self) -> bool:
        """Do the next piece of work; True when the result is ready."""
        if self.done:
            return True
        if self._cancel.is_set():
            raise Cancelled("Imputation cancelled; nothing was added to the scene.")
        if len(self.alignments) < len(self._to_register):  # one input per step: a GUI tick stays short-ish
            name = self._to_register[len(self.alignments)]
            reference = self.reference or self._prepare_order[0]
            self.alignments[name] = register_rigid(self.images[reference], self.images[name], name, reference)
            return False
        if self._case is None:
            self._case = prepare_case({c: self.images[c] for c in self._prepare_order}, self.reference,
                                      mask_from=self.inputs, device=self.device, card=self.model.card,
                                      alignments=self.alignments or None)
            self.warnings = list(self._case.warnings)  # field of view, input check (prepare_case with the card)
            self._output = np.zeros(self._case.mask.shape, dtype=np.float32)
            return False
        if self._next_slice < self.total_slices:
            self._run_chunk()
            return False
        if self.current_pass == 0:
            self._prediction = self._output
        else:
            self._member_outputs.append(self._output)
        if self.current_pass < len(self.members):  # the next member's pass over the slices
            self.current_pass += 1
            self._output = np.zeros(self._case.mask.shape, dtype=np.float32)
            self._next_slice = 0
            return False
        self._output = apply_outside_head(self.model.card, self._case.mask, self._prediction)
        image = label_synthetic(self._case.to_image(self._output), self.model, self.inputs, self.target, self._case)
        self.result = ImputationResult(images={self.target: image}, case=self._case, model_name=self.model.card.name,
                                       inputs=sorted(self.inputs), arrays={self.target: self._output},
                                       cases={self.target: self._case})
        if self.members:
            u = disagreement(self._output, self._member_outputs, self._case.mask)
            self.result.uncertainty[self.target] = label_uncertainty(self._case.to_image(u), image, self.members)
            self.result.uncertainty_arrays[self.target] = u
        return True

    def run(self, progress: Optional[Callable[[float], None]] = None) -> ImputationResult:
        """All steps in a row (console use); ``progress`` gets the fraction done after each step."""
        while not self.step():
            if progress is not None:
                progress(self.progress)
        if progress is not None:
            progress(1.0)
        return self.result  # type: ignore[return-value]

    def _run_chunk(self) -> None:
        start = self._next_slice
        stop = min(start + int(self.slices_per_step or 1), self.total_slices)
        chunk = {c: self._case.arrays[c][start:stop] for c in self.inputs}
        try:
            predicted = self._predict(chunk, self.batch_size)
        except cuda_out_of_memory():
            if self.device.type != "cuda":
                raise
            import torch

            torch.cuda.empty_cache()
            self.device = torch.device("cpu")
            self.slices_per_step = 2
            self.notes.append("The GPU ran out of memory even one slice at a time; the rest ran on the CPU.")
            predicted = self._predict(chunk, 1)
        self._output[start:stop] = predicted
        self._next_slice = stop

    def _predict(self, chunk: Mapping[str, np.ndarray], batch_size: Optional[int]) -> np.ndarray:
        """The current pass on a chunk of slices: the imputation itself, or an uncertainty member."""
        options = dict(device=self.device, batch_size=batch_size, precision=self.precision, runtime=self.runtime,
                       spacing=self._case.spacing, cancel=self._cancel)
        if self.current_pass == 0:
            return impute_slices(self.model, chunk, self.target, **options)
        return member_prediction(self.model, chunk, self.target, self.members[self.current_pass - 1], **options)
