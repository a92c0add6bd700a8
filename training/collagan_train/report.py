"""Side-by-side tables from several ``collagan-impute evaluate`` runs (one per model): the main comparison
(every target from all other inputs), per-patient wins, and the missing-N study (``--all-subsets``).

Each run folder holds the core's ``scores.json`` (rows per case, target and input set). This module only
reads and arranges those numbers; scoring stays in ``CollaGANImputeLib.evaluate`` / ``metrics``.

Example:
    python -m training.collagan_train.main report --run voxreg=runs/eval_core/voxreg \
        --run collagan=runs/eval_core/collagan --out runs/eval_core/report.md --card-metrics runs/eval_core/card.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from CollaGANImputeLib.atomic import write_text_atomic
from CollaGANImputeLib.labels import METRIC_LABELS

#: (key, column title, higher is better, digits) of the side-by-side tables, from the core's one table of labels
METRICS = tuple((key, METRIC_LABELS[key].column, METRIC_LABELS[key].higher_is_better, METRIC_LABELS[key].digits)
                for key in ("nmse", "psnr", "ssim", "lesion_nmse", "lesion_ssim"))


def load_rows(run_dir: Path) -> List[dict]:
    """Rows of one evaluate run; refuses a folder without the core's scores.json."""
    path = Path(run_dir) / "scores.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `collagan-impute evaluate ... --out {run_dir}` first.")
    return json.loads(path.read_text())["cases"]


def case_values(rows: List[dict], target: str, inputs: str, metric: str) -> Dict[str, float]:
    """{case: value} of finite values (lesion scores are null for cases without lesion voxels)."""
    out = {}
    for r in rows:
        v = r.get(metric)
        if r["target"] == target and r["inputs"] == inputs and v is not None and math.isfinite(v):
            out[r["case"]] = float(v)
    return out


def _cell(values: Dict[str, float], digits: int, bold: bool) -> str:
    if not values:
        return "n/a"
    arr = np.array(list(values.values()))
    text = f"{arr.mean():.{digits}f} ± {arr.std():.{digits}f}"
    return f"**{text}**" if bold else text


def full_inputs(contrasts: Sequence[str], target: str) -> str:
    return "+".join(c for c in contrasts if c != target)


