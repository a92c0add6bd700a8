"""One imputation as steps (:class:`ImputationSteps`): register, prepare, run the model on the slices, zero
outside the head, label synthetic, uncertainty. A GUI runs one step per event (the Slicer module and the web app,
through :class:`.scene.job.ChunkedImputation`), :func:`.pipeline.impute` all of them in a row.

Example:
    >>> steps = impute_steps({"t1n": t1n, "t2f": t2f}, model, ["t1c"], slices_per_step=2)   # doctest: +SKIP
    >>> for step in steps: print(step.stage, step.done, step.total)                          # doctest: +SKIP
    >>> steps.result.images["t1c"]                       # SimpleITK image, geometry of t1n, labeled synthetic
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .card import LoadedModel, ModelCard
from .case import ImputationResult, PreparedCase, prepare_case
from .errors import Cancelled, InputError
from .inference import CancelFlag, ProgressCallback, impute_slices, is_cancelled, resolve_device
from .provenance import label_synthetic
from .refusals import check_request, refuse_unusable_inputs
from .registration import RigidAlignment, register_rigid
from .runtime import RuntimeUsed, cuda_out_of_memory
from .uncertainty import Member, disagreement, ensemble_members, label_uncertainty, member_prediction

if TYPE_CHECKING:  # torch is optional: the CPU runtimes run the ONNX export without it
    import torch

#: What the CPU fallback says (a warning, and in :attr:`ImputationSteps.notes`).
CPU_FALLBACK = "The GPU ({device}) ran out of memory even one slice at a time; the rest ran on the CPU."


def apply_outside_head(card: ModelCard, mask: np.ndarray, array: np.ndarray) -> np.ndarray:
    """The model's output as it is delivered: with ``outside_head: zero`` (trained inside the head only, so its
    background is untrained), 0 outside the inputs' head mask; else unchanged."""
    if card.outside_head == "zero":
        return np.where(mask, array, 0).astype(array.dtype, copy=False)
    return array


@dataclass(frozen=True)
class Step:
    """What one step did: ``stage`` is ``registered`` (``name``: the input aligned), ``prepared`` (``name``: the
    first of the input set), ``slices`` (``name``: the target; ``done`` of ``total`` slices over every pass) or
    ``imputed`` (``name``: the target, now in the result)."""

    stage: str
    name: str
    done: int = 0
    total: int = 0


