"""Score model files on validation patients with the core's pipeline and metrics (EVALUATION.md) and write a
paper-style table: Markdown + CSV, methods side by side, one row per target, lesion scores included, plus a
montage PNG.

Each target of each case is imputed from the other contrasts through ``CollaGANImputeLib.pipeline.impute``
(the CLI/Slicer path) and scored with ``CollaGANImputeLib.metrics.score_volume``. A model whose card says
``single_input`` is run from each single input in turn and the best input per target (lowest mean NMSE) is
reported, as EVALUATION.md asks for the single-input baseline.

Example:
    python -m training.collagan_train.main evaluate --model voxreg=runs/voxreg/voxreg.pt \
        --model collagan=runs/collagan_lgg_cpu/model.pt --out runs/eval
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from CollaGANImputeLib.atomic import atomic_path, write_text_atomic
from CollaGANImputeLib.case_files import read_case
from CollaGANImputeLib.contract import load_model
from CollaGANImputeLib.evaluate import score_imputation
from CollaGANImputeLib.io import find_lesion_mask, read_lesion_mask
from CollaGANImputeLib.labels import METRIC_LABELS
from CollaGANImputeLib.metrics import METRIC_NAMES, summarize

from .cases import lgg_folder_or_exit, repo_path

LABELS = {key: metric.label for key, metric in METRIC_LABELS.items()}  # the core's one table of labels


def score_case(model, case_dir: Path, target: str, inputs: Sequence[str], device: str = "cpu",
               images: Optional[dict] = None):
    """Impute ``target`` of one case from ``inputs`` and score it; returns (scores, pred, gt, mask, lesion)."""
    images = images or read_case(case_dir, model.card.contrasts)
    lesion_path = find_lesion_mask(case_dir)
    lesion_image = read_lesion_mask(lesion_path) if lesion_path is not None else None
    scored = score_imputation(model, images, target, inputs, lesion_image, device=device)
    return scored.scores, scored.pred, scored.real, scored.mask, scored.lesion


def evaluate(models: Dict[str, str], case_dirs: Sequence[Path], out_dir: Path, device: str = "cpu",
             montage_case: Optional[str] = None) -> dict:
    """Score every model on every case and target; write rows.csv, table.csv, table.md, summary.json and
    montage.png under ``out_dir``; returns the summary {method: {target: {metric: {mean, std, n}}}}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: List[dict] = []
    montage: Dict[str, Dict[str, np.ndarray]] = {}
    montage_dir = next((c for c in case_dirs if c.name == montage_case), case_dirs[0])
    contrasts: List[str] = []
    for method, path in models.items():
        model = load_model(path)
        contrasts = contrasts or list(model.card.contrasts)
        single = bool(model.card.training.get("single_input", False))
        for case_dir in case_dirs:
            images = read_case(case_dir, model.card.contrasts)
            for target in model.card.contrasts:
                others = [c for c in model.card.contrasts if c != target]
                for inputs in ([[c] for c in others] if single else [others]):
                    scores, pred, gt, mask, lesion = score_case(model, case_dir, target, inputs, device, images)
                    rows.append({"method": method, "case": case_dir.name, "target": target,
                                 "inputs": "+".join(inputs), **scores})
                    if case_dir == montage_dir:
                        montage.setdefault(target, {"gt": gt, "mask": mask, "lesion": lesion})
                        montage[target][f"{method}:{'+'.join(inputs)}"] = pred
    rows = _best_single_input(rows)
    summary = {m: {t: summarize([r for r in rows if r["method"] == m and r["target"] == t])
                   for t in contrasts} for m in models}
    for m in models:
        summary[m]["inputs"] = {t: next(r["inputs"] for r in rows if r["method"] == m and r["target"] == t)
                                for t in contrasts}
    _write_rows(out_dir / "rows.csv", rows)
    _write_table(out_dir, summary, list(models), contrasts, len(case_dirs))
    write_text_atomic(out_dir / "summary.json", json.dumps({"protocol": "EVALUATION.md v3", "cases": [c.name for c in
                                                         case_dirs], "methods": summary}, indent=2))
    _montage(out_dir / "montage.png", montage, rows, montage_dir.name)
    return summary


def _best_single_input(rows: List[dict]) -> List[dict]:
    """Keep, per (method, target), only the input set with the lowest mean NMSE (matters for single-input)."""
    keep = []
    for key in sorted({(r["method"], r["target"]) for r in rows}):
        group = [r for r in rows if (r["method"], r["target"]) == key]
        best = min({r["inputs"] for r in group},
                   key=lambda i: np.mean([r["nmse"] for r in group if r["inputs"] == i]))
        keep += [r for r in group if r["inputs"] == best]
    return keep


