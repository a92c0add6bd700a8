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
from torch import nn

from .config import load_config
from .data_loader import SliceData, repo_path

LICENCE = "CC BY-NC-SA 4.0 (inherited from the TCGA-LGG curated set; research use only)"


def n_features(n: int) -> int:
    return 1 + n + n * (n + 1) // 2


def quadratic_features(x: torch.Tensor) -> torch.Tensor:
    """(B, N, H, W) -> (B, F, H, W): 1, each x_i, each x_i * x_j (i <= j)."""
    feats = [torch.ones_like(x[:, :1]), x]
    n = x.shape[1]
    for i in range(n):
        feats.append(x[:, i:i + 1] * x[:, i:])
    return torch.cat(feats, dim=1)


class VoxelRegression(nn.Module):
    """Model-contract module: ``coef[target, subset]`` holds the polynomial for that target and input subset
    (subset = bitmask of available contrasts; features of absent contrasts have coefficient 0)."""

    def __init__(self, coef: torch.Tensor) -> None:
        super().__init__()
        self.n = int(coef.shape[0])
        self.register_buffer("coef", coef.float())
        self.register_buffer("bits", 2 ** torch.arange(self.n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The fast inference plan feeds channels-last input; these narrow element-wise maps and reductions
        # run ~6x slower in that layout on CPU (5.0 vs 0.8 ms per 256x256 slice in bf16), so use NCHW.
        x = x.contiguous()
        images = x[:, :self.n]
        target = x[:, self.n:].mean(dim=(2, 3)).argmax(dim=1)
        present = images.abs().amax(dim=(2, 3)) > 0
        present = present & (nn.functional.one_hot(target, self.n) == 0)
        subset = (present.long() * self.bits).sum(dim=1)
        coef = self.coef[target, subset]  # (B, F)
        feats = quadratic_features(images * present[:, :, None, None].to(images.dtype))
        return (feats * coef[:, :, None, None]).sum(dim=1, keepdim=True)


def fit(images: np.ndarray, masks: np.ndarray, max_voxels: int = 400_000, seed: int = 0) -> torch.Tensor:
    """Least-squares coefficients (N, 2**N, F) from (S, N, H, W) p99 slices and their (S, H, W) masks."""
    rng = np.random.default_rng(seed)
    s, n = images.shape[:2]
    slices = np.sort(rng.choice(s, size=min(s, 400), replace=False))
    # Sample voxels inside the mask, a few thousand per slice, so every patient/slice contributes.
    per_slice = max(1, max_voxels // len(slices))
    rows = []
    for i in slices:
        ys, xs = np.nonzero(masks[i])
        pick = rng.choice(len(ys), size=min(per_slice, len(ys)), replace=False)
        rows.append(np.asarray(images[i][:, ys[pick], xs[pick]], dtype=np.float64).T)
    voxels = np.concatenate(rows)  # (V, N)
    feats_all = quadratic_features(torch.from_numpy(voxels)[:, :, None, None])[:, :, 0, 0].numpy()
    coef = np.zeros((n, 2**n, n_features(n)))
    for target in range(n):
        others = [k for k in range(n) if k != target]
        for r in range(1, len(others) + 1):
            for subset in itertools.combinations(others, r):
                used = _feature_columns(n, subset)
                solution, *_ = np.linalg.lstsq(feats_all[:, used], voxels[:, target], rcond=None)
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
    from .main import load_data

    cfg = load_config(args.config, args.set)
    train, _, split = load_data(cfg)
    coef = fit(train.images, train.masks, max_voxels=args.max_voxels, seed=cfg.seed)
    path = export_voxel_regression(coef, cfg.contrasts, str(repo_path(args.out)), training={
        "data": "TCGA-LGG training split", "split": cfg.split_file, "train_patients": len(split["train"]),
        "train_slices": len(train), "voxels": args.max_voxels,
        "command": f"python -m training.collagan_train.main baseline --out {args.out}"})
    print(path)
    print(json.dumps({c: coef[i].tolist() for i, c in enumerate(cfg.contrasts)})[:400], "...")


def add_parser(sub) -> None:
    p = sub.add_parser("baseline", help="fit and export the voxel-regression baseline")
    p.add_argument("--config", default="training/collagan_train/configs/default.json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/voxreg/voxreg.pt")
    p.add_argument("--max-voxels", type=int, default=400_000)
    p.set_defaults(func=cmd_baseline)


__all__ = ["SliceData", "VoxelRegression", "fit", "export_voxel_regression", "quadratic_features"]
