"""Training slices: locate the data, split by patient, normalize through the core, store per case, batch.

Every case goes through ``CollaGANImputeLib.case.prepare_case`` on all its contrasts (canonical axial
orientation, head mask, p99 units) and is brought to the model's in-plane grid by the core's ``SliceGrid``, exactly
as inference and evaluation see it (a BraTS 240x240 slice at 1 mm is zero-padded to 256x256; other spacings are
resampled); a contrast is a target in the units evaluation scores it in (:func:`target_scales`). Slices with enough
head are stored per case under ``runs/cache`` (git-ignored): ``<settings>/<case>.<source>.images.npy``
(S, N, H, W) float16, ``.masks.npy`` (S, H, W) uint8 (bit 0 head, bit 1 lesion from ``-seg``) and ``.scales.npy``
(N,), built once, written all or nothing, keyed by a hash of the preparation settings and of the case's files (a
case prepared again replaces its store). Training reads the slices it needs from them on demand, so memory does not
grow with the number of cases, and DataLoader workers prepare the batches ahead of the step
(:func:`training_batches`).

Example:
    >>> split = load_or_make_split(cfg)                                   # doctest: +SKIP
    >>> data = SliceData.build(split["train"], cfg)                       # doctest: +SKIP
    >>> images, masks, lesions = data.batch([0, 1], torch.Generator(), crop=128)   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import CollaGANImputeLib
import numpy as np
import torch
from CollaGANImputeLib.atomic import write_text_atomic
from CollaGANImputeLib.case import prepare_case
from CollaGANImputeLib.case_files import read_case
from CollaGANImputeLib.contract import DEFAULT_PIXEL_SPACING
from CollaGANImputeLib.errors import InputError
from CollaGANImputeLib.geometry import SliceGrid
from CollaGANImputeLib.io import LESION_SUFFIX, OutputSet, find_case_files, find_lesion_mask, read_lesion_mask
from CollaGANImputeLib.metrics import scored_target
from CollaGANImputeLib.normalization import foreground_mask, p99

from .config import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_ENV = "COLLAGAN_LGG_DIR"
IN_PLANE = 256
#: The model's pixel spacing (mm) training slices are brought to: the card's default, the LGG training grid.
MODEL_SPACING = tuple(DEFAULT_PIXEL_SPACING)
#: Changes whenever what a store holds changes (its key then differs, so old stores are not read).
STORE_FORMAT = "case-store-2"
HEAD, LESION = 1, 2  # bits of a store's masks
STORE_PARTS = ("images", "masks", "scales")


def repo_path(path: str) -> Path:
    """Config paths are relative to the repository root, whatever the working directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def locate_lgg(data_dir: str = "") -> Optional[Path]:
    """The folder of complete LGG cases: ``data_dir``, $COLLAGAN_LGG_DIR or <repo>/../shared/data/lgg; None if
    absent (tests skip)."""
    candidates = [data_dir] if data_dir else [os.environ.get(DATA_ENV, ""), str(REPO_ROOT.parent / "shared/data/lgg")]
    for candidate in filter(None, candidates):
        root = repo_path(candidate)
        for folder in (root / "complete", root):
            if folder.is_dir() and any(p.is_dir() for p in folder.iterdir()):
                return folder
    return None


def lgg_folder_or_exit(data: Optional[str], flag: str = "--data PATH") -> Path:
    """The folder of complete LGG cases a command was given with ``flag`` (the folder or the one holding
    ``complete/``), or found as :func:`locate_lgg` does; exits with what to pass when there is none."""
    folder = locate_lgg(data or "")
    if folder is None:
        default = REPO_ROOT.parent / "shared/data/lgg"
        given = f"{data} holds no case folders" if data else f"LGG data not found (looked in {DATA_ENV} and {default})"
        raise SystemExit(f"{given}: pass {flag} (the folder of complete cases), or set {DATA_ENV}.")
    return folder


