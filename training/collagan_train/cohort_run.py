"""A cohort run's training and delivery, shared by ``finetune`` and ``train COHORT``: train from given weights
within a time budget, choosing the checkpoint on the held-out slices; then score it, a voxel regression fitted on
the training slices and the bundled model on the held-out cases, blend the network with a polynomial per target
(:func:`.blend.cohort_blend`), and write ``OUT/model.pt`` (its ONNX export beside it, the held-out figures on its
card) and ``OUT/report.md`` together.

Example:
    >>> chosen = training_run(cfg, train, held_data, weights, run_dir, budget=budget)          # doctest: +SKIP
    >>> score_and_export(cohort, cfg, train, chosen, started, out, name="collagan-openms", about={},
    ...                  description="...", training={}, title="Fine-tuning on OpenMS", reference=None,
    ...                  reference_contrasts=["t1n", "t1c", "t2f"])                         # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from CollaGANImputeLib.case_files import read_case, training_profile_from_folders
from CollaGANImputeLib.contract import copy_with_card, load_model, onnx_path_for, read_card
from CollaGANImputeLib.errors import InputCheckWarning
from CollaGANImputeLib.evaluate import evaluate_cases, score_imputation
from CollaGANImputeLib.io import OutputSet, find_lesion_mask, read_lesion_mask
from CollaGANImputeLib.resources import bundled_models

from .baselines import export_voxel_regression, fit
from .blend import cohort_blend
from .budget import TimeBudget
from .cohort import Cohort
from .cohort_report import blend_section, card_figures, report_text
from .config import TrainConfig
from .data_loader import SliceData
from .export import export_checkpoint
from .solver import Solver


def training_run(cfg: TrainConfig, train: SliceData, held: SliceData, weights: Optional[Dict[str, torch.Tensor]],
                 run_dir: Path, discriminator: Optional[Dict[str, torch.Tensor]] = None, rank: int = 0,
                 world: int = 1, device: Optional[torch.device] = None, budget: Optional[TimeBudget] = None
                 ) -> Path:
    """Train from ``weights`` (None: as ``cfg`` says; a run already in ``run_dir`` continues), within ``budget``
    (None: none); the checkpoint chosen on the held-out slices (the last one if none was).

    Example:
        >>> training_run(cfg, train, held, weights, Path("runs/openms/run"))   # doctest: +SKIP
        PosixPath('runs/openms/run/best.pt')
    """
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


def score_and_export(cohort: Cohort, cfg: TrainConfig, train: SliceData, chosen: Path, started: float, out: Path, *,
                     name: str, about: dict, description: str, training: dict, title: str,
                     reference: Optional[str], reference_contrasts: Sequence[str], label: str = "trained",
                     discriminator: str = "", steps_note: str = "", blend: bool = True) -> None:
    """Score the ``chosen`` checkpoint, a voxel regression fitted on the training slices and the bundled model
    ``reference`` (None: none) on the held-out cases with the core's evaluation, then write ``out/model.pt`` (the
    held-out figures in its card) and ``out/report.md`` together. Shared by ``finetune`` and ``train COHORT``.
    Each network is exported once: ``run/network.pt`` and, with ``blend``, the blend ``run/model.pt``; the one
    scored goes to OUT with the figures written into its card (``CollaGANImputeLib.contract.copy_with_card``).
    ``blend``: the model is the network blended per target with the voxel regression or the bundled model's
    polynomial (:func:`.blend.cohort_blend`, chosen on the held-out cases); else the network alone."""
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
        report += blend_section(choice, contrasts)
    out.mkdir(parents=True, exist_ok=True)
    card = dataclasses.replace(read_card(draft), metrics=figures)
    with tempfile.TemporaryDirectory(dir=run_dir) as folder, OutputSet() as outputs:
        # The scored draft (checked against its checkpoint when exported) with the figures on its card, not
        # exported again: the TorchScript file and its ONNX export beside it, with the report, go into OUT
        # together or not at all.
        final = copy_with_card(draft, Path(folder) / "model.pt", card)
        for written in (final, onnx_path_for(final)):
            if written.is_file():
                outputs.stage(out / written.name, partial(shutil.copyfile, written), suffix=written.suffix)
        outputs.stage(out / "report.md", lambda tmp: Path(tmp).write_text(report), suffix=".md")
        outputs.commit()
    print(f"wrote {out / 'model.pt'} and {out / 'report.md'} ({(time.time() - started) / 60:.1f} min)")


def rows_from_inputs(model, case_dirs: Sequence[Path], contrasts: Sequence[str]) -> List[dict]:
    """Rows like ``evaluate_cases``'s, each target of ``contrasts`` imputed from the others of ``contrasts`` only:
    a model with added contrasts scored exactly as the model it came from (same inputs, same head mask).

    Example:
        >>> rows = rows_from_inputs(model, [Path("data/openms/complete/OpenMS-patient19")],
        ...                         ["t1n", "t1c", "t2f"])                                    # doctest: +SKIP
        >>> rows[0]["target"], rows[0]["inputs"]                                              # doctest: +SKIP
        ('t1n', 't1c+t2f')
    """
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
    """The bundled model ``name`` loaded (SHA-256 checked), or None when this installation does not ship it.

    Example:
        >>> bundled_model("collagan-lgg-t1n-t1c-t2f").card.contrasts   # doctest: +SKIP
        ['t1n', 't1c', 't2f']
    """
    for entry in bundled_models():
        if entry.name == name:
            return entry.load("cpu")
    return None
