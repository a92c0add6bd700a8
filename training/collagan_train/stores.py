"""Per-case slice stores: each case through the core once, its slices kept on disk and read on demand.

Every case goes through ``CollaGANImputeLib.case.prepare_case`` on all its contrasts (canonical axial
orientation, head mask, p99 units) and is brought to the model's in-plane grid by the core's ``SliceGrid``, exactly
as inference and evaluation see it (a BraTS 240x240 slice at 1 mm is zero-padded to 256x256; other spacings are
resampled); a contrast is a target in the units evaluation scores it in (:func:`target_scales`). Slices with enough
head are stored per case under ``runs/cache`` (git-ignored): ``<settings>/<case>.<source>.images.npy``
(S, N, H, W) float16, ``.masks.npy`` (S, H, W) uint8 (bit 0 head, bit 1 lesion from ``-seg``) and ``.scales.npy``
(N,), built once, written all or nothing, keyed by a hash of the preparation settings and of the case's files (a
case prepared again replaces its store). :class:`CaseSlices` reads the slices it is asked for from them, so memory
does not grow with the number of cases.

Example:
    >>> images, masks, scales = case_store(Path("data/complete/TCGA-CS-4941"), cfg)    # doctest: +SKIP
    >>> CaseSlices([images]).shape, CaseSlices([masks], HEAD).dtype                    # doctest: +SKIP
    ((20, 3, 256, 256), dtype('bool'))
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Optional, Sequence, Tuple

import CollaGANImputeLib
import numpy as np
import torch
from CollaGANImputeLib.case import prepare_case
from CollaGANImputeLib.case_files import read_case
from CollaGANImputeLib.contract import DEFAULT_PIXEL_SPACING
from CollaGANImputeLib.errors import InputError
from CollaGANImputeLib.geometry import SliceGrid
from CollaGANImputeLib.io import LESION_SUFFIX, OutputSet, find_case_files, find_lesion_mask, read_lesion_mask
from CollaGANImputeLib.metrics import scored_target
from CollaGANImputeLib.normalization import foreground_mask, p99

from .cases import repo_path
from .config import TrainConfig

#: The model's in-plane size (pixels) training slices are brought to.
IN_PLANE = 256
#: The model's pixel spacing (mm) training slices are brought to: the card's default, the LGG training grid.
MODEL_SPACING = tuple(DEFAULT_PIXEL_SPACING)
#: Changes whenever what a store holds changes (its key then differs, so old stores are not read).
STORE_FORMAT = "case-store-2"
HEAD, LESION = 1, 2  # bits of a store's masks
STORE_PARTS = ("images", "masks", "scales")


def target_scales(arrays: Sequence[np.ndarray], mask: np.ndarray) -> np.ndarray:
    """Per contrast, the factor that brings its array (p99 units inside ``mask``, the head mask of all contrasts)
    to the units it is scored in as a target: p99 units inside the head mask of the *other* contrasts, re-scaled
    as EVALUATION.md's ``M_t`` does (:func:`~CollaGANImputeLib.metrics.scored_target`). Why: the mask of all
    contrasts also holds the rim that only the target shows bright (e.g. enhancing vessels and dura on a
    skull-stripped T1+Gd), which raises its p99: trained in those units, a model's targets come out about 10 %
    too dark on such scans (OpenMS T1+Gd 1.10, T2w 1.04; LGG within 0.98-1.01).

    Example:
        >>> head = np.zeros((2, 8, 8), np.float32)
        >>> head[:, 2:6, 2:6] = 1  # a head of two contrasts in p99 units, with no rim of its own
        >>> target_scales([head, head], head > 0).tolist()
        [1.0, 1.0]
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