def list_cases(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def make_split(cases: Sequence[str], n_val: int, seed: int, required_val: Sequence[str] = ()) -> dict:
    """Patient-level split: ``required_val`` (the bundled demo case) plus a seeded random pick in validation."""
    missing = [c for c in required_val if c not in cases]
    if missing:
        raise InputError(f"Cases {missing} must be in validation (val_cases_required) but are not in the data "
                         "folder; for another cohort pass --set 'val_cases_required=[]' (or name its own cases).")
    rest = sorted(c for c in cases if c not in required_val)
    random.Random(seed).shuffle(rest)
    n_pick = max(0, n_val - len(required_val))
    val = sorted(list(required_val) + rest[:n_pick])
    return {"seed": seed, "n_cases": len(cases), "required_val": list(required_val),
            "train": sorted(rest[n_pick:]), "val": val}


def load_or_make_split(cfg: TrainConfig, folder: Path) -> dict:
    """Read the split file (reused by every run), or write it once from the cases in ``folder``."""
    path = repo_path(cfg.split_file)
    cases = list_cases(folder)
    if path.is_file():
        split = json.loads(path.read_text())
        absent = sorted(set(split["train"] + split["val"]) - set(cases))
        if absent:
            raise InputError(f"Split {path} names cases absent from {folder}: {absent[:5]}. Point data_dir at "
                             "the cohort the split was made for, or give another cohort its own split file "
                             "(--set split_file=runs/<cohort>_split.json, made on first use).")
        return split
    split = make_split(cases, cfg.n_val, cfg.split_seed, cfg.val_cases_required)
    write_text_atomic(path, json.dumps(split, indent=2) + "\n")
    return split


def target_scales(arrays: Sequence[np.ndarray], mask: np.ndarray) -> np.ndarray:
    """Per contrast, the factor that brings its array (p99 units inside ``mask``, the head mask of all contrasts)
    to the units it is scored in as a target: p99 units inside the head mask of the *other* contrasts, re-scaled
    as EVALUATION.md's ``M_t`` does (:func:`~CollaGANImputeLib.metrics.scored_target`). Why: the mask of all
    contrasts also holds the rim that only the target shows bright (e.g. enhancing vessels and dura on a
    skull-stripped T1+Gd), which raises its p99: trained in those units, a model's targets come out about 10 %
    too dark on such scans (OpenMS T1+Gd 1.10, T2w 1.04; LGG within 0.98-1.01).

    Example:
        >>> float(target_scales([np.ones((2, 8, 8)), np.ones((2, 8, 8))], np.ones((2, 8, 8), bool))[0])
        1.0
    """
    factors = np.ones(len(arrays), dtype=np.float32)
    for t, array in enumerate(arrays):
        others = [a for k, a in enumerate(arrays) if k != t]
        if not others:
            continue
        region = foreground_mask(others)
        if not region.any() or not np.any(array[region] > 0):
            continue
        scored, where = scored_target(array / np.float32(p99(array, region)), region)
        inside = where & (array > 0)
        if inside.any():
            factors[t] = float(np.median(scored[inside] / array[inside]))
    return factors


def prepare_slices(case_dir: Path, contrasts: Sequence[str], min_foreground: float,
                   size: Tuple[int, int] = (IN_PLANE, IN_PLANE), spacing: Tuple[float, float] = MODEL_SPACING
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One case through the core: (S, N, H, W) p99 arrays, (S, H, W) head mask and (S, H, W) lesion mask (the
    case's ``-seg``, zeros without one) of the slices with enough head, on the model's grid (``size`` pixels at
    ``spacing`` mm: padded/cropped or resampled by the core's :class:`~CollaGANImputeLib.geometry.SliceGrid`, as
    inference does), and the (N,) :func:`target_scales` of the whole volume.

    Example:
        >>> stack, mask, lesion, scales = prepare_slices(Path("BraTS-00000"), ["t1n", "t2f"], 0.05)  # doctest: +SKIP
        >>> stack.shape[1:], mask.shape[1:], scales.shape                                # doctest: +SKIP
        ((2, 256, 256), (256, 256), (2,))
    """
    images = read_case(case_dir, contrasts)
    missing = [c for c in contrasts if c not in images]
    if missing:
        raise InputError(f"{case_dir} lacks {missing}; training needs complete cases.")
    case = prepare_case({c: images[c] for c in contrasts})
    stack = np.stack([case.arrays[c] for c in contrasts], axis=1)
    mask = case.mask
    scales = target_scales([case.arrays[c] for c in contrasts], mask)
    lesion = np.zeros_like(mask, dtype=bool)
    seg = find_lesion_mask(case_dir)
    if seg is not None:
        lesion = case.lesion_like_inputs(read_lesion_mask(seg))
    grid = SliceGrid(mask.shape[1:], case.spacing, tuple(size), tuple(spacing))
    if tuple(stack.shape[-2:]) != tuple(size) or grid.resampled:
        stack = grid.to_model(torch.from_numpy(stack)).numpy()
        both = grid.to_model(torch.from_numpy(np.stack([mask, lesion], axis=1).astype(np.float32))).numpy() > 0.5
        mask, lesion = both[:, 0], both[:, 1]
    keep = mask.mean(axis=(1, 2)) >= min_foreground
    return stack[keep], mask[keep], lesion[keep], scales


def store_settings(cfg: TrainConfig) -> str:
    """Hash of what a case's slices depend on besides its files (the stores' folder name)."""
    settings = [list(cfg.contrasts), cfg.min_foreground, CollaGANImputeLib.__version__, IN_PLANE,
                list(MODEL_SPACING), STORE_FORMAT]
    return hashlib.sha1(json.dumps(settings).encode()).hexdigest()[:16]


def source_signature(case_dir: Path, contrasts: Sequence[str]) -> str:
    """Hash of the names, sizes and modification times of the files a case's slices are read from: a case
    prepared again gets a new store."""
    files = find_case_files(case_dir, [*contrasts, LESION_SUFFIX])
    stats = [(name, path.name, path.stat().st_size, path.stat().st_mtime_ns) for name, path in sorted(files.items())]
    return hashlib.sha1(json.dumps(stats).encode()).hexdigest()[:12]


def case_store(case_dir: Path, cfg: TrainConfig) -> Tuple[Path, Path, Path]:
    """The (images, masks, scales) .npy store of one case for these settings, built through the core if absent.

    Example:
        >>> images, masks, scales = case_store(Path("data/complete/TCGA-CS-4941"), cfg)  # doctest: +SKIP
        >>> np.load(images, mmap_mode="r").shape                                  # doctest: +SKIP
        (20, 3, 256, 256)
    """
    folder = repo_path(cfg.cache_dir) / store_settings(cfg)
    stem = f"{case_dir.name}.{source_signature(case_dir, cfg.contrasts)}"
    files = tuple(folder / f"{stem}.{part}.npy" for part in STORE_PARTS)
    if all(f.is_file() for f in files):
        return files
    stack, head, lesion, scales = prepare_slices(case_dir, cfg.contrasts, cfg.min_foreground)
    bits = (head * HEAD | lesion * LESION).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    with OutputSet() as outputs:  # all files or none: a half-built store is never read
        for path, array in zip(files, (stack.astype(np.float16), bits, scales.astype(np.float32))):
            outputs.stage(path, lambda tmp, a=array: np.save(tmp, a))
        outputs.commit()
    stale = re.compile(re.escape(case_dir.name) + r"\.[0-9a-f]{12}\.(" + "|".join(STORE_PARTS) + r")\.npy")
    for old in folder.iterdir():  # the store of the case's earlier files (a reader still open keeps its copy)
        if stale.fullmatch(old.name) and old not in files:
            old.unlink(missing_ok=True)
    return files


ArrayLike = Union[np.ndarray, "CaseSlices"]


class CaseSlices:
    """Slices of per-case .npy stores, indexed like one (S, ...) array and read on demand.

    Each read maps the files it needs (``np.load(mmap_mode="r")``), copies the rows and lets the mapping go, so
    neither the arrays nor their pages stay in the process: memory does not grow with the number of cases.
    ``bit`` reads a mask store as the boolean of that bit.

    Example:
        >>> images = CaseSlices([Path("a.images.npy"), Path("b.images.npy")])     # doctest: +SKIP
        >>> images.shape, images[[0, 40]].shape                                   # doctest: +SKIP
        ((52, 3, 256, 256), (2, 3, 256, 256))
    """

    def __init__(self, files: Sequence[Path], bit: int = 0, rows: Optional[np.ndarray] = None) -> None:
        self.files, self.bit = list(files), bit
        headers = [np.load(f, mmap_mode="r") for f in self.files]
        self._item = headers[0].shape[1:] if headers else ()
        self.dtype = np.dtype(bool) if bit else (headers[0].dtype if headers else np.dtype(np.float16))
        if rows is None:  # (file, row in file) of every slice
            rows = np.array([(k, i) for k, h in enumerate(headers) for i in range(h.shape[0])],
                            dtype=np.int32).reshape(-1, 2)
        self.rows = rows
        del headers

    @property
    def shape(self) -> Tuple[int, ...]:
        return (len(self.rows), *self._item)

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, indices: Sequence[int]) -> CaseSlices:
        """The slices ``indices`` as another view (nothing is read)."""
        return CaseSlices(self.files, self.bit, self.rows[np.asarray(indices, dtype=np.int64)])

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._read(np.array([key]))[0]
        if isinstance(key, slice):
            return self._read(np.arange(len(self))[key])
        return self._read(np.asarray(key, dtype=np.int64).reshape(-1))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self._read(np.arange(len(self)))
        return array if dtype is None else array.astype(dtype)

    def _read(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), *self._item), dtype=self.dtype)
        where = self.rows[indices]
        for k in np.unique(where[:, 0]):
            picked = np.flatnonzero(where[:, 0] == k)
            stored = np.load(self.files[k], mmap_mode="r")
            block = stored[where[picked, 1]]  # fancy indexing copies out of the mapping
            out[picked] = (block & self.bit) != 0 if self.bit else block
            del stored
        return out


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
    brings a contrast of the slice to the units it is scored in as a target (:func:`target_scales`; ones if not
    given). Built from the per-case stores, the arrays are :class:`CaseSlices` (read on demand); arrays in memory
    work the same."""

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


def select_cases(train_cases: List[str], n: int, seed: int) -> List[str]:
    """The ``n`` training patients set aside to choose checkpoints on (seeded, reproducible)."""
    rest = sorted(train_cases)
    random.Random(seed + 1).shuffle(rest)
    return sorted(rest[:n])
