"""Training slices: the slices of a list of cases, batched and augmented for the training steps.

:class:`SliceData` holds the slices of the per-case stores (:mod:`.stores`, read on demand) with their head and
lesion masks and target scales; :func:`batch_plan` decides which slices each step and rank take, and
:func:`training_batches` has DataLoader workers prepare the batches ahead of the step, the same batches whatever
their number. :func:`load_data` gives the training slices and those checkpoints are chosen on, split by patient
(:mod:`.cases`).

Example:
    >>> train, choice, split = load_data(cfg)                                       # doctest: +SKIP
    >>> images, masks, lesions = train.batch([0, 1], torch.Generator(), crop=128)   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .cases import lgg_folder_or_exit, load_or_make_split, select_cases
from .config import TrainConfig
from .stores import HEAD, LESION, CaseSlices, case_store

#: The slices of a :class:`SliceData`: in memory, or read on demand from the per-case stores.
ArrayLike = Union[np.ndarray, CaseSlices]


@dataclass(frozen=True)
class BrainOnlyCopies:
    """Brain-only copies of a :class:`SliceData`'s slices (``augment.brain_only_volume``): ``images`` (S, N, H, W)
    float16, the brain ``masks`` (S, H, W) and ``ok`` (S,), the slices whose brain mask worked (the others have none).
    """

    images: np.ndarray
    masks: np.ndarray
    ok: np.ndarray


class SliceData:
    """Slices of a list of cases: ``images`` (S, N, H, W) float16, ``masks`` and ``lesions`` (S, H, W) bool
    (head mask, lesion mask), ``index`` (case, slice) per slice, ``target_scale`` (S, N) float32: the factor that
    brings a contrast of the slice to the units it is scored in as a target (:func:`.stores.target_scales`; ones
    if not given). Built from the per-case stores, the arrays are :class:`.stores.CaseSlices` (read on demand);
    arrays in memory work the same."""

    def __init__(self, images: ArrayLike, masks: ArrayLike, index: List[Tuple[str, int]],
                 lesions: Optional[ArrayLike] = None, target_scale: Optional[np.ndarray] = None) -> None:
        self.images, self.masks, self.index = images, masks, index
        self.lesions = lesions if lesions is not None else np.zeros(masks.shape, dtype=bool)
        self.target_scale = (np.ones(images.shape[:2], dtype=np.float32) if target_scale is None
                             else np.asarray(target_scale, dtype=np.float32).reshape(images.shape[:2]))
        self.brain: Optional[BrainOnlyCopies] = None  # see add_brain_only_copies

    def add_brain_only_copies(self) -> int:
        """Compute every case's brain-only copy (``augment.brain_only_volume``, in memory as float16) so that
        ``batch(brain_p=...)`` can swap it in; returns the number of slices that have one."""
        from .augment import brain_only_volume

        images = np.zeros(self.images.shape, dtype=np.float16)
        brains = np.zeros(self.masks.shape, dtype=bool)
        ok = np.zeros(len(self), dtype=bool)
        names = np.asarray([case for case, _ in self.index])
        for case in dict.fromkeys(names.tolist()):
            rows = np.flatnonzero(names == case)
            copy, brain, good = brain_only_volume(np.asarray(self.images[rows], dtype=np.float32),
                                                  np.asarray(self.masks[rows], dtype=bool))
            images[rows], brains[rows], ok[rows] = copy.astype(np.float16), brain, good
        self.brain = BrainOnlyCopies(images, brains, ok)
        return int(ok.sum())

    def __len__(self) -> int:
        return self.images.shape[0]

    @classmethod
    def build(cls, cases: Sequence[str], cfg: TrainConfig, folder: Path) -> SliceData:
        """The slices of these cases from their stores (each built once, through the core, when absent)."""
        stores = [case_store(folder / case, cfg) for case in sorted(cases)]
        images = CaseSlices([s[0] for s in stores])
        counts = np.bincount(images.rows[:, 0], minlength=len(stores)) if len(images) else [0] * len(stores)
        index = [(case, i) for case, count in zip(sorted(cases), counts) for i in range(int(count))]
        scales = [np.load(s[2]) for s in stores]
        per_slice = (np.concatenate([np.tile(f, (int(c), 1)) for f, c in zip(scales, counts)])
                     if len(images) else None)
        return cls(images, CaseSlices([s[1] for s in stores], HEAD), index, CaseSlices([s[1] for s in stores], LESION),
                   per_slice)

    def subset(self, cases: Sequence[str]) -> SliceData:
        """The slices of ``cases`` only: e.g. training patients set aside for checkpoint choice."""
        wanted = set(cases)
        keep = [i for i, (case, _) in enumerate(self.index) if case in wanted]

        def part(array: ArrayLike) -> ArrayLike:
            return array.take(keep) if isinstance(array, CaseSlices) else np.asarray(array[keep])
        return SliceData(part(self.images), part(self.masks), [self.index[i] for i in keep], part(self.lesions),
                         self.target_scale[keep])

    def batch(self, indices: Sequence[int], gen: torch.Generator, crop: int = 0, flip: bool = False,
              intensity_scale: float = 0.0, brain_p: float = 0.0
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Slices ``indices`` as float32 (B, N, h, w), head masks and lesion masks (B, h, w), augmented with
        ``gen`` only. ``brain_p``: each slice that has a brain-only copy is replaced by it with this probability
        (its mask is then the brain)."""
        use_brain = [False] * len(indices)
        if brain_p > 0 and self.brain is not None:
            draws = torch.rand(len(indices), generator=gen) < brain_p
            use_brain = [bool(d) and bool(self.brain.ok[i]) for d, i in zip(draws, indices)]
        rows = list(indices)  # one read per array (per store file), not one per slice
        images = np.asarray(self.images[rows], dtype=np.float32)
        masks = np.asarray(self.masks[rows], dtype=bool)
        for j, (i, brain) in enumerate(zip(rows, use_brain)):
            if brain:
                images[j], masks[j] = self.brain.images[i], self.brain.masks[i]
        lesions = torch.from_numpy(np.asarray(self.lesions[rows], dtype=bool)) & torch.from_numpy(masks)
        images, masks = torch.from_numpy(images), torch.from_numpy(masks)
        if crop:
            out_i, out_m, out_l = [], [], []
            for img, msk, les in zip(images, masks, lesions):
                # Centre the crop on a random head voxel so crops rarely show only background.
                ys, xs = torch.nonzero(msk, as_tuple=True)
                pick = int(torch.randint(len(ys), (1,), generator=gen))
                size = img.shape[-1]
                top = min(max(int(ys[pick]) - crop // 2, 0), size - crop)
                left = min(max(int(xs[pick]) - crop // 2, 0), size - crop)
                out_i.append(img[:, top:top + crop, left:left + crop])
                out_m.append(msk[top:top + crop, left:left + crop])
                out_l.append(les[top:top + crop, left:left + crop])
            images, masks, lesions = torch.stack(out_i), torch.stack(out_m), torch.stack(out_l)
        if flip:
            flips = torch.rand(len(indices), generator=gen) < 0.5
            images = torch.where(flips[:, None, None, None], images.flip(-1), images)
            masks = torch.where(flips[:, None, None], masks.flip(-1), masks)
            lesions = torch.where(flips[:, None, None], lesions.flip(-1), lesions)
        if intensity_scale:
            scale = 1 + (torch.rand(images.shape[:2], generator=gen) * 2 - 1) * intensity_scale
            images = images * scale[:, :, None, None]
        return images.contiguous(), masks.contiguous(), lesions.contiguous()


def epoch_order(length: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's slice order; it depends only on (seed, epoch), so a resume needs no state."""
    return torch.randperm(length, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


def batch_plan(length: int, batch: int, seed: int, epoch: int = 0, cursor: int = 0, rank: int = 0,
               world: int = 1) -> Iterator[Tuple[int, int, List[int]]]:
    """(epoch, cursor after it, slice indices) of this rank's coming batches from position (epoch, cursor).

    Each step takes the next ``batch x world`` slices of :func:`epoch_order`, rank ``r`` its ``r``-th block of
    ``batch``; ``cursor`` counts the slices all ranks have taken, so a resume at another world size goes on from
    the same place. A new epoch starts when the rest of one is shorter than a step.

    Example:
        >>> plan = batch_plan(5, 2, seed=0)
        >>> [next(plan)[:2] for _ in range(3)]
        [(0, 2), (0, 4), (1, 2)]
    """
    span = batch * world
    order = epoch_order(length, seed, epoch)
    while True:
        if cursor + span > len(order):
            epoch, cursor = epoch + 1, 0
            order = epoch_order(length, seed, epoch)
        start = cursor + rank * batch
        picked = order[start:start + batch].tolist()
        cursor += span
        yield epoch, cursor, picked


class TrainingBatches(torch.utils.data.IterableDataset):
    """The batches of consecutive training steps from a position, for a DataLoader with workers.

    Batch ``k`` (step ``step + k``) is drawn and augmented with its own generator, seeded by (seed, rank, step):
    any number of workers, and a resume from a checkpoint's (step, epoch, cursor), give the same batches. Worker
    ``w`` of ``W`` makes the batches ``k = w mod W``; the DataLoader returns them in order. Each item is (epoch,
    cursor after it, indices (B,), images (B, N, h, w), head masks and lesion masks (B, h, w)).
    """

    def __init__(self, data: SliceData, cfg: TrainConfig, step: int, epoch: int, cursor: int, rank: int = 0,
                 world: int = 1) -> None:
        super().__init__()
        self.data, self.cfg = data, cfg
        self.step, self.epoch, self.cursor, self.rank, self.world = step, epoch, cursor, rank, world

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        cfg = self.cfg
        plan = batch_plan(len(self.data), cfg.batch_size, cfg.seed, self.epoch, self.cursor, self.rank, self.world)
        for k, (epoch, cursor, indices) in enumerate(plan):
            if k % workers != worker:
                continue
            gen = torch.Generator().manual_seed(((cfg.seed * 1000 + self.rank + 1) << 32) + self.step + k)
            batch = self.data.batch(indices, gen, cfg.crop, cfg.flip, cfg.intensity_scale, cfg.aug_brain_only_p)
            yield (epoch, cursor, torch.tensor(indices), *batch)


def training_batches(data: SliceData, cfg: TrainConfig, step: int, epoch: int, cursor: int, rank: int = 0,
                     world: int = 1) -> Iterator[tuple]:
    """:class:`TrainingBatches` from (step, epoch, cursor), made ``cfg.loader_workers`` processes ahead.

    Example:
        >>> batches = training_batches(train, cfg, step=0, epoch=0, cursor=0)              # doctest: +SKIP
        >>> epoch, cursor, indices, images, masks, lesions = next(batches)                 # doctest: +SKIP
    """
    dataset = TrainingBatches(data, cfg, step, epoch, cursor, rank, world)
    if cfg.loader_workers <= 0:
        return iter(dataset)
    # Its own generator: the DataLoader seeds its workers from it, not from the global stream (D's dropout).
    return iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=cfg.loader_workers,
                                            prefetch_factor=2, generator=torch.Generator().manual_seed(cfg.seed)))


def load_data(cfg: TrainConfig) -> Tuple[SliceData, SliceData, dict]:
    """(train, choice, split): the training slices and the slices checkpoints are chosen on (the set-aside
    training patients when ``n_select``, else the validation patients), and the split used."""
    folder = lgg_folder_or_exit(cfg.data_dir, "--set data_dir=PATH")
    split = load_or_make_split(cfg, folder)
    train_cases, val_cases = split["train"], split["val"]
    if cfg.max_cases:
        train_cases, val_cases = train_cases[:cfg.max_cases], val_cases[:max(1, cfg.max_cases // 4)]
    train = SliceData.build(train_cases, cfg, folder)
    if cfg.n_select:  # checkpoints are chosen on training patients set aside, never on the validation patients
        select = select_cases(train_cases, cfg.n_select, cfg.split_seed)
        split = {**split, "train": [c for c in train_cases if c not in select], "select": select}
        train, choice = train.subset(split["train"]), train.subset(select)
    else:
        choice = SliceData.build(val_cases, cfg, folder)
    if cfg.aug_brain_only_p > 0:  # the augmentation swaps these in (about 10 s for 46 cases)
        train.add_brain_only_copies()
    return train, choice, split