def _write_rows(path: Path, rows: List[dict]) -> None:
    fields = ["method", "case", "target", "inputs", *METRIC_NAMES, "lesion_voxels"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _fmt(stat: dict, metric: str) -> str:
    if not np.isfinite(stat["mean"]):
        return "n/a"
    if metric in ("identity_t", "identity"):  # EVALUATION.md: the mean and the number of cases above 0
        return f"{stat['mean']:+.3f} ({stat['positive']}/{stat['n']})"
    if metric == "lesion_kept":
        return f"{stat['median']:.2f} (n={stat['n']})"
    digits = 2 if metric in ("psnr", "lesion_contrast_real", "lesion_contrast_pred") else 4
    if stat["n"] == 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _write_table(out_dir: Path, summary: dict, methods: List[str], contrasts: List[str], n_cases: int) -> None:
    lines = [f"# Imputation on {n_cases} validation patients (EVALUATION.md v3; mean ± std over patients)", ""]
    csv_rows = []
    for metric in METRIC_NAMES:
        better = ("lower is better" if "nmse" in metric else "1 = as the real lesion" if metric == "lesion_kept"
                  else "context" if metric.startswith("lesion_contrast") else "higher is better")
        lines += [f"## {LABELS[metric]} ({better})", "", "| target | " + " | ".join(methods) + " |",
                  "|---|" + "---|" * len(methods)]
        for target in contrasts:
            cells = []
            for m in methods:
                stat = summary[m][target][metric]
                cells.append(_fmt(stat, metric))
                csv_rows.append({"target": target, "method": m, "inputs": summary[m]["inputs"][target],
                                 "metric": metric, **stat})
            lines.append(f"| {target} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Inputs per method and target: " + "; ".join(
        f"{m}: " + ", ".join(f"{t}<-{summary[m]['inputs'][t]}" for t in contrasts) for m in methods))
    write_text_atomic(out_dir / "table.md", "\n".join(lines) + "\n")
    with atomic_path(out_dir / "table.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["target", "method", "inputs", "metric", "mean", "std", "median",
                                                     "n", "positive"])
        writer.writeheader()
        writer.writerows(csv_rows)


def _montage(path: Path, montage: dict, rows: List[dict], case: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = {(r["method"], r["target"]): r["inputs"] for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    targets = list(montage)
    columns = ["gt"] + methods
    fig, axes = plt.subplots(len(targets), len(columns), figsize=(2.6 * len(columns), 2.7 * len(targets)),
                             squeeze=False)
    for r, target in enumerate(targets):
        entry = montage[target]
        lesion = entry["lesion"]
        area = (lesion.sum(axis=(1, 2)) if lesion is not None else entry["mask"].sum(axis=(1, 2)))
        z = int(np.argmax(area)) if area.max() > 0 else entry["mask"].shape[0] // 2
        for c, method in enumerate(columns):
            ax = axes[r, c]
            key = "gt" if method == "gt" else f"{method}:{kept[(method, target)]}"
            image = np.where(entry["mask"][z], entry[key][z], 0)
            ax.imshow(image, cmap="gray", vmin=0, vmax=1.2)
            if lesion is not None and lesion[z].any():
                ax.contour(lesion[z], levels=[0.5], colors="r", linewidths=0.5)
            title = f"{target} real" if method == "gt" else f"SYNTHETIC {target}\n{method} <- {kept[(method, target)]}"
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle(f"{case}: slice with the largest lesion; red = lesion mask; p99 units [0, 1.2]", fontsize=9)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)


def validation_cases(split_file: str, data_dir: str = "", limit: int = 0) -> List[Path]:
    folder = lgg_folder_or_exit(data_dir, "--data-dir PATH")
    cases = json.loads(repo_path(split_file).read_text())["val"]
    return [folder / c for c in (cases[:limit] if limit else cases)]


def cmd_evaluate(args: argparse.Namespace) -> None:
    models = {}
    for item in args.model:
        name, _, path = item.rpartition("=")
        models[name or Path(path).stem] = path
    cases = [Path(c) for c in args.case] if args.case else validation_cases(args.split, args.data_dir, args.limit)
    evaluate(models, cases, repo_path(args.out), device=args.device, montage_case=args.montage_case)
    print((repo_path(args.out) / "table.md").read_text())


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score model files on validation patients; writes table.md/csv, montage")
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--split", default="training/splits/lgg_split.json")
    p.add_argument("--data-dir", default="")
    p.add_argument("--case", action="append", help="case folders instead of the split's validation patients")
    p.add_argument("--limit", type=int, default=0, help="only the first N validation patients")
    p.add_argument("--device", default="cpu")
    p.add_argument("--montage-case", default="TCGA-HT-7882")
    p.set_defaults(func=cmd_evaluate)
