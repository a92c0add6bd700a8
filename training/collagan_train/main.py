"""Command line: train (or resume) from a config, export a checkpoint, fit baselines, evaluate, report.

Run from the repository root:
    python -m training.collagan_train.main prepare ~/Downloads/BraTS2021_Training_Data ~/data/brats   # once
    python -m training.collagan_train.main prepare-lgg ~/Downloads/kaggle_3m ~/data/lgg   # the public data, once
    python -m training.collagan_train.main train --recipe brats ~/data/brats --out runs/brats   # model.pt, report.md
    python -m training.collagan_train.main train --recipe lgg --out runs/lgg   # the bundled model's stages
    python -m training.collagan_train.main train --resume runs/lgg/d/latest.pt
    torchrun --nproc_per_node 4 -m training.collagan_train.main train --recipe brats ~/data/brats --out runs/brats
    python -m training.collagan_train.main export --checkpoint runs/lgg/mean_g.pt --out runs/lgg/model.pt
    python -m training.collagan_train.main baseline --out runs/voxreg/voxreg.pt
    python -m training.collagan_train.main evaluate --model collagan=runs/lgg_cpu/model.pt --out runs/eval
    python -m training.collagan_train.main report --run voxreg=runs/eval_core/voxreg --run collagan=... --out r.md
    python -m training.collagan_train.main select runs/lgg_cpu/snapshots/g_*.pt --out runs/select --about CARD.json
    python -m training.collagan_train.main average BASE.pt FINE_TUNED.pt --out runs/soup/snapshots/g_soup.pt
    python -m training.collagan_train.main bundle runs/soup/snapshots/g_soup.pt --version v7 --out runs/v7 --about ...
    python -m training.collagan_train.main finetune ~/data/cohort --contrasts t1n,t1c,t2w,t2f --out runs/cohort
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import torch
import torch.distributed as dist
from CollaGANImputeLib.errors import CollaGANError

from .cases import repo_path
from .config import TrainConfig, load_config, make_config, read_recipe, recipe_names
from .data_loader import load_data
from .distributed import process_group


def cmd_train(args: argparse.Namespace) -> None:
    if args.cohort:  # a folder of cases: prepare, train, choose, score and export model.pt + report.md
        from .cohort_train import train_cohort

        train_cohort(args)
        return
    if args.resume:
        state = torch.load(args.resume, map_location="cpu", weights_only=False)
        # The checkpoint's own config, its folder as out_dir, then --set (e.g. a larger steps).
        base = {**state["config"], "out_dir": str(Path(args.resume).resolve().parent)}
        run_training(load_config(None, [f"{k}={json.dumps(v)}" for k, v in base.items()] + args.set), args.resume)
        return
    recipe = read_recipe(args.recipe or args.config or "base")
    out = args.out or f"runs/{recipe.path.stem}"
    if recipe.stages:
        from .stages import run_stages

        final = run_stages(recipe, repo_path(out), args.set, run_training)
        print(f"{final}: the recipe's generator; export it with: python -m training.collagan_train.main export "
              f"--checkpoint {final} --out {Path(out) / 'model.pt'}")
        return
    extra = [f"out_dir={out}"] if args.out or "out_dir" not in recipe.settings else []
    run_training(make_config(recipe.final, [*extra, *args.set]), None)


def run_training(cfg: TrainConfig, resume: Optional[str] = None) -> None:
    """Train (or continue ``resume``) one run with ``cfg``, under torchrun too (one process per rank)."""
    from .solver import Solver

    rank, world, device = process_group(cfg)
    train, val, split = load_data(cfg)
    out_dir = repo_path(cfg.out_dir)
    if resume:
        solver = Solver.from_checkpoint(resume, train, val, cfg, out_dir=str(out_dir), rank=rank, world=world,
                                        device=device)
    else:
        solver = Solver(cfg, train, val, out_dir=str(out_dir), rank=rank, world=world, device=device)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        (out_dir / "split_used.json").write_text(json.dumps(split, indent=2) + "\n")  # incl. set-aside patients
        with open(out_dir / "commands.txt", "a") as handle:
            handle.write(f"{'torchrun x' + str(world) + ' ' if world > 1 else ''}python -m "
                         f"training.collagan_train.main {shlex.join(sys.argv[1:])}\n")
        print(f"train slices {len(train)} ({len(split['train'])} cases), val slices {len(val)}; "
              f"{solver.steps_per_epoch} steps/epoch, classifier warm-up {solver.warmup} steps; device {device}, "
              f"{torch.get_num_threads()} threads, world {world}; out {out_dir}", flush=True)
    solver.train()
    if world > 1:
        # Release the DDP wrappers while the interpreter is alive: gloo work freed at interpreter exit can abort
        # the process after a finished run.
        del solver
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.collagan_train.main", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a recipe (on a cohort folder: prepared, scored, exported), or "
                           "resume a checkpoint")
    train.add_argument("cohort", nargs="?", metavar="COHORT_DIR",
                       help="a BraTS-layout download or prepare's OUT: prepared if needed, trained, the checkpoint "
                       "chosen on set-aside cases, OUT_DIR/model.pt and OUT_DIR/report.md written (default: the "
                       "recipe's own data, e.g. the LGG slices)")
    which = train.add_mutually_exclusive_group()
    which.add_argument("--recipe", help=f"a recipe by name ({', '.join(recipe_names())}) or a JSON file")
    which.add_argument("--config", help="a recipe or config JSON file (the same as --recipe FILE)")
    train.add_argument("--out", metavar="OUT_DIR", help="output folder (default: the recipe's out_dir, or runs/NAME)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting (value parsed as JSON) in every stage, e.g. --set steps=2000")
    train.add_argument("--resume", help="checkpoint to continue exactly (its config, then --set)")
    train.set_defaults(func=cmd_train)
    from . import (
        average,
        baselines,
        blend,
        bundle,
        choose,
        evaluate,
        export,
        finetune,
        prepare,
        prepare_lgg,
        report,
        select,
    )
    prepare.add_parser(sub)
    prepare_lgg.add_parser(sub)
    finetune.add_parser(sub)
    export.add_parser(sub)
    baselines.add_parser(sub)
    evaluate.add_parser(sub)
    report.add_parser(sub)
    choose.add_parser(sub)
    select.add_parser(sub)
    average.add_parser(sub)
    blend.add_parser(sub)
    bundle.add_parser(sub)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the commands.txt records
    try:
        args.func(args)
    except CollaGANError as exc:  # bad data or model: the core's one line naming the problem and the fix
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
