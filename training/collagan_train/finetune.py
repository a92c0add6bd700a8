"""Fine-tune a bundled model on a cohort of complete cases, adding contrasts it lacks; score it against the bundled
model and a voxel regression on held-out cases; export it under the model contract with a report.

The bundled generator's weights are kept; a contrast it lacks starts where the known imputations are unchanged
(:mod:`.source_model`). After training, the network is blended per target with a polynomial of the inputs
(:func:`.blend.cohort_blend`). Checkpoints and the blend are chosen on the held-out cases, and the same cases are
scored, so the figures are a little optimistic (the report says so; :mod:`.cohort_run`).

Example:
    python -m training.collagan_train.main finetune ~/data/cohort --from collagan-lgg-t1n-t1c-t2f \
        --contrasts t1n,t1c,t2w,t2f --holdout 2 --out runs/cohort_model
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import torch

from .budget import TimeBudget
from .checkpoints import generator_weights
from .cohort import KNOWN_CONTRASTS, Cohort, cohort_cases, cohort_folder, default_contrasts, pick_holdout
from .cohort_run import score_and_export, training_run
from .config import TrainConfig, recipe_overlay
from .data_loader import SliceData
from .export import load_about
from .source_model import (
    BUNDLED_CHECKPOINTS,
    BUNDLED_DISCRIMINATORS,
    expand_generator,
    source_checkpoint,
    starting_discriminator,
)

#: Fine-tuning settings on top of the source model's own (recipe configs/finetune.json, which says why).
FINETUNE_SETTINGS = recipe_overlay("finetune")
DEFAULT_STEPS = int(FINETUNE_SETTINGS["steps"])


def finetune_config(base: dict, contrasts: Sequence[str], init_g: str, cohort: Path, run_dir: Path, steps: int,
                    overrides: Optional[dict] = None) -> TrainConfig:
    """The bundled recipe's config with :data:`FINETUNE_SETTINGS`, the cohort's contrasts, and per-target odds
    carried over (new contrasts get the largest: they start from nothing).

    Example:
        >>> cfg = finetune_config(state["config"], ["t1n", "t1c", "t2w", "t2f"], checkpoint,
        ...                       Path("data/openms/complete"), Path("runs/openms/run"), 1000)   # doctest: +SKIP
        >>> cfg.contrasts, cfg.steps                                                         # doctest: +SKIP
        (['t1n', 't1c', 't2w', 't2f'], 1000)
    """
    old = list(base["contrasts"])
    odds = list(base.get("target_weights") or [])
    weights = ([odds[old.index(c)] if c in old else max(odds) for c in contrasts] if len(odds) == len(old) else [])
    enhance = base.get("aug_enhance_contrast", "t1c")
    settings = {**base, **FINETUNE_SETTINGS, "contrasts": list(contrasts), "target_weights": weights,
                "init_g": init_g, "data_dir": str(cohort), "out_dir": str(run_dir), "steps": steps,
                "cache_dir": str(run_dir.parent / "cache"), "val_every": max(1, steps // 5),
                "ckpt_every": max(1, steps // 5), "aug_enhance_p": base.get("aug_enhance_p", 0.0)
                if enhance in contrasts else 0.0, **(overrides or {})}
    return TrainConfig(**settings)


def cmd_finetune(args: argparse.Namespace) -> None:
    """The ``finetune`` command (:func:`add_parser`): the cohort split, training from the source model grown to the
    cohort's contrasts, then :func:`.cohort_run.score_and_export`.

    Example:
        >>> main(["finetune", "data/openms", "--contrasts", "t1n,t1c,t2w,t2f", "--out", "runs/x"])  # doctest: +SKIP
    """
    started = time.time()
    if args.minutes < 0:
        raise SystemExit(f"--minutes {args.minutes:g}: give the minutes the whole command may take, e.g. --minutes "
                         "25, or 0 for no time budget.")
    if args.threads:
        torch.set_num_threads(args.threads)
    cohort, out = Path(args.cohort).expanduser(), Path(args.out).expanduser()
    if not cohort.is_dir():
        raise SystemExit(f"{cohort}: no such folder; give the folder that holds one folder per case.")
    cohort, cohort_name = cohort_folder(cohort)
    checkpoint, base = source_checkpoint(args.source)
    contrasts = [c.strip() for c in args.contrasts.split(",")] if args.contrasts else default_contrasts(cohort)
    if len(contrasts) < 2 or len(set(contrasts)) != len(contrasts):
        raise SystemExit(f"--contrasts {','.join(contrasts) or '(none found)'}: give at least two distinct contrasts "
                         "that the cases have, e.g. --contrasts t1n,t1c,t2w,t2f.")
    complete, incomplete = cohort_cases(cohort, contrasts)
    held = pick_holdout(complete, args.holdout, args.holdout_cases.split(",") if args.holdout_cases else [],
                        args.seed)
    train_cases = [c for c in complete if c not in held]
    run_dir = out / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = finetune_config(base["config"], contrasts, checkpoint, cohort.resolve(), run_dir.resolve(), args.steps,
                          dict(args.set_values))
    (run_dir / "commands.txt").write_text(f"python -m training.collagan_train.main {shlex.join(args.argv)}\n")
    (run_dir / "split_used.json").write_text(json.dumps({"train": train_cases, "held_out": held,
                                                         "incomplete": incomplete}, indent=2) + "\n")
    old = list(base["config"]["contrasts"])
    added = [c for c in contrasts if c not in old]
    print(f"{len(complete)} complete case(s): {len(train_cases)} to train on, held out {', '.join(held)}"
          + (f"; left out (incomplete): {', '.join(incomplete)}" if incomplete else "")
          + f"; contrasts {','.join(contrasts)}" + (f" ({','.join(added)} added)" if added else ""), flush=True)
    train = SliceData.build(train_cases, cfg, cohort)
    held_data = SliceData.build(held, cfg, cohort)
    print(f"data ready: {len(train)} training and {len(held_data)} held-out slices "
          f"({(time.time() - started) / 60:.1f} min)", flush=True)
    weights = expand_generator(generator_weights(base), old, contrasts)
    discriminator = starting_discriminator(args.source, cfg, old)
    # After training: every model scores each target it takes on every held-out slice (the fine-tuned one twice
    # when contrasts were added, also from the bundled model's inputs) and the voxel regression each target.
    # Before that, the choice of the blend runs the network and the voxel regression on every target.
    bundled = args.source in BUNDLED_CHECKPOINTS
    scored = ((2 + 2 * (not args.network_only)) * len(contrasts)
              + ((2 * len(old) if added else len(old)) + len(old) * (not args.network_only)) * bundled)
    budget = TimeBudget(started, args.minutes, after_slices=scored * len(held_data))
    chosen = training_run(cfg, train, held_data, weights, run_dir, discriminator, budget=budget)
    name = args.name or f"collagan-{cohort_name.lower()}-{'-'.join(contrasts)}"
    about = load_about(args.about) if args.about else {}
    description = about.get("description") or (
        f"CollaGAN generator fine-tuned from {args.source} on {len(train_cases)} complete case(s) of the cohort "
        f"'{cohort_name}' ({', '.join(contrasts)}{'; ' + ', '.join(added) + ' added' if added else ''}); imputes "
        "one contrast from the others. Research use only, not for diagnosis. Outputs are synthetic.")
    training = {"data": f"cohort '{cohort_name}': {len(train_cases)} training case(s)",
                "split": f"{len(train_cases)} train / {len(held)} held-out case(s): {', '.join(held)}",
                "checkpoint_choice": f"mean NMSE on slices of the held-out case(s) {', '.join(held)}",
                "fine_tuned_from": {"model": args.source, "checkpoint": checkpoint, "contrasts_added": added},
                "excluded_incomplete_cases": incomplete, "steps_done": budget.done, "steps_set_by": budget.note()}
    title = f"Fine-tuning {args.source} on {cohort_name}"
    score_and_export(Cohort(cohort, cohort_name, train_cases, held, incomplete), replace(cfg, steps=budget.done),
                     train, chosen, started, out, steps_note=budget.note(), name=name, about=about,
                     description=description, training=training, title=title,
                     reference=args.source if args.source in BUNDLED_CHECKPOINTS else None, reference_contrasts=old,
                     label="fine-tuned", discriminator=f"starting from {BUNDLED_DISCRIMINATORS[args.source]}"
                     if discriminator is not None else "", blend=not args.network_only)


def add_parser(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a bundled model on a cohort of complete cases (contrasts may be "
                                        "added), score it on held-out cases, export model.pt and report.md")
    p.add_argument("cohort", help="folder of case folders with BraTS 2023 names (<case>-t1n.nii.gz, ...), or "
                   "the OUT folder of prepare")
    p.add_argument("--from", dest="source", default="collagan-lgg-t1n-t1c-t2f",
                   help=f"the bundled model to start from ({', '.join(BUNDLED_CHECKPOINTS)}), or a training "
                   "checkpoint file (OUT/run/best.pt of an earlier finetune or train)")
    p.add_argument("--contrasts", help="comma-separated, in model order (default: every one of "
                                       f"{','.join(KNOWN_CONTRASTS)} that all cases have)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--holdout", type=int, help="how many complete cases to hold out (default: a fifth, >= 1)")
    group.add_argument("--holdout-cases", help="comma-separated names of the cases to hold out")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"training steps at most (default "
                   f"{DEFAULT_STEPS}); the time budget may do fewer")
    p.add_argument("--minutes", type=float, default=25.0, help="time budget of the whole command in minutes "
                   "(default 25): after the first steps are timed, the steps are capped so that training, scoring "
                   "and export end within it; 0: no budget, all --steps")
    p.add_argument("--out", required=True, help="output folder: model.pt, report.md, and run/ (checkpoints, logs)")
    p.add_argument("--network-only", action="store_true", help="export the network alone (default: blended per "
                   "target with a voxel regression fitted on the training cases, at the shares best on the held-out "
                   "cases)")
    p.add_argument("--name", help="the model's name (default: collagan-<cohort>-<contrasts>)")
    p.add_argument("--about", help="JSON file with the card's intended_use, domain, limitations, description")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out pick")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training setting (value parsed as JSON), e.g. --set crop=0")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    from .config import _parse_value

    bad = [item for item in args.set if "=" not in item]
    if bad:
        raise SystemExit(f"--set {bad[0]}: give KEY=VALUE, e.g. --set crop=0.")
    args.set_values = [(k.strip(), _parse_value(v)) for k, v in (item.split("=", 1) for item in args.set)]
    if not hasattr(args, "argv"):
        args.argv = sys.argv[1:]
    cmd_finetune(args)


__all__ = ["FINETUNE_SETTINGS", "DEFAULT_STEPS", "finetune_config", "cmd_finetune", "add_parser"]
