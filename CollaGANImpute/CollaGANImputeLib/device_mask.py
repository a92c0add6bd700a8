"""The mask and p99 rule of :mod:`.normalization`, computed with torch on the inference device (a GPU).

On a GPU the model imputes a volume in milliseconds while the CPU rule (ITK's Otsu, hole filling and
components) takes 0.6 s on a 2-core machine. This module gives the same mask and the same p99 scales, bit for
bit (tested against :func:`.normalization.foreground_mask` and :func:`.normalization.p99`):

* Otsu: ITK's histogram (256 bins from the minimum to the maximum plus 1/100 of a bin, float32 bin edges, a
  value in the bin whose lower edge is the largest one not above it) and ITK's threshold (the upper edge of the
  bin that maximises the between-class variance), so ``mean > threshold`` is ``sitk.OtsuThreshold``'s output;
* hole filling and the largest component: connected-component labels by propagation along runs (every run of
  voxels along an axis takes the largest label in it; the axes take turns until nothing changes), every
  component ending with the linear index of its last voxel;
* percentiles: the two order statistics from ``torch.topk``, interpolated as NumPy does.

On the CPU this is slower than :mod:`.normalization` (many passes over the volume); it is meant for CUDA.

Example:
    >>> mask, scales = device_mask_and_scales([t1n, t2f, t1c], torch.device("cuda"), mask_from=[0, 1])  # doctest: +SKIP
    >>> t1n_p99 = t1n / np.float32(scales[0])    # as normalization.normalize(t1n, mask)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import InputError
from .normalization import PERCENTILE, _lerp, checked_scale

if TYPE_CHECKING:  # imported where used: this module runs on CUDA only, and the CPU path needs no torch
    import torch

#: Histogram bins of the Otsu threshold (``sitk.OtsuThreshold(image, 0, 1, 256)`` in :mod:`.normalization`).
OTSU_BINS = 256


def otsu_bin_edges(low: float, high: float, bins: int = OTSU_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bin edges (float32) of ITK's automatic histogram of values in [low, high]."""
    f32 = np.float32
    low32 = f32(low)
    upper = f32(np.float64(high) + (np.float64(high) - np.float64(low)) / bins / 100.0)  # ITK's marginal scale
    interval = f32(upper - low32) / f32(bins)
    steps = np.arange(bins, dtype=f32)
    lower_edges = (low32 + steps * interval).astype(f32)
    upper_edges = (low32 + (steps + 1) * interval).astype(f32)
    upper_edges[-1] = upper
    return lower_edges, upper_edges


def otsu_threshold_from_counts(counts: np.ndarray, lower_edges: np.ndarray, upper_edges: np.ndarray) -> float:
    """Upper edge of the bin that maximises Otsu's between-class variance (the first one on ties)."""
    counts = counts.astype(np.float64)
    centres = ((lower_edges + upper_edges) / np.float32(2)).astype(np.float64)
    total = counts.sum()
    weight_low = np.cumsum(counts)[:-1]
    sum_low = np.cumsum(counts * centres)[:-1]
    sum_all = float((counts * centres).sum())
    mean_all = sum_all / total
    weight_high = total - weight_low
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = sum_low / weight_low
        mean_high = (sum_all - sum_low) / weight_high
        between = weight_low / total * (mean_low - mean_all) ** 2 + weight_high / total * (mean_high - mean_all) ** 2
    between = np.where((weight_low > 0) & (weight_high > 0), between, -1.0)
    return float(upper_edges[int(np.argmax(between))])


def otsu_foreground(volume: torch.Tensor) -> torch.Tensor:
    """``sitk.OtsuThreshold(volume, 0, 1, 256)`` as a boolean tensor (True: above the threshold)."""
    import torch

    low, high = float(volume.min()), float(volume.max())
    lower_edges, upper_edges = otsu_bin_edges(low, high)
    boundaries = torch.from_numpy(lower_edges[1:]).to(volume.device)
    index = torch.bucketize(volume.reshape(-1), boundaries, right=True)  # how many lower edges are <= value
    counts = torch.bincount(index, minlength=OTSU_BINS).cpu().numpy()
    threshold = otsu_threshold_from_counts(counts, lower_edges, upper_edges)
    return volume > torch.tensor(threshold, dtype=volume.dtype, device=volume.device)


class _Runs:
    """The runs of consecutive ``mask`` voxels along one dim, numbered 1, 2, ... in memory order of the volume
    with that dim last (0: outside the mask). They depend on the mask only: computed once per labelling."""

    def __init__(self, mask: torch.Tensor, dim: int) -> None:
        import torch

        self.dim = dim
        inside = mask.movedim(dim, -1).contiguous()
        self.shape = inside.shape
        before = torch.zeros_like(inside)
        before[..., 1:] = inside[..., :-1]
        self.inside = inside.reshape(-1)
        self.run = torch.where(self.inside, torch.cumsum((inside & ~before).reshape(-1), 0), 0)
        self.best = torch.empty(self.run.numel() + 1, dtype=torch.int64, device=mask.device)

    def spread(self, labels: torch.Tensor) -> torch.Tensor:
        """Every run takes the largest label in it (no host sync)."""
        import torch

        values = labels.movedim(self.dim, -1).contiguous().reshape(-1)
        self.best.fill_(-1).scatter_reduce_(0, self.run, values, reduce="amax")
        spread = torch.where(self.inside, self.best[self.run], values)
        return spread.reshape(self.shape).movedim(-1, self.dim)


