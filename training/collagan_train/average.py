"""Average the generator weights of snapshots of one lineage (weight-space ensembling); the training step's moving
average of the generator (:func:`ema_update`).

A generator fine-tuned from another sits in the same basin: the mean of their weights is a working generator
that often keeps most of the fine-tune's gain and less of its regressions (Wortsman et al., "Robust fine-tuning
of zero-shot models", CVPR 2022, WiSE-FT; "Model soups", ICML 2022). The result is a snapshot like any other
(``G``, ``step`` and ``config`` of the last input; each input's path, weight, steps and loss weights recorded in
``averaged_from``, which the card lists as ``weight_mean_of``), so ``select`` and ``export`` take it;
``split_used.json`` of the last input's run is copied beside it for ``select``.

Example:
    python -m training.collagan_train.main average training/checkpoints/lgg_v5_stage_g_g.pt \
        runs/v6_stage_i/snapshots/g_002000.pt --out runs/soup/snapshots/g_v5_i2000.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch
from CollaGANImputeLib.atomic import atomic_path

from .config import loss_settings
from .run_records import record_run


def average_generators(paths: Sequence[Path], weights: Optional[Sequence[float]] = None) -> dict:
    """The snapshot whose ``G`` is the weighted mean of the inputs' (equal weights by default)."""
    if len(paths) < 2:
        raise SystemExit("Give at least two snapshots to average.")
    weights = [1.0 / len(paths)] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths) or abs(sum(weights) - 1) > 1e-6 or min(weights) < 0:
        raise SystemExit(f"--weights {weights}: give one non-negative weight per snapshot, summing to 1.")
    states = [torch.load(p, map_location="cpu", weights_only=False) for p in paths]
    reference = states[-1]["G"]
    for path, state in zip(paths, states):
        if set(state["G"]) != set(reference) or any(state["G"][k].shape != v.shape for k, v in reference.items()):
            raise SystemExit(f"{path} has another generator architecture than {paths[-1]}: only snapshots of one "
                             "lineage (one fine-tuned from the other) can be averaged.")
    mean = {key: sum(w * s["G"][key].double() for w, s in zip(weights, states)).to(value.dtype)
            if value.is_floating_point() else value for key, value in reference.items()}
    inputs = [{"checkpoint": str(p), "weight": w, "steps": s.get("step"),
               "losses": loss_settings(s.get("config", {}))}
              for p, w, s in zip(paths, weights, states)]
    return {**states[-1], "G": mean, "averaged_from": inputs}


def ema_update(average: torch.nn.Module, live: torch.nn.Module, step: int, decay: float) -> None:
    """One step of the exponential moving average of ``live``'s weights in ``average``, with the usual warm-up:
    the average forgets the random start within about ten times its step count."""
    decay = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for avg, weight in zip(average.parameters(), live.parameters()):
            avg.lerp_(weight, 1 - decay)


def cmd_average(args: argparse.Namespace) -> None:
    paths = [Path(p) for p in args.snapshots]
    state = average_generators(paths, args.weights)
    out = Path(args.out)
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    command = ["average", *args.snapshots, "--out", args.out] + (
        ["--weights", *map(str, args.weights)] if args.weights else [])
    record_run(out, paths[-1], command)  # what select and export read: the last input's set-aside patients
    inputs = ", ".join(f"{m['weight']:.2f} x {m['checkpoint']}" for m in state["averaged_from"])
    print(f"{out}: mean of {inputs}")


def add_parser(sub) -> None:
    p = sub.add_parser("average", help="average the generator weights of snapshots of one lineage")
    p.add_argument("snapshots", nargs="+", help="generator snapshots or checkpoints (the last one's config is kept)")
    p.add_argument("--out", required=True)
    p.add_argument("--weights", nargs="+", type=float, help="one per snapshot, summing to 1 (default: equal)")
    p.set_defaults(func=cmd_average)
