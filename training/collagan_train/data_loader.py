"""LGG slices for training: locate the data, split by patient, normalize through the core, cache, batch.

Every case goes through ``CollaGANImputeLib.pipeline.prepare_case`` on all its contrasts (canonical axial
orientation, inputs-only head mask, p99 units), exactly as inference and evaluation see it. Slices with enough
head are cached as float16 (S, N, H, W) memmaps under ``runs/cache`` (git-ignored; ~1 GB for the 52 training
cases), with their head masks and ``-seg`` lesion masks (all zero for a case without one), so later runs start
in seconds.

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
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import CollaGANImputeLib
import numpy as np
import torch
from CollaGANImputeLib.errors import InputError
from CollaGANImputeLib.evaluate import read_volume_allow_empty
from CollaGANImputeLib.io import find_lesion_mask
from CollaGANImputeLib.pipeline import prepare_case, read_case

from .config import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_ENV = "COLLAGAN_LGG_DIR"
IN_PLANE = 256


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
        raise InputError(f"Cases {missing} must be in validation but are not in the data folder.")
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
                             "the LGG complete/ folder or delete the split file to make a new one.")
        return split
    split = make_split(cases, cfg.n_val, cfg.split_seed, cfg.val_cases_required)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(split, indent=2) + "\n")
    os.replace(tmp, path)
    return split


def prepare_slices(case_dir: Path, contrasts: Sequence[str], min_foreground: float
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case through the core: (S, N, H, W) p99 arrays, (S, H, W) head mask and (S, H, W) lesion mask (the
    case's ``-seg``, zeros without one) of the slices with enough head."""
    images = read_case(case_dir, contrasts)
    missing = [c for c in contrasts if c not in images]
    if missing:
        raise InputError(f"{case_dir} lacks {missing}; training needs complete cases.")
    case = prepare_case({c: images[c] for c in contrasts})
    stack = np.stack([case.arrays[c] for c in contrasts], axis=1)
    mask = case.mask
    lesion = np.zeros_like(mask, dtype=bool)
    seg = find_lesion_mask(case_dir)
    if seg is not None:
        lesion = case.lesion_like_inputs(read_volume_allow_empty(seg))
    if stack.shape[-2:] != (IN_PLANE, IN_PLANE):
        from CollaGANImputeLib.geometry import pad_or_crop
        stack = pad_or_crop(torch.from_numpy(stack), (IN_PLANE, IN_PLANE)).numpy()
        mask, lesion = (pad_or_crop(torch.from_numpy(m.astype(np.uint8)), (IN_PLANE, IN_PLANE)).numpy().astype(bool)
                        for m in (mask, lesion))
    keep = mask.mean(axis=(1, 2)) >= min_foreground
    return stack[keep], mask[keep], lesion[keep]


@dataclass(frozen=True)
class BrainOnlyCopies:
    """Brain-only copies of a :class:`SliceData`'s slices (``augment.brain_only_volume``): ``images`` (S, N, H, W)
    float16, the brain ``masks`` (S, H, W) and ``ok`` (S,), the slices whose brain mask worked (the others have none).
    """

    images: np.ndarray
    masks: np.ndarray
    ok: np.ndarray


class SliceData:
    """Cached slices of a list of cases: ``images`` (S, N, H, W) float16 memmap, ``masks`` and ``lesions``
    (S, H, W) bool (head mask, lesion mask)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, index: List[Tuple[str, int]],
                 lesions: Optional[np.ndarray] = None) -> None:
        self.images, self.masks, self.index = images, masks, index
        self.lesions = lesions if lesions is not None else np.zeros(masks.shape, dtype=bool)
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
        """Load the cache for these cases and settings, or build it (atomically) through the core."""
        key = hashlib.sha1(json.dumps([sorted(cases), list(cfg.contrasts), cfg.min_foreground,
                                       CollaGANImputeLib.__version__, IN_PLANE, "lesions"]).encode()).hexdigest()[:16]
        cache = repo_path(cfg.cache_dir)
        paths = {k: cache / f"{key}.{k}.npy" for k in ("images", "masks", "lesions")}
        meta = cache / f"{key}.json"
        if not meta.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            stacks, masks, lesions, index = [], [], [], []
            for case in sorted(cases):
                stack, mask, lesion = prepare_slices(folder / case, cfg.contrasts, cfg.min_foreground)
                stacks.append(stack.astype(np.float16))
                masks.append(mask)
                lesions.append(lesion)
                index += [(case, i) for i in range(len(stack))]
            for name, arrays in (("images", stacks), ("masks", masks), ("lesions", lesions)):
                tmp = paths[name].with_suffix(".tmp.npy")
                np.save(tmp, np.concatenate(arrays))
                os.replace(tmp, paths[name])
            tmp = meta.with_suffix(".tmp")
            tmp.write_text(json.dumps({"cases": sorted(cases), "contrasts": list(cfg.contrasts), "index": index}))
            os.replace(tmp, meta)  # written last: its presence means the cache is complete
        index = [tuple(x) for x in json.loads(meta.read_text())["index"]]
        return cls(np.load(paths["images"], mmap_mode="r"), np.load(paths["masks"], mmap_mode="r"), index,
                   np.load(paths["lesions"], mmap_mode="r"))

    def subset(self, cases: Sequence[str]) -> SliceData:
        """The slices of ``cases`` only (in memory): e.g. training patients set aside for checkpoint choice."""
        keep = [i for i, (case, _) in enumerate(self.index) if case in set(cases)]
        return SliceData(np.asarray(self.images[keep]), np.asarray(self.masks[keep]),
                         [self.index[i] for i in keep], np.asarray(self.lesions[keep]))

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
        images = torch.from_numpy(np.stack([self.brain.images[i] if b else self.images[i]
                                            for i, b in zip(indices, use_brain)]).astype(np.float32))
        masks = torch.from_numpy(np.stack([self.brain.masks[i] if b else self.masks[i]
                                           for i, b in zip(indices, use_brain)]).astype(bool))
        lesions = torch.from_numpy(np.stack([self.lesions[i] for i in indices]).astype(bool)) & masks
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
