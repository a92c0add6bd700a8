"""Voxel-regression baseline (EVALUATION.md baseline 1), exportable under the same model contract.

Per target and per set of available inputs, the target's p99 intensity is a quadratic polynomial of the
inputs' p99 intensities (1, x_i, x_i x_j), fitted by least squares on training-split voxels inside the head
mask. The TorchScript module reads the target from the mask planes and the available inputs from the non-zero
channels, so the core pipeline and evaluate.py score it exactly like CollaGAN. (The other baselines and
ablations are training methods: ``--set method=l1|no_mcc|no_ssim|single_input``, see config.METHODS.)

Example:
    python -m training.collagan_train.main baseline --out runs/voxreg/voxreg.pt
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from CollaGANImputeLib.contract import ModelCard, save_model

from .cases import repo_path
from .config import load_config
from .data_loader import SliceData, load_data
from .voxel_regression import VoxelRegression, n_features, quadratic_features

LICENCE = "CC BY-NC-SA 4.0 (inherited from the TCGA-LGG curated set; research use only)"


def fit(images: np.ndarray, masks: np.ndarray, max_voxels: int = 400_000, seed: int = 0,
        target_scale: Optional[np.ndarray] = None) -> torch.Tensor:
    """Least-squares coefficients (N, 2**N, F) from (S, N, H, W) p99 slices and their (S, H, W) masks; a target
    is fitted in the units it is scored in: ``target_scale`` (S, N), as :class:`.data_loader.SliceData` has it
    (None: ones)."""
    rng = np.random.default_rng(seed)
    s, n = images.shape[:2]
    slices = np.sort(rng.choice(s, size=min(s, 400), replace=False))
    # Sample voxels inside the mask, a few thousand per slice, so every patient/slice contributes.
    per_slice = max(1, max_voxels // len(slices))
    rows, factors = [], []
    for i in slices:
        ys, xs = np.nonzero(masks[i])
        pick = rng.choice(len(ys), size=min(per_slice, len(ys)), replace=False)
        rows.append(np.asarray(images[i][:, ys[pick], xs[pick]], dtype=np.float64).T)
        factor = np.ones(n) if target_scale is None else np.asarray(target_scale[i], dtype=np.float64)
        factors.append(np.broadcast_to(factor, rows[-1].shape))
    voxels = np.concatenate(rows)  # (V, N), input units
    targets = voxels * np.concatenate(factors)  # the same voxels in target units
    feats_all = quadratic_features(torch.from_numpy(voxels)[:, :, None, None])[:, :, 0, 0].numpy()
    coef = np.zeros((n, 2**n, n_features(n)))
    for target in range(n):
        others = [k for k in range(n) if k != target]
        for r in range(1, len(others) + 1):
            for subset in itertools.combinations(others, r):
                used = _feature_columns(n, subset)
                solution, *_ = np.linalg.lstsq(feats_all[:, used], targets[:, target], rcond=None)
                coef[target, sum(2**k for k in subset), used] = solution
    return torch.from_numpy(coef)


def _feature_columns(n: int, subset: Sequence[int]) -> List[int]:
    """Indices of the features that involve only contrasts in ``subset`` (and the constant)."""
    columns, index = [0], 1
    for i in range(n):
        if i in subset:
            columns.append(index)
        index += 1
    for i in range(n):
        for j in range(i, n):
            if i in subset and j in subset:
                columns.append(index)
            index += 1
    return columns


def export_voxel_regression(coef: torch.Tensor, contrasts: Sequence[str], out: str, training: Optional[dict] = None
                            ) -> Path:
    module = VoxelRegression(coef)
    card = ModelCard(name=f"voxreg-quadratic-{'-'.join(contrasts)}", contrasts=list(contrasts),
                     architecture={"type": "voxel regression: quadratic polynomial of the available inputs' p99 "
                                           "intensities, one per (target, available-input subset)",
                                   "features": n_features(len(contrasts))},
                     training={"method": "voxreg", **(training or {})}, licence=LICENCE,
                     description="Baseline for CollaGAN (EVALUATION.md baseline 1). Outputs are synthetic.")
    path = Path(out)
    save_model(module, card, path)
    return path


def cmd_baseline(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.set)
    train, _, split = load_data(cfg)
    coef = fit(train.images, train.masks, max_voxels=args.max_voxels, seed=cfg.seed,
               target_scale=train.target_scale)
    path = export_voxel_regression(coef, cfg.contrasts, str(repo_path(args.out)), training={
        "data": "TCGA-LGG training split", "split": cfg.split_file, "train_patients": len(split["train"]),
        "train_slices": len(train), "voxels": args.max_voxels,
        "command": f"python -m training.collagan_train.main baseline --out {args.out}"})
    print(path)
    print(json.dumps({c: coef[i].tolist() for i, c in enumerate(cfg.contrasts)})[:400], "...")


def add_parser(sub) -> None:
    p = sub.add_parser("baseline", help="fit and export the voxel-regression baseline")
    p.add_argument("--config", default="base", help="recipe or config file (default: the base settings)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/voxreg/voxreg.pt")
    p.add_argument("--max-voxels", type=int, default=400_000)
    p.set_defaults(func=cmd_baseline)


__all__ = ["SliceData", "VoxelRegression", "fit", "export_voxel_regression", "n_features", "quadratic_features"]