class ImputationSteps:
    """One imputation as an iterator of :class:`Step`: a GUI runs one step per event, a script all of them.

    The request is checked when it is made (:func:`.refusals.check_request`, :func:`.refusals.refuse_unusable_inputs`,
    the device), before any step. ``slices_per_step`` slices of one pass go to the model per step (None: a whole
    pass per step); it may be changed between steps. ``cancel`` is checked before each step and between the
    model's batches (:class:`.errors.Cancelled`). When the iterator ends, :attr:`result` holds the
    :class:`.case.ImputationResult`.

    Out of GPU memory, one policy for every caller: :func:`.inference.impute_slices` halves the batch down to one
    slice; if even one slice does not fit, the rest runs on the CPU, with a warning that says so (also in
    :attr:`notes`; :attr:`device` is then the CPU). The result does not depend on where it ran.

    Example:
        >>> steps = impute_steps({"t1n": t1n, "t2f": t2f}, model, ["t1c"], slices_per_step=2)   # doctest: +SKIP
        >>> for step in steps: print(step.stage, step.done, step.total)                          # doctest: +SKIP
        >>> steps.result.images["t1c"]                                                           # doctest: +SKIP
    """

    def __init__(self, images: Mapping[str, sitk.Image], model: LoadedModel, targets: Optional[Sequence[str]] = None,
                 reference: Optional[str] = None, device: Union[str, torch.device, None] = "auto",
                 batch_size: Optional[int] = None, progress: Optional[ProgressCallback] = None,
                 cancel: CancelFlag = None, precision: str = "auto", uncertainty: bool = False,
                 allow_synthetic: bool = False, register: bool = False,
                 slices_per_step: Optional[int] = None, runtime: str = "auto") -> None:
        card = model.card
        if targets is None:
            targets = [c for c in card.contrasts if c not in images]
            if not targets:
                raise InputError(f"Every contrast of the model ({card.contrasts}) is already present: nothing is "
                                 "missing. Name a target explicitly to re-impute one from the others.")
        self.inputs_by_target = check_request(card, list(images), targets)
        refuse_unusable_inputs(images, [c for used in self.inputs_by_target.values() for c in used], allow_synthetic)
        if register and reference is not None and reference not in images:
            raise InputError(f"Reference '{reference}' is not among the inputs {list(images)}.")
        self.images, self.model, self.reference = images, model, reference
        self.device = resolve_device(device)
        self.batch_size, self.precision, self.progress, self.cancel = batch_size, precision, progress, cancel
        self.runtime = runtime
        self.slices_per_step = slices_per_step
        self.register = register
        self.members: dict[str, list[Member]] = {
            t: ensemble_members(used) if uncertainty else [] for t, used in self.inputs_by_target.items()}
        self.alignments: dict[str, RigidAlignment] = {}
        self.cases: dict[tuple[str, ...], PreparedCase] = {}
        self.warnings: list[str] = []  # what preparing the case found (field of view, input check, ...)
        self.notes: list[str] = []  # what the run itself did (the CPU fallback)
        #: Per target, what ran its model passes (runtime, precision, device, file), in order; two after a fallback.
        self.ran: dict[str, list[RuntimeUsed]] = {t: [] for t in self.inputs_by_target}
        self.done = 0  # slices done over every pass of every target
        self.total = 0  # known once the case is prepared
        self.result: Optional[ImputationResult] = None
        self._steps = self._run()

    def __iter__(self) -> Iterator[Step]:
        return self

    def __next__(self) -> Step:
        if self.result is None and is_cancelled(self.cancel):
            raise Cancelled("Imputation cancelled; nothing was written.")
        return next(self._steps)

    @property
    def passes(self) -> int:
        """Passes over the slices: per target, the imputation and one per uncertainty member."""
        return sum(1 + len(m) for m in self.members.values())

    def run(self) -> ImputationResult:
        """Every step in a row; the result."""
        for _ in self:
            pass
        return self.result  # type: ignore[return-value]

    def _run(self) -> Iterator[Step]:
        images, model, card = self.images, self.model, self.model.card
        if self.register:  # one input per step: a GUI tick stays short-ish
            reference = self.reference or next(iter(images))
            for name in [n for n in images if n != reference]:
                self.alignments[name] = register_rigid(images[reference], images[name], name, reference)
                yield Step("registered", name)
        # One mask per input set: a target that is also given (re-imputation) never shapes its own mask.
        for used in self.inputs_by_target.values():
            if tuple(used) not in self.cases:
                case = prepare_case(images, self.reference, mask_from=used, device=self.device, card=card,
                                    alignments=self.alignments or None)
                self.cases[tuple(used)] = case
                self.warnings += [w for w in case.warnings if w not in self.warnings]
                yield Step("prepared", used[0])
        first = self.cases[tuple(next(iter(self.inputs_by_target.values())))]
        n_slices = first.mask.shape[0]
        self.total = n_slices * self.passes
        result = ImputationResult(images={}, case=first, model_name=card.name, inputs=sorted(images), cases={})
        for target, used in self.inputs_by_target.items():
            case = self.cases[tuple(used)]
            arrays = {c: case.arrays[c] for c in used}
            outputs = []
            for member in [None, *self.members[target]]:
                output = np.zeros(case.mask.shape, dtype=np.float32)
                start = 0
                while start < n_slices:
                    stop = min(start + (self.slices_per_step or n_slices), n_slices)
                    chunk = {c: a[start:stop] for c, a in arrays.items()}
                    output[start:stop] = self._predict(chunk, target, member, case.spacing, self.done)
                    self.done += stop - start
                    start = stop
                    yield Step("slices", target, self.done, self.total)
                outputs.append(output)
            array = apply_outside_head(card, case.mask, outputs[0])
            result.images[target] = label_synthetic(case.to_image(array), model, used, target, case,
                                                    self.ran[target])
            result.arrays[target] = array
            result.cases[target] = case
            if self.members[target]:
                u = disagreement(array, outputs[1:], case.mask)
                result.uncertainty[target] = label_uncertainty(case.to_image(u), result.images[target],
                                                               self.members[target])
                result.uncertainty_arrays[target] = u
            if len(result.images) == len(self.inputs_by_target):
                self.result = result
            yield Step("imputed", target, self.done, self.total)

    def _predict(self, chunk: Mapping[str, np.ndarray], target: str, member: Optional[Member],
                 spacing: tuple[float, float], offset: int) -> np.ndarray:
        """One pass (the imputation, or an uncertainty ``member``) on a chunk of slices, with the CPU fallback."""
        def ran(used: RuntimeUsed) -> None:  # each chunk reports; a change (the CPU fallback) adds a second entry
            if used not in self.ran[target]:
                self.ran[target].append(used)

        options = dict(batch_size=self.batch_size, precision=self.precision, runtime=self.runtime, spacing=spacing,
                       cancel=self.cancel, ran=ran,
                       progress=self.progress, progress_offset=offset, progress_total=self.total)
        while True:
            try:
                if member is None:
                    return impute_slices(self.model, chunk, target, device=self.device, **options)
                return member_prediction(self.model, chunk, target, member, device=self.device, **options)
            except cuda_out_of_memory():
                if str(self.device) == "cpu":  # nowhere left to go
                    raise
                import torch  # loaded: it raised

                torch.cuda.empty_cache()
                self.notes.append(CPU_FALLBACK.format(device=self.device))
                warnings.warn(self.notes[-1], RuntimeWarning, stacklevel=2)
                self.device = resolve_device("cpu")


def impute_steps(images: Mapping[str, sitk.Image], model: LoadedModel, targets: Optional[Sequence[str]] = None,
                 **options: Any) -> ImputationSteps:
    """The imputation of :func:`impute` as steps to run one at a time (:class:`ImputationSteps`; ``options``:
    those of :func:`impute`, and ``slices_per_step``).

    Example:
        >>> steps = impute_steps({"t1n": t1n, "t2f": t2f}, model, slices_per_step=4)   # doctest: +SKIP
        >>> while next(steps, None) is not None: app.process_events()                  # doctest: +SKIP
    """
    return ImputationSteps(images, model, targets, **options)
