"""``train --recipe NAME COHORT_DIR --out OUT_DIR``: a model trained on a cohort, as ``finetune`` delivers one.

The cohort is a BraTS-layout download (2021 or 2023 names, found recursively), case folders with BraTS 2023 names,
or ``prepare``'s OUT; what is not yet case folders with the recipe's contrasts is prepared into ``OUT_DIR/data``.
Cases are set aside (the recipe's ``n_select``, else a fifth) to choose the checkpoint on; the chosen one is scored
there with a voxel regression fitted on the training cases (and the bundled model on the contrasts it has), and
``OUT_DIR/model.pt`` (the model contract: the cohort, contrasts and held-out figures on its card) and
``OUT_DIR/report.md`` are written together (:func:`.cohort_run.score_and_export`). A rerun continues the run in
``OUT_DIR/run``.

Example:
    python -m training.collagan_train.main prepare ~/Downloads/BraTS2021_Training_Data ~/data/brats
    python -m training.collagan_train.main train --recipe brats ~/data/brats --out runs/brats
    collagan-impute impute ~/data/new_case --model runs/brats/model.pt --target t2w --out out/
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import Sequence, Tuple

import torch
import torch.distributed as dist
from CollaGANImputeLib.errors import InputError

from .cases import REPO_ROOT
from .cohort import Cohort, cohort_cases, cohort_folder, pick_holdout
from .cohort_run import score_and_export, training_run
from .config import make_config, read_recipe
from .data_loader import SliceData
from .distributed import process_group
from .prepare import prepare
from .source_model import BUNDLED_CHECKPOINTS

#: The bundled model the report compares with, on the contrasts it has.
REFERENCE = "collagan-lgg-t1n-t1c-t2f"


def cohort_input(source: Path, out: Path, contrasts: Sequence[str], prepare_here: bool = True) -> Tuple[Path, str]:
    """(the folder of case folders to train on, the cohort's name): ``prepare``'s OUT or case folders with BraTS
    2023 names as they are; anything else prepared into ``out/data`` (when ``prepare_here``, else only located)."""
    folder, name = cohort_folder(source)
    if cohort_cases(folder, contrasts)[0]:
        return folder, name
    prepared = out.resolve() / "data"
    if prepare_here:
        prepare(source, prepared, contrasts)
    return prepared / "complete", source.resolve().name


def reference_contrasts() -> list:
    """The contrasts of the bundled model :data:`REFERENCE`."""
    state = torch.load(REPO_ROOT / BUNDLED_CHECKPOINTS[REFERENCE], map_location="cpu", weights_only=False)
    return list(state["config"]["contrasts"])


def train_cohort(args: argparse.Namespace) -> None:
    started = time.time()
    if not args.out:
        raise InputError("Training on a cohort folder writes OUT_DIR/model.pt and OUT_DIR/report.md: give --out "
                         "OUT_DIR.")
    recipe = read_recipe(args.recipe or args.config or "brats")
    if recipe.stages:
        raise InputError(f"Recipe '{recipe.path.stem}' has stages and trains on its own data: run it without "
                         "COHORT_DIR, or give a one-stage recipe (e.g. --recipe brats).")
    source, out = Path(args.cohort).expanduser(), Path(args.out).expanduser()
    if not source.is_dir():
        raise InputError(f"{source}: no such folder; give the downloaded BraTS folder or prepare's OUT.")
    settings = make_config(recipe.final, args.set)
    rank, world, device = process_group(settings)
    folder, name = cohort_input(source, out, settings.contrasts, prepare_here=rank == 0)
    if world > 1:
        dist.barrier()  # the other ranks read what rank 0 prepared
    complete, incomplete = cohort_cases(folder, settings.contrasts)
    held = pick_holdout(complete, settings.n_select or None, [], settings.split_seed)
    cohort = Cohort(folder, name, [c for c in complete if c not in held], held, incomplete)
    run_dir = out.resolve() / "run"
    cfg = make_config({**recipe.final, "data_dir": str(folder), "out_dir": str(run_dir),
                       "cache_dir": str(out.resolve() / "cache")}, args.set)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "commands.txt", "a") as handle:
            handle.write(f"python -m training.collagan_train.main {shlex.join(args.argv)}\n")
        (run_dir / "split_used.json").write_text(json.dumps({"train": cohort.train, "held_out": held,
                                                             "incomplete": incomplete}, indent=2) + "\n")
        print(f"{len(complete)} complete case(s) of {name}: {len(cohort.train)} to train on, {len(held)} held out"
              + (f"; left out (incomplete): {len(incomplete)}" if incomplete else "")
              + f"; recipe {recipe.path.stem}, contrasts {','.join(cfg.contrasts)}", flush=True)
    train = SliceData.build(cohort.train, cfg, folder)
    held_data = SliceData.build(held, cfg, folder)
    if cfg.aug_brain_only_p > 0:
        train.add_brain_only_copies()
    chosen = training_run(cfg, train, held_data, None, run_dir, rank=rank, world=world, device=device)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if rank != 0:
        return
    description = (f"CollaGAN generator trained with the recipe '{recipe.path.stem}' on {len(cohort.train)} complete "
                   f"case(s) of the cohort '{name}' ({', '.join(cfg.contrasts)}); imputes one contrast from the "
                   "others. Research use only, not for diagnosis. Outputs are synthetic.")
    training = {"data": f"cohort '{name}': {len(cohort.train)} training case(s)",
                "split": f"{len(cohort.train)} train / {len(held)} held-out case(s): {', '.join(held)}",
                "checkpoint_choice": f"mean NMSE on slices of the held-out case(s) {', '.join(held)}",
                "recipe": recipe.path.stem, "excluded_incomplete_cases": incomplete}
    model_name = f"collagan-{name.lower()}-{'-'.join(cfg.contrasts)}"
    score_and_export(cohort, cfg, train, chosen, started, out, name=model_name, about={}, description=description,
                     training=training, title=f"Training the recipe '{recipe.path.stem}' on {name}",
                     reference=REFERENCE, reference_contrasts=reference_contrasts(), label="trained")
