"""Slice-wise inference of a CollaGAN model on normalized axial slices.

Which runtime runs it (torch's TorchScript, or the ONNX export on ONNX Runtime or OpenVINO) is chosen by
:mod:`.runtime_choice` (``runtime="auto"``); how torch runs it (bf16/fp16 or fp32, channels-last) by
:mod:`.acceleration` (``precision="auto"``). Slices whose inputs are all zero (outside the head) are computed
once, since the model maps identical inputs to identical outputs. Without torch installed the ONNX runtimes run
the model.

Example:
    >>> model = load_model("model.pt")                                        # doctest: +SKIP
    >>> t1c = impute_slices(model, {"t1n": t1n_p99, "t2f": t2f_p99}, "t1c")   # (S, H, W) p99 units
    >>> exact = impute_slices(model, inputs, "t1c", precision="fp32")         # doctest: +SKIP
    >>> onnx = impute_slices(model, inputs, "t1c", runtime="onnxruntime")     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Union

import numpy as np

from .card import LoadedModel, ModelCard, model_input
from .errors import Cancelled, InputError, ModelError
from .geometry import SliceGrid
from .hardware import describe_device, resolve_device  # noqa: F401  (re-exported: callers import them here)
from .runtime import RuntimeUsed, default_batch_size, onnx_runner
from .runtime_choice import choose_runtime

if TYPE_CHECKING:
    import torch

    from .acceleration import InferencePlan

ProgressCallback = Callable[[int, int], None]
CancelFlag = Union[threading.Event, Callable[[], bool], None]


def _is_on(module: torch.nn.Module, device: torch.device) -> bool:
    """Whether ``module``'s weights are on ``device`` already: ``Module.to`` walks every submodule even then
    (4 ms a call for the bundled model, which the Slicer job pays once per 2-slice step)."""
    weight = next(module.parameters(), None)
    if weight is None:
        return False
    return weight.device.type == device.type and (device.index is None or weight.device.index == device.index)


def is_cancelled(cancel: CancelFlag) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _numpy(slices: Mapping[str, Any]) -> bool:
    return all(isinstance(v, np.ndarray) for v in slices.values())


def contrast_channels(slices: Mapping[str, Any], contrasts: list[str], target: str, shape: tuple[int, ...]) -> Any:
    """(B, N, H, W): the contrasts in model order, missing and target slots zero (NumPy in, NumPy out; else torch)."""
    if _numpy(slices):
        zeros = np.zeros(shape, dtype=np.float32)
        return np.stack([slices[c] if (c in slices and c != target) else zeros for c in contrasts], axis=1)
    import torch

    zeros = torch.zeros(shape, dtype=torch.float32)
    return torch.stack([slices[c] if (c in slices and c != target) else zeros for c in contrasts], dim=1)


def slots(slices: Mapping[str, Any], contrasts: list[str], target: str, batch: int) -> tuple[Any, Any]:
    """(available (B, N) bool, target index (B,)) of :func:`.contract.model_input` for these named inputs."""
    given = [c in slices and c != target for c in contrasts]
    if _numpy(slices):
        return (np.broadcast_to(np.array(given), (batch, len(contrasts))),
                np.full((batch,), contrasts.index(target), dtype=np.int64))
    import torch

    return torch.tensor(given).expand(batch, -1), torch.full((batch,), contrasts.index(target), dtype=torch.long)


def build_input(slices: Mapping[str, Any], contrasts: list[str], target: str, shape: tuple[int, ...]) -> Any:
    """The model input (B, 2N, H, W) of named slices on the model's grid: :func:`.contract.model_input`."""
    return model_input(contrast_channels(slices, contrasts, target, shape), *slots(slices, contrasts, target, shape[0]))


