"""Fine-tune a bundled model on a cohort of complete cases, adding contrasts it lacks; score it against the bundled
model and a voxel regression on held-out cases; export it under the model contract with a report.

The bundled generator's weights are kept. A contrast the bundled model lacks gets a new input channel and a new
target plane in the first convolution (model.py: input = N contrasts, then N one-hot target planes) and a new
per-pixel coefficient: the input channel and coefficient start at zero, so the known imputations start exactly
where the bundled model is; the target plane starts as the mean of the known targets' planes (an "average
target" to move away from, rather than no target at all). After training, the network is blended per target with
a polynomial of the inputs (:func:`.blend.cohort_blend`). Checkpoints and the blend are chosen on the held-out
cases, and the same cases are scored, so the figures are a little optimistic (the report says so).

Example:
    python -m training.collagan_train.main finetune ~/data/cohort --from collagan-lgg-t1n-t1c-t2f \
        --contrasts t1n,t1c,t2w,t2f --holdout 2 --out runs/cohort_model
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from CollaGANImputeLib.case_files import read_case, training_profile_from_folders
from CollaGANImputeLib.contract import load_model, onnx_path_for
from CollaGANImputeLib.errors import InputCheckWarning, InputError
from CollaGANImputeLib.evaluate import evaluate_cases, score_imputation
from CollaGANImputeLib.io import OutputSet, find_case_files, find_lesion_mask, read_lesion_mask
from CollaGANImputeLib.resources import bundled_models

from .budget import TimeBudget
from .cases import REPO_ROOT, list_cases, select_cases
from .config import TrainConfig, recipe_overlay
from .data_loader import SliceData
from .prepare import SUMMARY

#: Bundled model name -> the training checkpoint of its network (the U-Net weights of the bundled file, which blends
#: them with a voxel regression fitted on its own training data: a new cohort fine-tunes the network alone).
BUNDLED_CHECKPOINTS = {"collagan-lgg-t1n-t1c-t2f": "training/checkpoints/lgg_v6_mean_g.pt"}
#: Bundled model name -> a discriminator trained against its (fixed) generator, where the adversarial or
#: classification loss is switched on (recipe lgg_discriminator).
BUNDLED_DISCRIMINATORS = {"collagan-lgg-t1n-t1c-t2f": "training/checkpoints/lgg_v6_d.pt"}
#: Contrast names looked for in a cohort when --contrasts is not given (BraTS 2023 names), in model order.
KNOWN_CONTRASTS = ("t1n", "t1c", "t2w", "t2f")
#: The first convolutions of the generator read the (2N)-channel model input.
FIRST_CONVS = ("encoders.0.0.conv1.weight", "encoders.0.0.conv3.weight")
#: Fine-tuning settings on top of the source model's own (recipe configs/finetune.json, which says why).
FINETUNE_SETTINGS = recipe_overlay("finetune")
DEFAULT_STEPS = int(FINETUNE_SETTINGS["steps"])


def expand_generator(weights: Dict[str, torch.Tensor], old: Sequence[str], new: Sequence[str]
                     ) -> Dict[str, torch.Tensor]:
    """A generator state dict for contrasts ``new`` from one for ``old``: the layers that read the contrast
    layout are re-indexed (known contrasts keep their weights, new ones get zero input weights and the mean target
    plane); every other layer is copied.

    Example:
        >>> from training.collagan_train.model import Generator
        >>> g = Generator(3, base=4, levels=3, input_coefficients=True)
        >>> big = expand_generator(g.state_dict(), ["t1n", "t1c", "t2f"], ["t1n", "t1c", "t2w", "t2f"])
        >>> Generator(4, base=4, levels=3, input_coefficients=True).load_state_dict(big)
        <All keys matched successfully>
    """
    if any(key.startswith("prior.") for key in weights):
        raise InputError("A generator with a voxel-regression prior cannot take new contrasts; fine-tune from a "
                         "model without one.")
    n_old, n_new = len(old), len(new)
    kept = [(old.index(c), new.index(c)) for c in new if c in old]
    added = [new.index(c) for c in new if c not in old]
    out = dict(weights)
    for key in FIRST_CONVS:
        w = weights[key]
        grown = w.new_zeros((w.shape[0], 2 * n_new, *w.shape[2:]))
        for i, j in kept:
            grown[:, j] = w[:, i]
            grown[:, n_new + j] = w[:, n_old + i]
        for j in added:
            grown[:, n_new + j] = w[:, n_old:].mean(dim=1)
        out[key] = grown
    for key in ("coef.weight", "coef.bias"):
        if key in weights:
            w = weights[key]
            grown = w.new_zeros((n_new, *w.shape[1:]))
            for i, j in kept:
                grown[j] = w[i]
            out[key] = grown
    return out


def cohort_folder(folder: Path) -> Tuple[Path, str]:
    """(the folder of case folders to fine-tune on, the cohort's name). ``prepare``'s output (``OUT/cohort.json``
    beside ``OUT/complete/``), given as OUT or as OUT/complete, is read from OUT/complete and named after OUT; any
    other folder is itself.

    Example:
        >>> cohort_folder(Path("data/openms"))   # after prepare SRC data/openms   # doctest: +SKIP
        (PosixPath('data/openms/complete'), 'openms')
    """
    folder = folder.resolve()
    if (folder / SUMMARY).is_file() and (folder / "complete").is_dir():
        return folder / "complete", folder.name
    if folder.name == "complete" and (folder.parent / SUMMARY).is_file():
        return folder, folder.parent.name
    return folder, folder.name


def cohort_cases(folder: Path, contrasts: Sequence[str]) -> Tuple[List[str], Dict[str, List[str]]]:
    """(complete cases, {incomplete case: the contrasts it lacks}) of the case folders in ``folder``."""
    complete, incomplete = [], {}
    for case in list_cases(folder):
        found = find_case_files(folder / case, contrasts)
        missing = [c for c in contrasts if c not in found]
        if missing:
            incomplete[case] = missing
        else:
            complete.append(case)
    return complete, incomplete


def default_contrasts(folder: Path) -> List[str]:
    """Every contrast of :data:`KNOWN_CONTRASTS` that all case folders have."""
    cases = list_cases(folder)
    found = [set(find_case_files(folder / case, KNOWN_CONTRASTS)) for case in cases]
    return [c for c in KNOWN_CONTRASTS if found and all(c in f for f in found)]


def pick_holdout(cases: Sequence[str], n: Optional[int], named: Sequence[str], seed: int) -> List[str]:
    """The held-out cases: those ``named``, else ``n`` picked with ``seed`` (default: a fifth, at least one)."""
    if named:
        absent = sorted(set(named) - set(cases))
        if absent:
            raise InputError(f"--holdout-cases {','.join(absent)}: not among the complete cases {list(cases)}.")
        held = sorted(named)
    else:
        held = select_cases(list(cases), max(1, round(len(cases) / 5)) if n is None else n, seed)
    if not held or len(held) >= len(cases):
        raise InputError(f"{len(cases)} complete case(s) cannot give {len(held)} held-out case(s) and still leave "
                         "one to train on: hold out fewer (--holdout N), or add complete cases.")
    return held


def finetune_config(base: dict, contrasts: Sequence[str], init_g: str, cohort: Path, run_dir: Path, steps: int,
                    overrides: Optional[dict] = None) -> TrainConfig:
    """The bundled recipe's config with :data:`FINETUNE_SETTINGS`, the cohort's contrasts, and per-target odds
    carried over (new contrasts get the largest: they start from nothing)."""
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


def scores_table(runs: Dict[str, List[dict]], contrasts: Sequence[str]) -> str:
    """Per target: each model from every other contrast it takes, mean over the held-out cases."""
    lines = ["| target | model | inputs | NMSE | PSNR (dB) | SSIM | tissue identity I_T (I_T > 0) "
             "| lesion kept K (median) |",
             "|---|---|---|---|---|---|---|---|"]
    for target in contrasts:
        for name, rows in runs.items():
            mine = [r for r in rows if r["target"] == target]
            if not mine:
                continue
            inputs = max({r["inputs"] for r in mine}, key=lambda s: len(s.split("+")))
            mine = [r for r in mine if r["inputs"] == inputs]
            ident, kept = _finite(mine, "identity_t"), _finite(mine, "lesion_kept")
            nmse, psnr, ssim = (np.mean(v) if v else float("nan") for v in (_finite(mine, k) for k in
                                                                              ("nmse", "psnr", "ssim")))
            lines.append(f"| {target} | {name} | {inputs} | {nmse:.4f} | {psnr:.2f} | {ssim:.4f} | "
                         f"{np.mean(ident) if ident else float('nan'):+.3f} ({sum(i > 0 for i in ident)}/{len(ident)})"
                         f" | {np.median(kept) if kept else float('nan'):.2f} |")
    return "\n".join(lines) + "\n"


def _finite(rows: List[dict], key: str) -> List[float]:
    return [float(r[key]) for r in rows if r.get(key) is not None and np.isfinite(r[key])]


def card_figures(rows: List[dict], contrasts: Sequence[str], held: Sequence[str]) -> dict:
    """The card's held-out figures: per target (every other input), mean NMSE/PSNR/SSIM/I_T/I over cases."""
    out: dict = {"protocol": "EVALUATION.md v3 via CollaGANImputeLib.evaluate.evaluate_cases (full volumes, masks "
                             "from the inputs, p99 units); checkpoint chosen on these same cases",
                 "held_out_cases": list(held)}
    for target in contrasts:
        mine = [r for r in rows if r["target"] == target and len(r["inputs"].split("+")) == len(contrasts) - 1]
        if mine:
            out[target] = {key: round(float(np.nanmean([r[key] for r in mine])), 4)
                           for key in ("nmse", "psnr", "ssim", "identity_t", "identity")}
    return out


def expand_discriminator(weights: Dict[str, torch.Tensor], old: Sequence[str], new: Sequence[str]
                         ) -> Dict[str, torch.Tensor]:
    """A discriminator state dict for contrasts ``new`` from one for ``old``: the classifier's rows re-indexed
    (an added contrast starts from the mean row); the contrast-blind layers copied.

    Example:
        >>> from training.collagan_train.model import Discriminator
        >>> four = ["t1n", "t1c", "t2w", "t2f"]
        >>> big = expand_discriminator(Discriminator(3).state_dict(), ["t1n", "t1c", "t2f"], four)
        >>> Discriminator(4).load_state_dict(big)
        <All keys matched successfully>
    """
    out = dict(weights)
    for key in ("clsf_head.weight", "clsf_head.bias"):
        w = weights[key]
        out[key] = torch.stack([w[old.index(c)] if c in old else w.mean(dim=0) for c in new])
    return out


def source_checkpoint(source: str) -> Tuple[str, dict]:
    """(the checkpoint's path as given or bundled, a training state with ``G`` and ``config``) of ``--from``: a
    bundled model's name, a training checkpoint file (``OUT/run/best.pt``) or a model file (``OUT/model.pt``)."""
    if source in BUNDLED_CHECKPOINTS:
        path = BUNDLED_CHECKPOINTS[source]
        return path, torch.load(REPO_ROOT / path, map_location="cpu", weights_only=False)
    file = Path(source).expanduser()
    if not file.is_file():
        raise InputError(f"--from {source}: no such bundled model or file; give one of "
                         f"{sorted(BUNDLED_CHECKPOINTS)}, a model file (model.pt) or a training checkpoint.")
    from .export import training_state

    state = training_state(file)  # None for a TorchScript archive (a model file)
    if state is not None and "G" in state and "config" in state:
        return str(file), state
    return str(file), model_file_state(file)


def model_file_state(path: Path) -> dict:
    """A training state from a model file: the generator's weights (the merged inference units split back into
    the training layout; of a model blended with a voxel regression, the network alone) and, for settings the file
    does not record, the lgg recipe's last stage."""
    from .config import read_recipe

    try:
        model = load_model(path)
    except Exception as exc:
        raise InputError(f"--from {path}: neither a model file nor a training checkpoint ({exc}).") from None
    arch = model.card.architecture
    blended = "unet_share" in arch  # a network blended with a polynomial: fine-tuning takes the network alone
    if not {"base_channels", "levels"} <= set(arch) or (arch.get("voxel_prior") and not blended):
        raise InputError(f"--from {path}: {model.card.name} is not a CollaGAN generator this can train further "
                         "(no U-Net architecture on its card, or a voxel-regression prior).")
    weights = {k: v for k, v in unmerge_units(model.module.state_dict()).items()
               if not (blended and (k == "mix" or k.startswith("prior.")))}
    config = {**read_recipe("lgg").final, "contrasts": list(model.card.contrasts), "g_base": arch["base_channels"],
              "g_levels": arch["levels"], "g_input_coefficients": bool(arch.get("input_coefficients")),
              "head_only_loss": model.card.outside_head == "zero"}
    return {"G": weights, "config": config}


def unmerge_units(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Generator weights in the training layout from an exported model's: each CCNR unit the export merged into one
    3x3 convolution (its 1x1 branch the first half of the channels, centre tap) or kept as two, with its norm as
    ``norm_weight``/``norm_bias`` (``CollaGANImputeLib.acceleration.fast_ccnr``), split back."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        unit, _, name = key.rpartition(".")
        if name in ("norm_weight", "norm_bias"):
            out[f"{unit}.norm.{name[5:]}"] = value
            continue
        owner = unit.rpartition(".")[0]
        if unit.endswith(".conv") and f"{owner}.norm_weight" in state:
            half = value.shape[0] // 2
            if name == "weight":
                out[f"{owner}.conv1.weight"] = value[:half, :, 1:2, 1:2].clone()
                out[f"{owner}.conv3.weight"] = value[half:].clone()
            else:
                out[f"{owner}.conv1.bias"], out[f"{owner}.conv3.bias"] = value[:half].clone(), value[half:].clone()
            continue
        out[key] = value
    return out


def _training_run(cfg: TrainConfig, train: SliceData, held: SliceData, weights: Optional[Dict[str, torch.Tensor]],
                  run_dir: Path, discriminator: Optional[Dict[str, torch.Tensor]] = None, rank: int = 0,
                  world: int = 1, device: Optional[torch.device] = None, budget: Optional[TimeBudget] = None
                  ) -> Path:
    """Train from ``weights`` (None: as ``cfg`` says; a run already in ``run_dir`` continues), within ``budget``
    (None: none); the checkpoint chosen on the held-out slices (the last one if none was)."""
    from .solver import Solver

    latest = run_dir / "latest.pt"
    if latest.is_file():
        solver = Solver.from_checkpoint(str(latest), train, held, cfg, out_dir=str(run_dir), rank=rank,
                                        world=world, device=device)
    else:
        solver = Solver(cfg, train, held, out_dir=str(run_dir), warm_start=weights is None, rank=rank, world=world,
                        device=device)
        if weights is not None:
            solver.G.load_state_dict(weights)
            if solver.G_ema is not None:
                solver.G_ema.load_state_dict(weights)
        if discriminator is not None:
            solver.D.load_state_dict(discriminator)
    if rank == 0:
        print(f"training {cfg.steps} steps on {len(train)} slices (batch {cfg.batch_size}, crops "
              f"{cfg.crop or 'none'}); checkpoints chosen on {len(held)} held-out slices", flush=True)
    solver.train(budget=budget)
    best = run_dir / "best.pt"
    return best if best.is_file() else latest


def _starting_discriminator(source: str, cfg: TrainConfig, old: Sequence[str]) -> Optional[Dict[str, torch.Tensor]]:
    """The shipped discriminator of ``source`` for ``cfg``'s contrasts, where ``cfg`` trains one (else None)."""
    if not (cfg.w_gan > 0 or cfg.w_g_clsf > 0 or cfg.w_d_clsf > 0) or source not in BUNDLED_DISCRIMINATORS:
        return None
    state = torch.load(REPO_ROOT / BUNDLED_DISCRIMINATORS[source], map_location="cpu", weights_only=False)
    return expand_discriminator(state["D"], old, cfg.contrasts)


def cmd_finetune(args: argparse.Namespace) -> None:
    from .checkpoints import generator_weights
    from .export import load_about

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
    discriminator = _starting_discriminator(args.source, cfg, old)
    # After training: every model scores each target it takes on every held-out slice (the fine-tuned one twice
    # when contrasts were added, also from the bundled model's inputs) and the voxel regression each target.
    # Before that, the choice of the blend runs the network and the voxel regression on every target.
    bundled = args.source in BUNDLED_CHECKPOINTS
    scored = ((2 + 2 * (not args.network_only)) * len(contrasts)
              + ((2 * len(old) if added else len(old)) + len(old) * (not args.network_only)) * bundled)
    budget = TimeBudget(started, args.minutes, after_slices=scored * len(held_data))
    chosen = _training_run(cfg, train, held_data, weights, run_dir, discriminator, budget=budget)
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


@dataclass
class Cohort:
    """The case folders of a cohort, as trained on: ``folder`` holds the ``train`` and ``held`` cases."""

    folder: Path
    name: str
    train: List[str]
    held: List[str]
    incomplete: Dict[str, List[str]]


def score_and_export(cohort: Cohort, cfg: TrainConfig, train: SliceData, chosen: Path, started: float, out: Path, *,
                     name: str, about: dict, description: str, training: dict, title: str,
                     reference: Optional[str], reference_contrasts: Sequence[str], label: str = "trained",
                     discriminator: str = "", steps_note: str = "", blend: bool = True) -> None:
    """Score the ``chosen`` checkpoint, a voxel regression fitted on the training slices and the bundled model
    ``reference`` (None: none) on the held-out cases with the core's evaluation, then write ``out/model.pt`` (the
    held-out figures in its card) and ``out/report.md`` together. Shared by ``finetune`` and ``train COHORT``.
    ``blend``: the model is the network blended per target with the voxel regression or the bundled model's
    polynomial (:func:`.blend.cohort_blend`, chosen on the held-out cases); else the network alone."""
    from .baselines import export_voxel_regression, fit
    from .blend import SHARE_GRID, cohort_blend
    from .export import export_checkpoint

    contrasts, run_dir = list(cfg.contrasts), Path(cfg.out_dir)
    chosen_step = int(torch.load(chosen, map_location="cpu", weights_only=False)["step"])
    train_seconds = time.time() - started
    coef = fit(np.asarray(train.images), np.asarray(train.masks), seed=cfg.seed, target_scale=train.target_scale)
    voxreg = export_voxel_regression(coef, contrasts, str(run_dir / "voxreg.pt"), training={
        "data": f"{len(cohort.train)} training cases of {cohort.name}", "train_slices": len(train)})
    profile = training_profile_from_folders([cohort.folder / c for c in cohort.train], contrasts,
                                            source=f"{len(cohort.train)} training cases of {cohort.name}")
    held_dirs = [cohort.folder / c for c in cohort.held]
    draft = export_checkpoint(str(chosen), str(run_dir / "network.pt"), name=name, metrics={},
                              description=description, input_profile=profile, about=about, training_overrides=training)
    choice = None
    bundled = bundled_model(reference) if reference else None
    if blend:  # the network blended with a polynomial, per target, at the shares best on the held-out cases
        print(f"choosing the blend with the voxel regression on {len(held_dirs)} held-out case(s) "
              f"({(time.time() - started) / 60:.1f} min)", flush=True)
        network, chosen = chosen, run_dir / "blended.pt"
        choice = cohort_blend(draft, network, coef, voxreg, held_dirs, contrasts, chosen, bundled)
        training = {**training, "blend": {"unet_share": dict(zip(contrasts, choice.shares)),
                                          "polynomial": dict(zip(contrasts, choice.sources)),
                                          "chosen_on": "mean NMSE on the held-out case(s), keeping I_T > 0 in as "
                                                       "many cases and SSIM as the network alone"}}
        draft = export_checkpoint(str(chosen), str(run_dir / "model.pt"), name=name, metrics={},
                                  description=description, input_profile=profile, about=about,
                                  training_overrides=training)
    old = [c for c in reference_contrasts if c in contrasts]
    added = [c for c in contrasts if c not in reference_contrasts]
    runs: Dict[str, List[dict]] = {}
    sources = {"bundled": bundled, "voxel regression": load_model(voxreg),
               label: load_model(draft)}
    unlike: List[str] = []
    for row_label, model in sources.items():
        if model is None:
            continue
        print(f"scoring {row_label} on {len(held_dirs)} held-out case(s) ({(time.time() - started) / 60:.1f} min)",
              flush=True)
        with warnings.catch_warnings(record=True) as caught:  # one line in the report instead of one per target
            warnings.simplefilter("always", InputCheckWarning)
            runs[row_label] = evaluate_cases(model, held_dirs, device="cpu")
            if model is sources[label] and added and "bundled" in runs:  # also from the bundled model's inputs
                runs[f"{label}, bundled's inputs"] = rows_from_inputs(model, held_dirs, old)
        if any(issubclass(w.category, InputCheckWarning) for w in caught):
            unlike.append(row_label)
    figures = card_figures(runs[label], contrasts, cohort.held)
    report = report_text(title, cohort, cfg, chosen_step, train_seconds, runs, reference, added, unlike, label,
                         discriminator, steps_note)
    if choice is not None:
        report += "\n".join([
            "", "## The blend with a polynomial", "",
            "The model is, per target, share x the network + (1 - share) x a quadratic polynomial of the inputs: the "
            "voxel regression fitted on the training cases or, for the bundled model's targets, the bundled model's "
            f"own. Each target takes the polynomial and share (of {', '.join(map(str, SHARE_GRID))}) with the lowest "
            "mean NMSE on the held-out cases among those that keep the target's tissue contrast (I_T > 0) in as many "
            "cases as the network alone and whose SSIM is not below the network alone's (every target from every "
            "other contrast):", "", choice.table(contrasts), ""])
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=run_dir) as folder, OutputSet() as outputs:
        # The export writes the TorchScript file and its ONNX export beside it: both, with the report, go into
        # OUT together or not at all.
        final = export_checkpoint(str(chosen), str(Path(folder) / "model.pt"), name=name, metrics=figures,
                                  description=description, input_profile=profile, about=about,
                                  training_overrides=training)
        for written in (final, onnx_path_for(final)):
            if written.is_file():
                outputs.stage(out / written.name, partial(shutil.copyfile, written), suffix=written.suffix)
        outputs.stage(out / "report.md", lambda tmp: Path(tmp).write_text(report), suffix=".md")
        outputs.commit()
    print(f"wrote {out / 'model.pt'} and {out / 'report.md'} ({(time.time() - started) / 60:.1f} min)")


def rows_from_inputs(model, case_dirs: Sequence[Path], contrasts: Sequence[str]) -> List[dict]:
    """Rows like ``evaluate_cases``'s, each target of ``contrasts`` imputed from the others of ``contrasts`` only:
    a model with added contrasts scored exactly as the model it came from (same inputs, same head mask)."""
    rows = []
    for folder in case_dirs:
        images = read_case(folder, contrasts)
        seg = find_lesion_mask(folder)
        lesion = read_lesion_mask(seg) if seg is not None else None
        for target in contrasts:
            inputs = [c for c in contrasts if c != target]
            scored = score_imputation(model, images, target, inputs, lesion, device="cpu")
            rows.append({"case": folder.name, "target": target, "inputs": "+".join(inputs),
                         "n_inputs": len(inputs), "model": model.card.name, **scored.scores})
    return rows


def bundled_model(name: str):
    """The bundled model ``name`` loaded (SHA-256 checked), or None when this installation does not ship it."""
    for entry in bundled_models():
        if entry.name == name:
            return entry.load("cpu")
    return None


def report_text(title: str, cohort: Cohort, cfg: TrainConfig, chosen_step: int, seconds: float,
                runs: Dict[str, List[dict]], reference: Optional[str] = None, added: Sequence[str] = (),
                unlike: Sequence[str] = (), label: str = "trained", discriminator: str = "", steps_note: str = ""
                ) -> str:
    """The Markdown report of a fine-tune or cohort training: data, run, and the models on the held-out cases."""
    left_out = "".join(f"\n- {case}: lacks {', '.join(missing)}" for case, missing in cohort.incomplete.items())
    adversarial = cfg.w_gan > 0 or cfg.w_g_clsf > 0
    return "\n".join([
        f"# {title}", "",
        f"- contrasts: {', '.join(cfg.contrasts)}" + (f" ({', '.join(added)} added to the bundled model's)"
                                                      if added and reference else ""),
        f"- trained on {len(cohort.train)} case(s): {', '.join(cohort.train)}",
        f"- held out {len(cohort.held)} case(s): {', '.join(cohort.held)} (checkpoint chosen and scored on them: the "
        "figures are a little optimistic; score other cases with `collagan-impute evaluate` for unbiased ones)",
        f"- left out, incomplete: {len(cohort.incomplete)}" + left_out,
        f"- {cfg.steps} steps of batch {cfg.batch_size} ({f'{cfg.crop}-pixel crops' if cfg.crop else 'full slices'}), "
        f"lr {cfg.lr_g}; "
        f"chosen checkpoint: step {chosen_step}; {seconds / 60:.1f} min for data and training"
        + (f"; steps: {steps_note}" if steps_note else ""),
        "- loss: " + (f"adversarial and classification terms on, the discriminator {discriminator or 'from scratch'}, "
                      if adversarial else "no adversarial term, ")
        + f"direct L1 x{cfg.w_direct_l1:g} + SSIM x{cfg.w_direct_ssim:g}"
        + (f" (lesion voxels x{cfg.lesion_weight:g})" if cfg.lesion_weight != 1 else ""), "",
        "## Held-out cases, every target from every other contrast the model takes (EVALUATION.md v3)", "",
        "NMSE lower is better; PSNR, SSIM higher; identity I > 0 means the synthetic image has the target's tissue "
        "contrast rather than an input's; the bundled model has no row for contrasts it lacks. The head mask "
        f"comes from the inputs, so rows with other inputs score slightly different voxels: \"{label}, bundled's "
        "inputs\" scores that model exactly as the bundled one.", "",
        scores_table(runs, cfg.contrasts)]
        + ([f"The input check found the held-out scans unlike the training data of: {', '.join(unlike)}.", ""]
           if unlike else []))


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


__all__ = ["expand_generator", "expand_discriminator", "cohort_cases", "pick_holdout", "finetune_config",
           "cmd_finetune", "score_and_export"]
