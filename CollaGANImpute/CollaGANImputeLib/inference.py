"""Slice-wise inference of a CollaGAN TorchScript model on normalized axial slices.

Example:
    >>> model = load_model("model.pt")                                        # doctest: +SKIP
    >>> t1c = impute_slices(model, {"t1n": t1n_p99, "t2f": t2f_p99}, "t1c")   # (S, H, W) p99 units
"""

from __future__ import annotations

import threading
from typing import Callable, Mapping, Optional, Union

import numpy as np
import torch

from .contract import LoadedModel
from .errors import Cancelled, InputError
from .geometry import pad_or_crop, undo_pad_or_crop

ProgressCallback = Callable[[int, int], None]
CancelFlag = Union[threading.Event, Callable[[], bool], None]


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``auto`` picks CUDA when a GPU is usable, else CPU; ``cuda`` without a GPU is refused clearly."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no CUDA GPU is usable here (is the CUDA build of torch "
                         "installed and the driver loaded?). Use device 'cpu' or 'auto'.")
    return device


def describe_device(device: torch.device) -> str:
    """What will run the model, for the user: GPU name and memory, or the CPU thread count."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"CUDA GPU {props.name} ({props.total_memory / 2**30:.1f} GiB)"
    return f"CPU ({torch.get_num_threads()} threads)"


def is_cancelled(cancel: CancelFlag) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def build_input(slices: Mapping[str, torch.Tensor], contrasts: list[str], target: str,
                shape: tuple[int, ...]) -> torch.Tensor:
    """The model input (B, 2N, H, W): contrasts in model order (missing/target = 0), then the one-hot mask."""
    zeros = torch.zeros(shape, dtype=torch.float32)
    channels = [slices[c] if (c in slices and c != target) else zeros for c in contrasts]
    channels += [torch.full(shape, float(c == target)) for c in contrasts]
    return torch.stack(channels, dim=1)


def impute_slices(
    model: LoadedModel,
    inputs: Mapping[str, np.ndarray],
    target: str,
    device: Union[str, torch.device, None] = "auto",
    batch_size: int = 8,
    progress: Optional[ProgressCallback] = None,
    cancel: CancelFlag = None,
    progress_offset: int = 0,
    progress_total: Optional[int] = None,
) -> np.ndarray:
    """Impute ``target`` from ``inputs`` (contrast → (S, H, W) float array in p99 units), slice by slice.

    Returns the (S, H, W) float32 prediction in p99 units. On CUDA out-of-memory the batch is halved and the
    work goes on; ``cancel`` is checked between batches and raises :class:`Cancelled`.
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
    device = resolve_device(device)
    module = model.module.to(device)
    output = np.zeros((n_slices, height, width), dtype=np.float32)
    start = 0
    batch = max(1, int(batch_size))
    with torch.inference_mode():
        while start < n_slices:
            if is_cancelled(cancel):
                raise Cancelled("Imputation cancelled; nothing was written.")
            stop = min(start + batch, n_slices)
            slices = {c: torch.from_numpy(np.ascontiguousarray(a[start:stop], dtype=np.float32))
                      for c, a in usable.items()}
            x = build_input(slices, card.contrasts, target, (stop - start, height, width))
            x = pad_or_crop(x, card.in_plane_size).to(device)
            try:
                y = module(x)
            except torch.cuda.OutOfMemoryError:
                if batch == 1:
                    raise
                torch.cuda.empty_cache()
                batch = max(1, batch // 2)  # retry the same slices with a smaller batch
                continue
            y = undo_pad_or_crop(y.float().cpu(), (height, width))
            output[start:stop] = y[:, 0].numpy()
            start = stop
            if progress is not None:
                progress(progress_offset + start, total)
    return output