def label_components(mask: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Labels of the connected components of ``mask`` (3-D bool), face neighbours along ``dims`` only; -1
    outside. A component's label is the linear index of its last voxel, so labels are canonical.

    Each pass gives every run of voxels along one dim its largest label; the passes cycle through ``dims``
    until nothing changes, each cycle followed by pointer jumping (a label is a voxel of the same component,
    whose own label is at least as large): as many cycles as a path inside a component needs turns, not voxels.
    """
    import torch

    runs = [_Runs(mask, dim) for dim in dims]
    labels = torch.where(mask, torch.arange(mask.numel(), device=mask.device).reshape(mask.shape), -1)
    while True:
        updated = labels
        for run in runs:
            updated = run.spread(updated)
        flat = updated.reshape(-1)
        for _ in range(2):
            flat = torch.where(flat >= 0, flat[flat.clamp(min=0)], flat)
        updated = flat.reshape(mask.shape)
        if torch.equal(updated, labels):
            return labels
        labels = updated


def _fill_holes(mask: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """``mask`` with every background component (connected along ``dims``) that does not reach a face of
    ``dims`` filled: :func:`.normalization.fill_holes_3d` / :func:`.normalization.fill_holes_in_plane`.
    (On three LGG heads, labelling the background took 117 cycles in all against 138 for spreading a mark
    from the faces, which cannot use pointer jumping.)"""
    import torch

    labels = label_components(~mask, dims)
    faces = torch.cat([labels.select(dim, end).reshape(-1) for dim in dims for end in (0, -1)])
    outside = torch.isin(labels, faces[faces >= 0].unique())
    return mask | ~(outside | mask)


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """The largest 6-connected component of ``mask`` (the first, by label, when sizes tie)."""
    import torch

    labels = label_components(mask, (0, 1, 2))
    values, counts = labels[mask].unique(return_counts=True)
    return labels == values[int(torch.argmax(counts))]


def upper_percentile(values: torch.Tensor, q: float = PERCENTILE) -> float:
    """``numpy.percentile(values, q)`` (1-D, finite, float32), bit for bit, for a high ``q``."""
    import torch

    count = values.numel()
    position = (count - 1) * (q / 100)
    below = int(np.floor(position))
    above = min(below + 1, count - 1)
    top = torch.topk(values, count - below).values  # sorted, largest first: order statistics below.. count-1
    low, high = top[-1].item(), top[-1 - (above - below)].item()
    dtype = np.float32 if values.dtype == torch.float32 else np.float64
    return float(_lerp(dtype(low), dtype(high), position - below))


def _scale(values: torch.Tensor) -> float:
    """:func:`.normalization.p99` of already selected values, with its errors."""
    return checked_scale(values.numel(), lambda: upper_percentile(values))


def _bounding_box(mask: torch.Tensor, margin: int) -> tuple[slice, ...]:
    import torch

    box = []
    for dim in range(3):
        hits = torch.nonzero(mask.any(dim=[d for d in range(3) if d != dim])).reshape(-1)
        first, last = int(hits[0]), int(hits[-1])
        box.append(slice(max(first - margin, 0), min(last + margin + 1, mask.shape[dim])))
    return tuple(box)


def device_foreground_mask(volumes: Sequence[torch.Tensor]) -> torch.Tensor:
    """:func:`.normalization.foreground_mask` of float32 volumes (z, y, x) on their device."""
    import torch

    if len(volumes) == 0:
        raise InputError("At least one input contrast is needed to compute the foreground mask.")
    mean = torch.zeros_like(volumes[0])
    for volume in volumes:
        mean += volume / torch.tensor(_scale(volume[volume != 0]), dtype=torch.float32, device=volume.device)
    mean /= len(volumes)
    otsu = otsu_foreground(mean)
    if not otsu.any():
        raise InputError("The foreground mask is empty: the inputs contain no recognisable head.")
    box = _bounding_box(otsu, margin=1)  # as on the CPU: the fills and components are the same on the box
    filled = _fill_holes(otsu[box], (0, 1, 2))
    mask = torch.zeros_like(otsu)
    mask[box] = _fill_holes(largest_component(filled), (1, 2))
    return mask


def device_mask_and_scales(arrays: Sequence[np.ndarray], device: torch.device, mask_from: Sequence[int]
                           ) -> tuple[np.ndarray, list[float]]:
    """The mask from ``arrays[i] for i in mask_from`` and each array's p99 inside it, computed on ``device``."""
    import torch

    volumes = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device) for a in arrays]
    mask = device_foreground_mask([volumes[i] for i in mask_from])
    scales = [_scale(volume[mask]) for volume in volumes]
    return mask.cpu().numpy(), scales
