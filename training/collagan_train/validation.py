"""Validation during training: a fixed set of slices of the choice patients scored with the core's metrics, the
score ``best.pt`` is chosen on, and what one slice costs the generator (the time budget plans validations by it).

Every validation scores the same slices (:func:`fixed_validation_slices`), full size, each contrast imputed from
all the others, in the units evaluation scores targets in; ``val.csv`` gets a row per validation.

Example:
    >>> fixed_validation_slices(10, 4)
    [0, 3, 6, 9]
    >>> scores = solver.validate()          # e.g. {"t1n_nmse": 0.12, ..., "select_score": 0.19}  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional

import numpy as np
import torch
from CollaGANImputeLib.contract import model_input as build_input  # the contract's one layout
from CollaGANImputeLib.metrics import score_volume

from .config import TrainConfig
from .model import Generator
from .run_logs import append_row

if TYPE_CHECKING:
    from .data_loader import SliceData

#: The core's scores a validation logs per target (``<contrast>_<key>``) and as the mean over targets.
SCORE_KEYS = ("nmse", "psnr", "ssim", "lesion_nmse", "identity_t", "identity", "lesion_kept")


def fixed_validation_slices(length: int, count: int) -> List[int]:
    """The evenly spaced validation slices every validation (and the diagnostics) score."""
    return np.unique(np.linspace(0, length - 1, min(count, length)).round().astype(int)).tolist()


class Validation:
    """The validation side of :class:`~.solver.Solver`: scores of its generator (the weight average where kept) on
    its ``val_data``, and ``best.pt`` (with a snapshot under ``keep_snapshots``) when they are the best so far."""

    # What it reads and sets on the solver; it runs the generator as the training step does (autocast,
    # to_memory_format) and writes checkpoints with CheckpointFiles' save and save_snapshot.
    cfg: TrainConfig
    n: int
    device: torch.device
    out_dir: Path
    train_data: SliceData
    val_data: Optional[SliceData]
    G: Generator
    G_ema: Optional[Generator]
    step: int
    best: float

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """Score a fixed set of validation slices (full size, all other inputs) with the core's metrics,
        EVALUATION.md's identity checks and lesion conspicuity included; ``select_score`` (lower is better) is the mean
        over targets of (NMSE + lesion NMSE) / 2, so a checkpoint that blurs lesions away is not chosen."""
        if self.val_data is None or len(self.val_data) == 0:
            return {}
        generator = self.G_ema if self.G_ema is not None else self.G
        generator.eval()
        picks = fixed_validation_slices(len(self.val_data), self.cfg.val_slices)
        images, masks, lesions = self.val_data.batch(picks, torch.Generator())
        scale = torch.from_numpy(self.val_data.target_scale[picks])
        result: Dict[str, float] = {}
        for t, name in enumerate(self.cfg.contrasts):
            target = torch.full((len(picks),), t, dtype=torch.long)
            available = torch.ones(len(picks), self.n, dtype=torch.bool)
            available[:, t] = False
            preds = []
            for start in range(0, len(picks), 8):
                sl = slice(start, start + 8)
                with self.autocast():
                    x = build_input(images[sl], available[sl], target[sl]).to(self.device)
                    preds.append(generator(self.to_memory_format(x)).float().cpu()[:, 0])
            pred = torch.where(masks, torch.cat(preds), 0) if self.cfg.head_only_loss else torch.cat(preds)
            inputs = [images[:, k].numpy() for k in range(self.n) if k != t]
            real = images[:, t] * scale[:, t, None, None]
            scores = score_volume(pred.numpy(), real.numpy(), masks.numpy(), lesions.numpy(), inputs)
            for key in SCORE_KEYS:
                result[f"{name}_{key}"] = scores[key]
            lesion_nmse = scores["lesion_nmse"] if math.isfinite(scores["lesion_nmse"]) else scores["nmse"]
            result[f"{name}_select"] = (scores["nmse"] + lesion_nmse) / 2
        for key in SCORE_KEYS:
            values = [result[f"{c}_{key}"] for c in self.cfg.contrasts]
            result[f"mean_{key}"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        result["select_score"] = float(np.mean([result[f"{c}_select"] for c in self.cfg.contrasts]))
        return result

    def choice_score(self, scores: Dict[str, float]) -> float:
        """What best.pt minimises: ``select_score`` when checkpoints are chosen on set-aside patients, else the
        mean NMSE (earlier runs)."""
        return scores["select_score"] if self.cfg.n_select else scores["mean_nmse"]

    def validate_and_keep_best(self) -> bool:
        """Validate, log the scores to ``val.csv``, save ``best.pt`` when they are the best so far (and a snapshot
        under ``keep_snapshots``); False when there was nothing to validate on."""
        scores = self.validate()
        if not scores:
            return False
        append_row(self.out_dir / "val.csv", ["step"] + sorted(scores), dict(scores, step=self.step))
        if self.choice_score(scores) < self.best:
            self.best = self.choice_score(scores)
            self.save("best.pt")
        if self.cfg.keep_snapshots:  # G only (a few MB): any validated step can be exported later
            self.save_snapshot()
        return True

    @torch.no_grad()
    def seconds_per_slice(self, count: int = 4) -> float:
        """Seconds one full-size slice takes through the generator as validation runs it: ``count`` validation
        slices timed after one untimed pass (the first allocates)."""
        data = self.val_data if self.val_data is not None and len(self.val_data) else self.train_data
        picks = list(range(min(count, len(data))))
        images, _, _ = data.batch(picks, torch.Generator())
        available = torch.ones(len(picks), self.n, dtype=torch.bool)
        available[:, 0] = False
        generator = self.G_ema if self.G_ema is not None else self.G
        generator.eval()
        with self.autocast():
            x = build_input(images, available, torch.zeros(len(picks), dtype=torch.long)).to(self.device)
            x = self.to_memory_format(x)
            generator(x)
            t0 = time.time()
            generator(x)
        return (time.time() - t0) / len(picks)
