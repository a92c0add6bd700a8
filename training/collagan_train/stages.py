"""Run a recipe's stages in order, each in its own folder of ``OUT`` and starting from the previous stage's
generator, then average the generators the recipe names. A rerun of the same command skips the stages that
finished and continues the one that stopped.

Example:
    python -m training.collagan_train.main train --recipe lgg --out runs/lgg   # the bundled model, from scratch
    >>> plan(read_recipe("lgg"), Path("runs/lgg"))[2]   # doctest: +NORMALIZE_WHITESPACE
    ('e', PosixPath('runs/lgg/e'), 'runs/lgg/d/latest.pt')
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .config import Recipe, TrainConfig, make_config, read_recipe

#: The file the weight mean of a recipe's ``average`` is written to, in ``OUT``.
MEAN = "mean_g.pt"
#: The file of the recipe's result blended with the voxel regression (its ``blend``), in ``OUT``.
BLEND = "blend_g.pt"


def plan(recipe: Recipe, out: Path) -> List[Tuple[str, Path, str]]:
    """(stage name, its folder, the checkpoint it starts from: "" for a fresh start, its own folder's for a
    stage that continues the previous one) for each stage."""
    steps, previous = [], None
    for stage in recipe.stages:
        folder = out / stage["name"]
        start = "" if previous is None or stage.get("continue") else str(previous / "latest.pt")
        steps.append((stage["name"], folder, start))
        previous = folder
    return steps


def finished_step(folder: Path) -> int:
    """The step of the run's last checkpoint in ``folder`` (0: none)."""
    latest = folder / "latest.pt"
    return int(torch.load(latest, map_location="cpu", weights_only=False)["step"]) if latest.is_file() else 0


def run_stages(recipe: Recipe, out: Path, overrides: Sequence[str],
               run: Callable[[TrainConfig, Optional[str]], None]) -> Path:
    """Train every stage with ``run(config, checkpoint to resume or None)``; ``overrides`` (``key=value``) apply to
    every stage. Returns the last stage's checkpoint, or the weight mean of the stages in ``average``, blended with
    the voxel regression where the recipe has a ``blend``."""
    stages = plan(recipe, out)
    for number, (stage, (name, folder, start)) in enumerate(zip(recipe.stages, stages), 1):
        settings = {**recipe.stage_settings(stage), "out_dir": str(folder)}
        if start:
            settings["init_g"] = start
        cfg = make_config(settings, overrides)
        done = finished_step(folder)
        if done >= cfg.steps:
            print(f"stage {number}/{len(stages)} '{name}': done ({folder}, step {done})", flush=True)
            continue
        print(f"stage {number}/{len(stages)} '{name}': steps {done} -> {cfg.steps} in {folder}", flush=True)
        run(cfg, str(folder / "latest.pt") if done else None)
    result = stages[-1][1] / "latest.pt"
    if recipe.average:
        from .average import cmd_average

        result = out / MEAN
        cmd_average(argparse.Namespace(snapshots=[str(out / name / "latest.pt") for name in recipe.average],
                                       out=str(result), weights=None))
    if recipe.blend:
        from .blend import blend_checkpoint, shares_in_order

        cfg = make_config(recipe.final, overrides)
        mix = shares_in_order(recipe.blend, cfg.contrasts, f"the blend of recipe {recipe.path.name}")
        result = blend_checkpoint(result, cfg, mix, out / BLEND)
    return result


__all__ = ["plan", "run_stages", "read_recipe", "MEAN", "BLEND"]
