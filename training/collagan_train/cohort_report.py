"""The held-out figures of a cohort run (``finetune``, ``train COHORT``): the report's Markdown (data, run, every
model on the held-out cases, the blend's choice) and the figures on the model's card.

Scoring stays in ``CollaGANImputeLib.evaluate``; this module only arranges its rows (one per case, target and
input set, as ``evaluate_cases`` gives them).

Example:
    >>> runs = {"fine-tuned": evaluate_cases(model, held_dirs)}          # doctest: +SKIP
    >>> print(scores_table(runs, ["t1n", "t1c", "t2w", "t2f"]))          # doctest: +SKIP
    | target | model | inputs | NMSE | PSNR (dB) | SSIM | ...
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .blend import SHARE_GRID, ShareChoice
from .cohort import Cohort
from .config import TrainConfig


def scores_table(runs: Dict[str, List[dict]], contrasts: Sequence[str]) -> str:
    """Per target: each model from every other contrast it takes, mean over the held-out cases.

    Example:
        >>> row = {"target": "t2w", "inputs": "t1n+t2f", "nmse": 0.1, "psnr": 25.0, "ssim": 0.8,
        ...        "identity_t": 0.2, "lesion_kept": None}
        >>> scores_table({"fine-tuned": [row]}, ["t2w"]).splitlines()[2]
        '| t2w | fine-tuned | t1n+t2f | 0.1000 | 25.00 | 0.8000 | +0.200 (1/1) | n/a |'
        >>> scores_table({"fine-tuned": [dict(row, lesion_kept=0.5)]}, ["t2w"]).splitlines()[2][-14:]
        '| 0.50 (n=1) |'
    """
    lines = ["| target | model | inputs | NMSE | PSNR (dB) | SSIM | tissue identity I_T (I_T > 0) "
             "| lesion kept K (median) |",
             "|---|---|---|---|---|---|---|---|"]
    for target in contrasts:
        for name, rows in runs.items():
            inputs, mine = _most_inputs(rows, target)
            if not mine:
                continue
            ident, kept = _finite(mine, "identity_t"), _finite(mine, "lesion_kept")
            nmse, psnr, ssim = (np.mean(v) if v else float("nan") for v in (_finite(mine, k) for k in
                                                                              ("nmse", "psnr", "ssim")))
            identity = f"{np.mean(ident):+.3f} ({sum(i > 0 for i in ident)}/{len(ident)})" if ident else "n/a"
            lesion = f"{np.median(kept):.2f} (n={len(kept)})" if kept else "n/a"  # as evaluate's table says it
            lines.append(f"| {target} | {name} | {inputs} | {nmse:.4f} | {psnr:.2f} | {ssim:.4f} | {identity} "
                         f"| {lesion} |")
    return "\n".join(lines) + "\n"


def _most_inputs(rows: List[dict], target: str) -> Tuple[str, List[dict]]:
    """The rows of ``target`` imputed from the largest input set among ``rows``, and that set ("" and [] if none)."""
    mine = [r for r in rows if r["target"] == target]
    if not mine:
        return "", []
    inputs = max({r["inputs"] for r in mine}, key=lambda s: len(s.split("+")))
    return inputs, [r for r in mine if r["inputs"] == inputs]


def bundled_ahead(runs: Dict[str, List[dict]], label: str, contrasts: Sequence[str]) -> str:
    """A line naming the targets where the bundled model's mean held-out NMSE is lower than the ``label`` model's
    (each from every other contrast it takes; also ``label`` from the bundled model's inputs where scored), or ""
    when there is none or no bundled model was scored.

    Example:
        >>> row = {"target": "t1c", "inputs": "t1n+t2f", "nmse": 0.0305}
        >>> runs = {"bundled": [row], "fine-tuned": [dict(row, inputs="t1n+t2w+t2f", nmse=0.032)]}
        >>> bundled_ahead(runs, "fine-tuned", ["t1c"])[:58]
        'The bundled model is closer on the held-out cases for t1c '
    """
    if "bundled" not in runs or label not in runs:
        return ""
    ahead = []
    for target in contrasts:
        theirs_inputs, theirs = _most_inputs(runs["bundled"], target)
        mine_inputs, mine = _most_inputs(runs[label], target)
        theirs_nmse, mine_nmse = (_finite(theirs, "nmse"), _finite(mine, "nmse"))
        if not theirs_nmse or not mine_nmse:
            continue
        theirs_mean, mine_mean = float(np.mean(theirs_nmse)), float(np.mean(mine_nmse))
        if mine_mean <= theirs_mean:
            continue
        same = _finite(_most_inputs(runs.get(f"{label}, bundled's inputs", []), target)[1], "nmse")
        ahead.append(f"{target} (NMSE {theirs_mean:.4f} from {theirs_inputs} against {mine_mean:.4f} from "
                     f"{mine_inputs}" + (f"; {np.mean(same):.4f} from {theirs_inputs}" if same else "") + ")")
    if not ahead:
        return ""
    return ("The bundled model is closer on the held-out cases for " + ", ".join(ahead) + ". For such a target, "
            "score both models on more cases (`collagan-impute evaluate`) before using this model's images instead.")


def _finite(rows: List[dict], key: str) -> List[float]:
    return [float(r[key]) for r in rows if r.get(key) is not None and np.isfinite(r[key])]


def card_figures(rows: List[dict], contrasts: Sequence[str], held: Sequence[str]) -> dict:
    """The card's held-out figures: per target (every other input), mean NMSE/PSNR/SSIM/I_T/I over cases.

    Example:
        >>> row = {"target": "t2w", "inputs": "t1n", "nmse": 0.1, "psnr": 25.0, "ssim": 0.8, "identity_t": 0.2,
        ...        "identity": 0.1}
        >>> card_figures([row], ["t1n", "t2w"], ["p19"])["t2w"]["nmse"]
        0.1
    """
    out: dict = {"protocol": "EVALUATION.md v3 via CollaGANImputeLib.evaluate.evaluate_cases (full volumes, masks "
                             "from the inputs, p99 units); checkpoint chosen on these same cases",
                 "held_out_cases": list(held)}
    for target in contrasts:
        mine = [r for r in rows if r["target"] == target and len(r["inputs"].split("+")) == len(contrasts) - 1]
        if mine:
            out[target] = {key: round(float(np.nanmean([r[key] for r in mine])), 4)
                           for key in ("nmse", "psnr", "ssim", "identity_t", "identity")}
    return out


def report_text(title: str, cohort: Cohort, cfg: TrainConfig, chosen_step: int, seconds: float,
                runs: Dict[str, List[dict]], reference: Optional[str] = None, added: Sequence[str] = (),
                unlike: Sequence[str] = (), label: str = "trained", discriminator: str = "", steps_note: str = ""
                ) -> str:
    """The Markdown report of a fine-tune or cohort training: data, run, and the models on the held-out cases.

    Example:
        >>> report_text("Fine-tuning on OpenMS", cohort, cfg, 200, 540.0, runs).splitlines()[0]   # doctest: +SKIP
        '# Fine-tuning on OpenMS'
    """
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
        "NMSE lower is better; PSNR, SSIM higher; tissue identity I_T > 0 means the synthetic image has the "
        "target's tissue contrast rather than an input's; lesion kept K is the share of the real lesion's contrast "
        "the synthetic image keeps (1 all, 0 none; n/a without a lesion mask or where the real lesion has no "
        "contrast); the bundled model has no row for contrasts it lacks. The head mask "
        f"comes from the inputs, so rows with other inputs score slightly different voxels: \"{label}, bundled's "
        "inputs\" scores that model exactly as the bundled one.", "",
        scores_table(runs, cfg.contrasts)]
        + ([ahead, ""] if (ahead := bundled_ahead(runs, label, cfg.contrasts)) else [])
        + ([f"The input check found the held-out scans unlike the training data of: {', '.join(unlike)}.", ""]
           if unlike else []))


def blend_section(choice: ShareChoice, contrasts: Sequence[str]) -> str:
    """The report's section on the blend: how the shares were chosen, and the choice per target.

    Example:
        >>> report += blend_section(cohort_blend(...), contrasts)   # doctest: +SKIP
    """
    return "\n".join([
        "", "## The blend with a polynomial", "",
        "The model is, per target, share x the network + (1 - share) x a quadratic polynomial of the inputs: the "
        "voxel regression fitted on the training cases or, for the bundled model's targets, the bundled model's "
        f"own. Each target takes the polynomial and share (of {', '.join(map(str, SHARE_GRID))}) with the lowest "
        "mean NMSE on the held-out cases among those that keep the target's tissue contrast (I_T > 0) in as many "
        "cases as the network alone and whose SSIM is not below the network alone's (every target from every "
        "other contrast):", "", choice.table(contrasts), ""])