def comparison_tables(runs: Dict[str, List[dict]], contrasts: Sequence[str]) -> str:
    """Per metric: one row per target (from all other inputs), methods side by side, best in bold."""
    names = list(runs)
    lines: List[str] = []
    for metric, label, higher, digits in METRICS:
        lines += [f"**{label}** ({'higher' if higher else 'lower'} is better)", "",
                  "| target | inputs | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for t in contrasts:
            inputs = full_inputs(contrasts, t)
            vals = {m: case_values(runs[m], t, inputs, metric) for m in names}
            means = {m: np.mean(list(v.values())) for m, v in vals.items() if v}
            best = (max if higher else min)(means, key=means.get) if means else None
            cells = [_cell(vals[m], digits, m == best and len(means) > 1) for m in names]
            lines.append(f"| {t} | {inputs} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def fidelity_table(runs: Dict[str, List[dict]], contrasts: Sequence[str]) -> str:
    """EVALUATION.md's fidelity checks per target and method: tissue-contrast identity I_T (mean, patients with
    I_T > 0), kept lesion contrast K (median) and the lesion contrast C, real -> synthetic (means)."""
    names = list(runs)
    lines = ["| target | inputs | "
             + " | ".join(f"{m} I_T (I_T > 0) | {m} K median | {m} C real → synth" for m in names) + " |",
             "|---|---|" + "---|---|---|" * len(names)]
    for t in contrasts:
        inputs = full_inputs(contrasts, t)
        cells = []
        for m in names:
            ident = case_values(runs[m], t, inputs, "identity_t")
            kept = case_values(runs[m], t, inputs, "lesion_kept")
            c_real = case_values(runs[m], t, inputs, "lesion_contrast_real")
            c_pred = case_values(runs[m], t, inputs, "lesion_contrast_pred")
            arr = np.array(list(ident.values()))
            cells.append(f"{arr.mean():+.3f} ({int((arr > 0).sum())}/{arr.size})" if ident else "n/a")
            cells.append(f"{np.median(list(kept.values())):.2f}" if kept else "n/a")
            cells.append(f"{np.mean(list(c_real.values())):.2f} → {np.mean(list(c_pred.values())):.2f}"
                         if c_real and c_pred else "n/a")
        lines.append(f"| {t} | {inputs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def wins_table(runs: Dict[str, List[dict]], contrasts: Sequence[str], challenger: str, reference: str) -> str:
    """How many patients ``challenger`` beats ``reference`` on (paired by case), per target and metric."""
    lines = ["| target | " + " | ".join(label for _, label, _, _ in METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for t in contrasts:
        inputs = full_inputs(contrasts, t)
        cells = []
        for metric, _, higher, _ in METRICS:
            a = case_values(runs[challenger], t, inputs, metric)
            b = case_values(runs[reference], t, inputs, metric)
            cases = sorted(set(a) & set(b))
            wins = sum((a[c] > b[c]) if higher else (a[c] < b[c]) for c in cases)
            cells.append(f"{wins}/{len(cases)}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def missing_n_table(runs: Dict[str, List[dict]], contrasts: Sequence[str]) -> str:
    """The missing-N study: every target from each input set (two inputs, then each single input)."""
    names = list(runs)
    header = "| target | inputs | " + " | ".join(f"{m} NMSE | {m} SSIM" for m in names) + " |"
    lines = [header, "|---|---|" + "---|---|" * len(names)]
    for t in contrasts:
        sets = sorted({r["inputs"] for rows in runs.values() for r in rows if r["target"] == t},
                      key=lambda s: (-len(s.split("+")), s))
        for inputs in sets:
            cells = []
            for m in names:
                cells += [_cell(case_values(runs[m], t, inputs, "nmse"), 4, False),
                          _cell(case_values(runs[m], t, inputs, "ssim"), 4, False)]
            lines.append(f"| {t} | {inputs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def card_metrics(runs: Dict[str, List[dict]], contrasts: Sequence[str], model: str) -> dict:
    """Compact validation metrics for the model card: mean per target (all other inputs) for every run."""
    cases = sorted({r["case"] for r in runs[model]})
    out: dict = {"protocol": "EVALUATION.md v3 via `collagan-impute evaluate --split training/splits/"
                             "lgg_split.json` (full volumes, masks from inputs, p99 units)",
                 "validation_patients": len(cases)}
    for m, rows in runs.items():
        out[m] = {}
        for t in contrasts:
            inputs = full_inputs(contrasts, t)
            entry = {metric: round(float(np.mean(list(v.values()))), 4)
                     for metric, *_ in METRICS if (v := case_values(rows, t, inputs, metric))}
            for key in ("identity_t", "identity"):  # EVALUATION.md's fidelity checks (I_T the bar)
                if ident := case_values(rows, t, inputs, key):
                    entry[key] = round(float(np.mean(list(ident.values()))), 4)
                    entry[f"{key}_positive"] = f"{sum(v > 0 for v in ident.values())}/{len(ident)}"
            if kept := case_values(rows, t, inputs, "lesion_kept"):
                entry["lesion_kept_median"] = round(float(np.median(list(kept.values()))), 3)
            out[m][f"{t}<-{inputs}"] = entry
    return out


def report_text(runs: Dict[str, List[dict]], contrasts: Sequence[str], challenger: str, reference: str) -> str:
    """The Markdown report: comparison and fidelity tables, paired wins of ``challenger`` over ``reference``, and
    the missing-N study."""
    return "\n".join(["## Every target from all other inputs (mean ± std over patients; best in bold)", "",
                      comparison_tables(runs, contrasts),
                      "## Fidelity (EVALUATION.md v3): is it the target contrast, is the lesion there", "",
                      fidelity_table(runs, contrasts),
                      f"## Patients on which {challenger} beats {reference} (paired)", "",
                      wins_table(runs, contrasts, challenger, reference),
                      "## Missing-N study: each target from two inputs and from each single input", "",
                      missing_n_table(runs, contrasts)])


def cmd_report(args: argparse.Namespace) -> None:
    runs: Dict[str, List[dict]] = {}
    for item in args.run:
        name, _, folder = item.rpartition("=")
        runs[name or Path(folder).name] = load_rows(Path(folder))
    contrasts = args.contrasts
    challenger = args.challenger or list(runs)[-1]
    reference = args.reference or list(runs)[0]
    text = report_text(runs, contrasts, challenger, reference)
    write_text_atomic(Path(args.out), text)
    if args.card_metrics:
        write_text_atomic(Path(args.card_metrics), json.dumps(card_metrics(runs, contrasts, challenger), indent=2))
    print(text)


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="side-by-side tables from several `collagan-impute evaluate` folders")
    p.add_argument("--run", action="append", required=True, metavar="NAME=FOLDER",
                   help="an evaluate --out folder (holding scores.json); the first is the reference")
    p.add_argument("--out", required=True, help="Markdown file to write")
    p.add_argument("--contrasts", nargs="+", default=["t1n", "t1c", "t2f"])
    p.add_argument("--challenger", help="run compared against the reference in the wins table (default: last)")
    p.add_argument("--reference", help="reference run (default: first)")
    p.add_argument("--card-metrics", help="also write compact metrics JSON for `export --metrics`")
    p.set_defaults(func=cmd_report)
