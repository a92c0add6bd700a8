"""Export a trained generator as a CollaGANImpute TorchScript model with a full model card, and check that
the exported file gives the eager model's output.

Example:
    python -m training.collagan_train.main export --checkpoint runs/lgg_cpu/best.pt --out runs/lgg_cpu/model.pt
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
from pathlib import Path
from typing import Optional

import torch
from CollaGANImputeLib.contract import ModelCard, load_model, save_model

from .config import TrainConfig
from .model import count_parameters
from .solver import generator_from_checkpoint

LICENCE = "CC BY-NC-SA 4.0 (inherited from the TCGA-LGG curated set; research use only)"
DATA = ("TCGA-LGG (TCIA) as curated by Buda et al. 2019 / Mazurowski et al. 2017 (kaggle_3m 'LGG segmentation'), "
        "BraTS-named NIfTI: t1n, t1c, t2f")


def check_export(eager: torch.nn.Module, path: Path, x: torch.Tensor, atol: float = 1e-5) -> float:
    """Max |exported - eager| on ``x``; raises if above ``atol``."""
    loaded = load_model(path)
    eager.eval()
    with torch.no_grad():
        diff = float((loaded.module(x) - eager(x)).abs().max())
    if not diff <= atol:
        raise RuntimeError(f"Exported model {path} differs from the eager model by {diff:.3g} (> {atol}).")
    return diff


def last_validation(run_dir: Path) -> dict:
    path = run_dir / "val.csv"
    if not path.is_file():
        return {}
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    best = min(rows, key=lambda r: float(r["mean_nmse"]))
    return {"protocol": "training validation: fixed validation slices, full 256x256, all other inputs, "
                        "CollaGANImputeLib.metrics (not the full-volume evaluation of evaluate.py)",
            **{k: float(v) for k, v in best.items()}}


def warm_start_lineage(cfg: TrainConfig, max_depth: int = 5) -> list:
    """The runs this one was warm-started from (``init_g``, followed back): method, steps, cost, commands.

    Why: a staged recipe's card must name every stage, not only the last one's command and cost.
    """
    from .data_loader import repo_path

    stages, init = [], cfg.init_g
    while init and len(stages) < max_depth:
        path = repo_path(init)
        stage = {"checkpoint": init}
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=False)
            theirs = state.get("config", {})
            commands = path.parent / "commands.txt"
            stage.update(method=theirs.get("method"), steps=state.get("step"),
                         hours=round(state.get("train_seconds", 0.0) / 3600, 2),
                         command=commands.read_text().splitlines() if commands.is_file() else [])
            init = theirs.get("init_g", "")
        else:
            init = ""
        stages.append(stage)
    return stages


def _optimized(g: torch.nn.Module) -> torch.nn.Module:
    """The core's exact export-time rewrite of the CCNR units (faster inference, same contract), when the
    installed core has it; the plain generator otherwise."""
    try:
        from CollaGANImputeLib.acceleration import optimize_for_inference
    except ImportError:
        return g
    return optimize_for_inference(g)


def export_checkpoint(checkpoint: str, out: str, name: Optional[str] = None, metrics: Optional[dict] = None,
                      description: str = "", optimize: bool = True) -> Path:
    """Write ``out`` from ``checkpoint`` (G weights + config) through ``CollaGANImputeLib.save_model``.

    With ``optimize`` the CCNR units are rewritten by ``CollaGANImputeLib.acceleration.optimize_for_inference``
    (same function, ~1e-6 apart in fp32); the file is checked against the original eager generator either way.
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    g, cfg = generator_from_checkpoint(state)
    run_dir = Path(checkpoint).resolve().parent
    commands = (run_dir / "commands.txt").read_text().splitlines() if (run_dir / "commands.txt").is_file() else []
    split_file = Path(__file__).resolve().parents[2] / cfg.split_file
    split = json.loads(split_file.read_text()) if split_file.is_file() else {}
    card = ModelCard(
        name=name or f"collagan-{cfg.method}-{'-'.join(cfg.contrasts)}",
        contrasts=list(cfg.contrasts),
        in_plane_size=(256, 256),
        architecture={"generator": "CCNR U-Net (CollaGAN CVPR 2019 Table 2)" + (
                          " added to a fixed voxel-regression polynomial (voxel prior)" if cfg.g_voxel_prior else ""),
                      "base_channels": cfg.g_base, "levels": cfg.g_levels, "parameters": count_parameters(g),
                      "voxel_prior": cfg.g_voxel_prior,
                      "input": f"(B, {2 * len(cfg.contrasts)}, H, W): contrasts + one-hot target planes",
                      "any_size": f"H, W divisible by {2 ** (cfg.g_levels - 1)}"},
        training={"data": DATA, "split": f"{cfg.split_file}: {len(split.get('train', []))} train / "
                                          f"{len(split.get('val', []))} validation patients",
                  "method": cfg.method, "steps": state["step"], "epochs": state["epoch"],
                  "batch_size": cfg.batch_size, "crop": cfg.crop,
                  "losses": {k: getattr(cfg, k) for k in ("w_cyc_l1", "w_cyc_ssim", "w_gan", "w_g_clsf",
                                                            "w_d_clsf", "w_direct_l1", "w_direct_l2",
                                                            "w_direct_ssim", "head_only_loss")},
                  "optimizer": f"Adam lr_g {cfg.lr_g} lr_d {cfg.lr_d} betas ({cfg.beta1}, {cfg.beta2}), "
                               f"x{cfg.lr_decay}/{cfg.lr_decay_every} steps, G weight decay {cfg.weight_decay_g}",
                  "input_dropout_max_extra": cfg.input_dropout_max_extra, "single_input": cfg.single_input,
                  "command": commands, "cost": f"{state['train_seconds'] / 3600:.2f} h of training steps on "
                  f"{platform.processor() or platform.machine()} ({state.get('world', 1)} process(es))",
                  "checkpoint": Path(checkpoint).name, "warm_start": warm_start_lineage(cfg)},
        outside_head=cfg.outside_head,
        licence=LICENCE,
        metrics=metrics if metrics is not None else last_validation(run_dir),
        description=description or "CollaGAN generator imputing one MR contrast from the others; research use "
                                   "only, not for diagnosis. Outputs are synthetic.",
    )
    path = Path(out)
    save_model(_optimized(g) if optimize else g, card, path)
    x = torch.rand(2, 2 * len(cfg.contrasts), 64, 64)
    x[:, len(cfg.contrasts):] = 0
    x[:, len(cfg.contrasts)] = 1
    check_export(g, path, x)
    return path


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint as a CollaGANImpute TorchScript model")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name")
    p.add_argument("--metrics", help="JSON file of metrics for the card (e.g. evaluate's summary.json)")
    p.add_argument("--description", default="", help="model card description (default: a generic one)")
    p.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="export the plain generator, without the core's fast-CCNR rewrite")
    p.set_defaults(func=lambda a: print(export_checkpoint(
        a.checkpoint, a.out, a.name, json.loads(Path(a.metrics).read_text()) if a.metrics else None,
        a.description, a.optimize)))


def _main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)
