"""Blend a trained generator with the voxel regression, per target: ``share * U-Net + (1 - share) * polynomial``.

A CollaGAN generator and the voxel-regression baseline (a quadratic polynomial of the inputs) make different
errors, so a blend of the two can be more accurate than either; the share says, per target, how much of the image
is the network's. The polynomial is fitted here by least squares on the training patients of ``--config`` (the
set-aside patients left out, so that shares can be chosen on them), and the result is a generator snapshot like
any other (``G`` with the polynomial and the shares as buffers; ``config`` with ``g_voxel_prior`` and
``g_prior_mix``), which ``export``, ``select`` and ``evaluate`` take.

A cohort run (``finetune``, ``train COHORT``) chooses its shares itself on its held-out cases
(:func:`choose_shares`).

Example:
    python -m training.collagan_train.main blend training/checkpoints/lgg_v6_mean_g.pt --config lgg \
        --mix t1n=1,t1c=0.3,t2f=0.8 --out runs/blend/g_blend.pt
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch
from CollaGANImputeLib.atomic import atomic_path
from CollaGANImputeLib.case_files import read_case
from CollaGANImputeLib.fidelity import tissue_cells, tissue_identity
from CollaGANImputeLib.metrics import masked_mean, nmse, scored_target, ssim_map
from CollaGANImputeLib.pipeline import impute

from .baselines import fit
from .checkpoints import generator_weights
from .config import TrainConfig, load_config
from .data_loader import load_data
from .run_records import record_run


def parse_mix(text: str, contrasts: Sequence[str]) -> List[float]:
    """``t1n=1,t1c=0.3,t2f=0.8`` as one share per contrast in model order (:func:`shares_in_order`).

    Example:
        >>> parse_mix("t1n=1,t1c=0.3,t2f=0.8", ["t1n", "t1c", "t2f"])
        [1.0, 0.3, 0.8]
    """
    shares: Dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        try:
            shares[name.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"--mix {text}: '{part}' is not CONTRAST=SHARE (e.g. t1c=0.3).") from None
    return shares_in_order(shares, contrasts, f"--mix {text}")


def shares_in_order(shares: Mapping[str, float], contrasts: Sequence[str], where: str) -> List[float]:
    """The U-Net's share of each of ``contrasts`` in model order: every contrast named once, 0 to 1 (``where``
    names the source in the error)."""
    if sorted(shares) != sorted(contrasts) or not all(0.0 <= float(v) <= 1.0 for v in shares.values()):
        raise SystemExit(f"{where}: give each of {', '.join(contrasts)} once, with a share from 0 to 1 "
                         "(1: the network alone, 0: the voxel regression alone).")
    return [float(shares[c]) for c in contrasts]


#: The U-Net shares a cohort run tries per target.
SHARE_GRID = tuple(i / 10 for i in range(11))
#: The share choice's SSIM guard reads every this many axial slices (a third of the time; it only compares).
SSIM_STRIDE = 3


@dataclass
class ShareChoice:
    """Per target (model order): the chosen U-Net ``shares``, the polynomial each is blended with (``sources``, a
    name of :func:`choose_shares`'s ``polynomials``) and, on the cases they were chosen on, the mean NMSE of the
    network alone, of the first polynomial alone and of the blend, their SSIM and how many cases have ``I_T > 0``."""

    shares: List[float]
    sources: List[str]
    rows: List[dict]

    def table(self, contrasts: Sequence[str], first: str = "voxel regression") -> str:
        """The Markdown table of the choice, one row per target (``first``: the first polynomial's name)."""
        lines = [f"| target | polynomial | U-Net share | NMSE network | NMSE {first} | NMSE blend "
                 "| SSIM network / blend | I_T > 0 network / blend |", "|---|---|---|---|---|---|---|---|"]
        for name, source, share, row in zip(contrasts, self.sources, self.shares, self.rows):
            cases = row["cases"]
            lines.append(f"| {name} | {source} | {share:.1f} | {row['network']:.4f} | {row['regression']:.4f} | "
                         f"{row['blend']:.4f} | {row['ssim_network']:.3f} / {row['ssim_blend']:.3f} | "
                         f"{row['kept_network']}/{cases} / {row['kept_blend']}/{cases} |")
        return "\n".join(lines)


def choose_shares(network, polynomials: Mapping[str, Tuple[object, Sequence[str]]], case_dirs: Sequence[Path],
                  contrasts: Sequence[str], grid: Sequence[float] = SHARE_GRID) -> ShareChoice:
    """Per target, the polynomial and U-Net share of ``grid`` with the lowest mean NMSE on ``case_dirs`` (each
    target imputed from every other contrast, scored as EVALUATION.md v3 does) among those that keep the target's
    tissue contrast (``I_T > 0``) in as many cases as the network alone and whose mean SSIM (every
    ``SSIM_STRIDE``-th slice) is not below the network alone's: a blend must not trade the picture for NMSE. Ties go
    to the larger share, then to the earlier polynomial. ``network`` is a loaded model (the core's ``load_model``);
    ``polynomials`` maps a name to a loaded voxel-regression model of the same contrasts and the targets it may
    serve (the first: every target).

    Example:
        >>> choice = choose_shares(load_model(net), {"cohort": (load_model(vr), ["t1n", "t1c"])}, [Path("A")],
        ...                        ["t1n", "t1c"])                                           # doctest: +SKIP
        >>> choice.shares, choice.sources                                                    # doctest: +SKIP
        ([0.7, 0.4], ['cohort', 'cohort'])
    """
    names = list(polynomials)
    nmses = np.zeros((len(contrasts), len(names), len(grid)))
    kept = np.zeros((len(contrasts), len(names), len(grid)), dtype=int)
    ssims = np.zeros((len(contrasts), len(names), len(grid)))
    served = np.array([[target in serves for _, serves in polynomials.values()] for target in contrasts])
    every = slice(None, None, SSIM_STRIDE)
    for folder in case_dirs:
        images = read_case(Path(folder), contrasts)
        for t, target in enumerate(contrasts):
            # Each model imputes the target once; every share is scored from the two predictions.
            inputs = [c for c in contrasts if c != target]
            net = evaluation_imputation(network, images, target, inputs)
            real, region = scored_target(net.case.normalize_like_inputs(images[target]), net.case.mask)
            given = [net.case.arrays[c] for c in inputs]
            # The inputs' tissue cells (I_T) are the same for every blend of this target: binned once.
            cells = tissue_cells(given, region) if region.any() else None
            for p, (model, _) in enumerate(polynomials.values()):
                if not served[t, p]:
                    continue
                polynomial = evaluation_imputation(model, images, target, inputs).arrays[target]
                for g, share in enumerate(grid):
                    pred = share * net.arrays[target] + (1 - share) * polynomial
                    nmses[t, p, g] += nmse(pred, real, region) / len(case_dirs)
                    kept[t, p, g] += tissue_identity(pred, real, given, region, cells=cells) > 0
                    ssims[t, p, g] += masked_mean(ssim_map(pred[every], real[every], region[every]),
                                                  region[every]) / len(case_dirs)
    shares, sources, rows = [], [], []
    alone, regression_alone = int(np.argmax(grid)), int(np.argmin(grid))  # the grid holds 1 and 0
    for t in range(len(contrasts)):
        allowed = [(p, g) for p in range(len(names)) for g in range(len(grid)) if served[t, p]
                   and kept[t, p, g] >= kept[t, 0, alone] and ssims[t, p, g] >= ssims[t, 0, alone]]
        p, g = min(allowed, key=lambda pg: (round(float(nmses[t, pg[0], pg[1]]), 6), -grid[pg[1]], pg[0]))
        shares.append(float(grid[g]))
        sources.append(names[p] if grid[g] < 1 else names[0])
        rows.append({"network": float(nmses[t, 0, alone]), "regression": float(nmses[t, 0, regression_alone]),
                     "blend": float(nmses[t, p, g]), "kept_network": int(kept[t, 0, alone]),
                     "ssim_network": float(ssims[t, 0, alone]), "ssim_blend": float(ssims[t, p, g]),
                     "kept_blend": int(kept[t, p, g]), "cases": len(case_dirs)})
    return ShareChoice(shares, sources, rows)


def evaluation_imputation(model, images: Mapping[str, object], target: str, inputs: Sequence[str]):
    """``target`` imputed from ``inputs`` by ``model`` as ``CollaGANImputeLib.evaluate.score_imputation`` imputes it
    (fp32 on the CPU), without its scores: :func:`choose_shares` scores the blends of the predictions instead.

    Example:
        >>> result = evaluation_imputation(model, read_case(folder, contrasts), "t2f", ["t1n", "t1c"])  # doctest: +SKIP
        >>> result.arrays["t2f"].shape == result.case.mask.shape                                     # doctest: +SKIP
        True
    """
    return impute({c: images[c] for c in inputs}, model, targets=[target], device="cpu", precision="fp32")


def blended_state(state: dict, coef: torch.Tensor, mix: Sequence[float], source: str = "") -> dict:
    """The snapshot of ``state``'s generator (read from ``source``) blended with the polynomial ``coef``
    (N, 2**N, F) at shares ``mix``."""
    config = dict(state["config"])
    if config.get("g_voxel_prior"):
        raise SystemExit("This generator already adds a voxel-regression polynomial; blend a generator without one.")
    shares = [float(m) for m in mix]
    weights = dict(generator_weights(state))
    weights["prior.coef"] = coef.float()
    weights["prior.bits"] = 2 ** torch.arange(len(config["contrasts"]))
    weights["mix"] = torch.tensor(shares)
    config.update(g_voxel_prior=True, g_prior_mix=shares)
    blended = {k: v for k, v in state.items() if k not in ("G", "G_ema", "D", "opt_g", "opt_d")}
    return {**blended, "G": weights, "config": config,
            "blended_from": {"checkpoint": Path(source).name, "mix": dict(zip(config["contrasts"], shares))}}


def cohort_blend(network_file: Path, checkpoint: Path, coef: torch.Tensor, regression_file: Path,
                 case_dirs: Sequence[Path], contrasts: Sequence[str], out: Path, bundled=None) -> ShareChoice:
    """Choose, on ``case_dirs``, the blend of a cohort run's network (the model file ``network_file`` exported from
    ``checkpoint``) with the cohort's voxel regression (``coef``, exported as ``regression_file``) and, for the
    targets of a ``bundled`` model (loaded, None: none) that blends with a polynomial of its own, also with that
    polynomial (:func:`choose_shares`); write the blended snapshot ``out`` and return the choice."""
    from CollaGANImputeLib.contract import load_model

    from .baselines import export_voxel_regression
    from .voxel_regression import embed_polynomial

    polynomials = {"voxel regression": (load_model(regression_file), list(contrasts))}
    coefs = {"voxel regression": coef.float()}
    own = bundled.module.state_dict().get("prior.coef") if bundled is not None else None
    if own is not None:  # e.g. the bundled LGG model's T1+Gd is 70 % its polynomial, which carries to other scans
        known = [c for c in bundled.card.contrasts if c in contrasts]
        wide = embed_polynomial(own.float(), bundled.card.contrasts, contrasts, coef.float())
        path = export_voxel_regression(wide, contrasts, str(out.parent / "bundled_polynomial.pt"))
        polynomials["bundled model's"] = (load_model(path), known)
        coefs["bundled model's"] = wide
    choice = choose_shares(load_model(network_file), polynomials, case_dirs, contrasts)
    mixed = torch.stack([coefs[source][t] for t, source in enumerate(choice.sources)])
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    blended = blended_state(state, mixed, choice.shares, str(checkpoint))
    blended["blended_from"]["polynomial"] = dict(zip(contrasts, choice.sources))
    with atomic_path(out) as tmp:
        torch.save(blended, tmp)
    return choice


def blend_checkpoint(checkpoint: Path, cfg: TrainConfig, mix: Sequence[float], out: Path,
                     command: Sequence[str] = ()) -> Path:
    """Write ``out``: ``checkpoint``'s generator blended at shares ``mix`` with the polynomial fitted on ``cfg``'s
    training patients (its set-aside patients left out); ``command`` is recorded in the run's commands.txt."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    train, _, split = load_data(cfg)
    coef = fit(train.images, train.masks, seed=cfg.seed, target_scale=train.target_scale)
    blended = blended_state(state, coef, mix, str(checkpoint))
    blended["blended_from"]["polynomial"] = (f"voxel regression (quadratic) fitted on the {len(split['train'])} "
                                             "training patients")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save(blended, tmp)
    record_run(out, checkpoint, command)
    print(f"{out}: {checkpoint} blended with the voxel regression, U-Net share "
          + ", ".join(f"{c} {m:.2f}" for c, m in zip(cfg.contrasts, mix)), flush=True)
    return out


def cmd_blend(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.set)
    mix = parse_mix(args.mix, cfg.contrasts)
    blend_checkpoint(Path(args.checkpoint), cfg, mix, Path(args.out), args.argv)


def add_parser(sub) -> None:
    p = sub.add_parser("blend", help="blend a generator with the voxel regression, per target")
    p.add_argument("checkpoint", help="generator snapshot or checkpoint (without a voxel prior)")
    p.add_argument("--mix", required=True, help="the U-Net's share per target, e.g. t1n=1,t1c=0.3,t2f=0.8")
    p.add_argument("--config", default="lgg", help="recipe whose training patients fit the polynomial (default lgg)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_blend)