def empty_slices(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Boolean (S,): True where every input array is zero on the whole slice."""
    arrays = list(inputs.values())
    nonzero = np.zeros(arrays[0].shape[0], dtype=bool)
    for array in arrays:
        nonzero |= np.asarray(array).reshape(array.shape[0], -1).any(axis=1)
    return ~nonzero


def impute_slices(
    model: LoadedModel,
    inputs: Mapping[str, np.ndarray],
    target: str,
    device: Union[str, torch.device, None] = "auto",
    batch_size: Optional[int] = 8,
    progress: Optional[ProgressCallback] = None,
    cancel: CancelFlag = None,
    progress_offset: int = 0,
    progress_total: Optional[int] = None,
    precision: str = "auto",
    channels_last: Optional[bool] = None,
    spacing: Optional[tuple[float, float]] = None,
    runtime: str = "auto",
    ran: Optional[Callable[[RuntimeUsed], None]] = None,
) -> np.ndarray:
    """Impute ``target`` from ``inputs`` (contrast → (S, H, W) float array in p99 units), slice by slice.

    ``spacing`` is the slices' in-plane pixel spacing in mm (rows, columns; e.g. ``PreparedCase.spacing``):
    slices are brought to the model's pixel grid (:class:`.geometry.SliceGrid`) and back. None: the slices
    are taken to be on the model's spacing already (pad/crop only).

    Returns the (S, H, W) float32 prediction in p99 units. On CUDA out-of-memory the batch is halved and the
    work goes on; ``cancel`` is checked between batches and raises :class:`Cancelled`. ``precision``
    (``auto``, ``fp32``, ``bf16``, ``fp16``) and ``channels_last`` (None = choose) set how the model runs
    (:func:`.acceleration.plan_inference`); ``batch_size=None`` picks a size for the device. Results do not
    depend on the batch size. ``runtime`` (``auto``, ``torch``, ``onnxruntime``, ``openvino``) picks what runs the
    model (:func:`.runtime_choice.choose_runtime`: on the CPU, ``auto`` is the fastest installed one); when every
    slice is done, ``ran`` is told what ran them (:class:`.runtime.RuntimeUsed`, for the outputs' provenance).
    """
    card = model.card
    if target not in card.contrasts:
        raise InputError(f"Target '{target}' is not one of the model's contrasts {card.contrasts}.")
    usable = {c: a for c, a in inputs.items() if c != target}
    unknown = [c for c in usable if c not in card.contrasts]
    if unknown:
        raise InputError(f"Inputs {unknown} are not contrasts of model '{card.name}' ({card.contrasts}).")
    if not usable:
        raise InputError(f"No input contrast left to impute '{target}' from: give at least one other contrast.")
    shapes = {a.shape for a in usable.values()}
    if len(shapes) != 1:
        raise InputError(f"Input arrays differ in shape {shapes}; align them to one grid first.")
    n_slices, height, width = next(iter(shapes))
    total = progress_total if progress_total is not None else n_slices
    name = choose_runtime(model, runtime, device, precision)
    grid = SliceGrid((height, width), tuple(spacing or card.spacing), card.in_plane_size, card.spacing)
    if name == "torch":
        import torch

        from .acceleration import plan_inference

        device = resolve_device(device)
        module = model.module if _is_on(model.module, device) else model.module.to(device)
        plan: Callable = plan_inference(module, device, precision, channels_last)
        out_of_memory: tuple = (torch.cuda.OutOfMemoryError,)
        mode: Any = torch.inference_mode()
    else:
        plan = onnx_runner(model, name, precision)
        device, out_of_memory, mode = "cpu", (), contextlib.nullcontext()
    output = np.zeros((n_slices, height, width), dtype=np.float32)
    # Slices with all-zero inputs give one and the same output: run the first of them only, then copy it.
    is_empty = empty_slices(usable)
    empty = np.flatnonzero(is_empty)
    order = np.concatenate([empty[:1], np.flatnonzero(~is_empty)]).astype(np.int64)
    start = 0
    batch = max(1, int(batch_size if batch_size is not None else default_batch_size(device)))
    with mode:
        while start < len(order):
            if is_cancelled(cancel):
                raise Cancelled("Imputation cancelled; nothing was written.")
            stop = min(start + batch, len(order))
            index = order[start:stop]
            try:
                y = _run_batch(plan, usable, index, card, target, grid)
            except out_of_memory:
                if batch == 1:
                    raise
                import torch

                torch.cuda.empty_cache()
                batch = max(1, batch // 2)  # retry the same slices with a smaller batch
                continue
            output[index] = y
            if start == 0 and len(empty):
                output[empty] = output[empty[0]]
            start = stop
            if progress is not None:
                done = start + max(0, len(empty) - 1)  # the copied empty slices count as done
                progress(progress_offset + done, total)
    if ran is not None:
        ran(RuntimeUsed.of(model, name, plan.precision, device))
    return output


def _run_batch(plan: Union[InferencePlan, Callable], usable: Mapping[str, np.ndarray], index: np.ndarray,
               card: ModelCard, target: str, grid: SliceGrid) -> np.ndarray:
    """Model output (len(index), H, W) for the slices ``index``; a model that fails on its input or gives an
    output of the wrong shape or with NaN/Inf is refused (:class:`ModelError`) before anything is kept."""
    first = int(index[0])
    contiguous = bool(np.all(np.diff(index) == 1))  # a plain slice avoids a gather copy
    torch_plan = not hasattr(plan, "runtime")  # an ONNX runner takes and gives NumPy arrays
    slices = {c: np.ascontiguousarray(a[first:first + len(index)] if contiguous else a[index], dtype=np.float32)
              for c, a in usable.items()}
    if torch_plan:
        import torch

        slices = {c: torch.from_numpy(a) for c, a in slices.items()}
    images = grid.to_model(contrast_channels(slices, card.contrasts, target, (len(index), *grid.shape)))
    # Only the images go through the grid: the target planes are made on the model's field, ones over all of
    # it as in training (padded with the images they were zero around a slice smaller than the field).
    x = model_input(images, *slots(slices, card.contrasts, target, len(index)))
    try:
        y = plan(x)
    except (Cancelled, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # TorchScript raises RuntimeError variants for a model that does not fit its card
        if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda's: impute_slices halves the batch
            raise
        if "can't allocate memory" in str(exc):  # the CPU's allocator: the machine, not the model
            raise MemoryError(str(exc).strip().splitlines()[-1]) from exc
        detail = str(exc).strip().splitlines()
        raise ModelError(
            f"Model '{card.name}' fails on the input its card describes ({tuple(x.shape)}: {card.n_contrasts} "
            f"contrasts + {card.n_contrasts} target planes, {card.in_plane_size[0]}x{card.in_plane_size[1]}): "
            f"{type(exc).__name__}: {detail[-1] if detail else ''}. The file does not match its card; re-export "
            "the model.") from exc
    expected = (x.shape[0], 1, *card.in_plane_size)
    if torch_plan and isinstance(y, torch.Tensor):
        y = y.cpu().numpy()
    if not isinstance(y, np.ndarray) or tuple(y.shape) != expected:
        shape = tuple(y.shape) if hasattr(y, "shape") else type(y).__name__
        raise ModelError(f"Model '{card.name}' returned an output of shape {shape} for a batch of {x.shape[0]} "
                         f"slices; the contract is {expected}. The file does not match its card; re-export it.")
    if not bool(np.isfinite(y).all()):
        raise ModelError(f"Model '{card.name}' returned NaN or infinite values (precision {plan.precision}). The "
                         "model is broken or overflows at this precision: try --precision fp32, or re-export it.")
    return np.asarray(grid.from_model(y)[:, 0], dtype=np.float32)
