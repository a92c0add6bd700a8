"""Validate the uncertainty maps against the real error (EVALUATION.md v2: rho_U, AUROC_U, whole head and inside
lesions) on the LGG validation patients and the OpenMS patients, with any model file; prints the tables and the
bar, writes per-case scores, a Markdown summary and the figure.

Usage (one command, rerun with a new model by --model):
    python -m research.validate_uncertainty --lgg DATA/lgg --openms DATA/openms \
        --out runs/uncertainty_v2 --figure docs/images/uncertainty_validation.png --threads 1

Every contrast of each case is imputed from the others with ``impute(..., uncertainty=True)`` (the shipped path,
default settings: ``--precision auto``) and scored against the real one. Finished case-targets are kept in
``<out>/rows.jsonl`` and skipped when the command is run again (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from CollaGANImputeLib import load_model
from CollaGANImputeLib.atomic import write_text_atomic
from CollaGANImputeLib.io import find_lesion_mask, read_lesion_mask
from CollaGANImputeLib.metrics import UNCERTAINTY_NAMES
from CollaGANImputeLib.models import default_model
from CollaGANImputeLib.pipeline import impute, read_case
from CollaGANImputeLib.uncertainty_metrics import error_by_uncertainty_quantile, uncertainty_scores

from . import DEFAULT_SPLIT, LGG_ENV, OPENMS_ENV, lgg_folder

SCORES = UNCERTAINTY_NAMES
#: The bar the uncertainty map must reach: means over the LGG validation patients, every target.
BAR = {"rho_u": 0.3, "auroc_u": 0.7, "lesion_gap": 0.1}


def score_case(model, folder: Path, target: str, precision: str, device: str, keep: bool = False) -> dict:
    """Impute ``target`` of one case from the other contrasts with its uncertainty map and score the map."""
    images = read_case(folder, model.card.contrasts)
    inputs = {c: image for c, image in images.items() if c != target}
    start = time.perf_counter()
    result = impute(inputs, model, targets=[target], device=device, precision=precision, uncertainty=True)
    seconds = time.perf_counter() - start
    case = result.cases[target]
    pred, u = result.arrays[target], result.uncertainty_arrays[target]
    real = case.normalize_like_inputs(images[target])
    lesion = None
    lesion_path = find_lesion_mask(folder)
    if lesion_path is not None:
        lesion = case.lesion_like_inputs(read_lesion_mask(lesion_path))
    scores = uncertainty_scores(u, pred, real, case.mask, lesion)
    deciles, decile_u = error_by_uncertainty_quantile(u, pred, real, case.mask)
    row = {"case": folder.name, "target": target, "inputs": "+".join(sorted(inputs, key=model.card.contrasts.index)),
           **scores, "mean_u": float(u[case.mask].mean()), "mean_error": float(np.abs(pred - real)[case.mask].mean()),
           "monotonic": bool(np.all(np.diff(deciles) > 0)), "deciles": deciles.tolist(), "decile_u": decile_u.tolist(),
           "lesion_voxels": int((case.mask & lesion).sum()) if lesion is not None else 0, "seconds": seconds}
    if keep:
        row["_arrays"] = {"pred": pred, "u": u, "real": real, "mask": case.mask, "lesion": lesion}
    return row


def summarize(rows: list[dict], targets: list[str]) -> dict:
    """Mean over cases per target, the mean of the per-target means, the decile curve averaged over cases."""
    out: dict = {}
    for target in targets:
        group = [r for r in rows if r["target"] == target]
        if not group:
            continue
        entry = {key: float(np.nanmean([r[key] for r in group])) for key in SCORES + ("error_rate", "mean_u",
                                                                                    "mean_error")}
        entry["cases"] = len(group)
        entry["monotonic_cases"] = sum(r["monotonic"] for r in group)
        entry["deciles"] = np.mean([r["deciles"] for r in group], axis=0).tolist()
        entry["decile_u"] = np.mean([r["decile_u"] for r in group], axis=0).tolist()
        entry["deciles_monotonic"] = bool(np.all(np.diff(entry["deciles"]) > 0))
        out[target] = entry
    if out:
        out["all"] = {key: float(np.mean([out[t][key] for t in targets if t in out])) for key in SCORES}
        out["all"]["cases"] = max(out[t]["cases"] for t in targets if t in out)
    return out


def bar_verdict(summary: dict) -> tuple[bool, list[str]]:
    """The uncertainty bar (``BAR``) on the LGG summary: each target's means and their mean over targets, lesion
    within 0.1 of the whole head, the mean decile curve rising."""
    notes, ok = [], True
    for target, entry in summary.items():
        checks = {f"rho_U {entry['rho_u']:.3f} >= {BAR['rho_u']}": entry["rho_u"] >= BAR["rho_u"],
                  f"AUROC_U {entry['auroc_u']:.3f} >= {BAR['auroc_u']}": entry["auroc_u"] >= BAR["auroc_u"],
                  f"lesion rho_U {entry['lesion_rho_u']:.3f} >= whole-head - {BAR['lesion_gap']}":
                      entry["lesion_rho_u"] >= entry["rho_u"] - BAR["lesion_gap"],
                  f"lesion AUROC_U {entry['lesion_auroc_u']:.3f} >= whole-head - {BAR['lesion_gap']}":
                      entry["lesion_auroc_u"] >= entry["auroc_u"] - BAR["lesion_gap"],
                  "mean |error| rises over the deciles": entry.get("deciles_monotonic", True)}
        if target == "all":
            checks.pop("mean |error| rises over the deciles")
        for text, passed in checks.items():
            ok &= bool(passed)
            notes.append(f"{target}: {'PASS' if passed else 'FAIL'} {text}")
    return ok, notes


def markdown(summaries: dict[str, dict], targets: list[str]) -> str:
    lines = ["| domain | target | cases | rho_U | AUROC_U | lesion rho_U | lesion AUROC_U | share |error|>0.2 | "
             "mean U | mean |error| | deciles rising (mean curve; cases) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for domain, summary in summaries.items():
        for target in targets + ["all"]:
            if target not in summary:
                continue
            e = summary[target]

            def f(key: str, entry: dict = e) -> str:
                return "n/a" if not math.isfinite(entry.get(key, math.nan)) else f"{entry[key]:.3f}"
            if target == "all":
                lines.append(f"| {domain} | **mean of targets** | {e['cases']} | {f('rho_u')} | {f('auroc_u')} | "
                             f"{f('lesion_rho_u')} | {f('lesion_auroc_u')} | | | | |")
                continue
            lines.append(f"| {domain} | {target} | {e['cases']} | {f('rho_u')} | {f('auroc_u')} | {f('lesion_rho_u')} "
                         f"| {f('lesion_auroc_u')} | {f('error_rate')} | {f('mean_u')} | {f('mean_error')} | "
                         f"{'yes' if e['deciles_monotonic'] else 'no'}; {e['monotonic_cases']}/{e['cases']} |")
    return "\n".join(lines)


def figure(path: Path, example: dict, summaries: dict[str, dict], targets: list[str], title: str) -> Path:
    """One case (synthetic, real, |error|, U, U against |error|) and mean |error| per U decile for each target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from CollaGANImputeLib.figures import representative_slices, save_figure_atomic

    a = example["_arrays"]
    index = representative_slices(a["mask"], a["lesion"], 1)[0]
    error = np.abs(a["pred"] - a["real"]) * a["mask"]
    fig = plt.figure(figsize=(15, 6.4))
    grid = fig.add_gridspec(2, 5, height_ratios=[1, 0.9])
    panels = [("synthetic " + example["target"], a["pred"], "gray", 1.2), ("real " + example["target"], a["real"],
              "gray", 1.2), ("|error| (p99 units)", error, "magma", 0.5),
              ("uncertainty U (p99 units; note the scale)", a["u"], "magma", 0.25)]
    for col, (label, volume, cmap, vmax) in enumerate(panels):
        axis = fig.add_subplot(grid[0, col])
        shown = axis.imshow(volume[index], cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
        if a["lesion"] is not None and a["lesion"][index].any():
            axis.contour(a["lesion"][index], levels=[0.5], colors="tab:cyan", linewidths=0.6)
        axis.set_title(label, fontsize=9)
        axis.set_axis_off()
        if cmap == "magma":
            fig.colorbar(shown, ax=axis, fraction=0.046, pad=0.02)
    axis = fig.add_subplot(grid[0, 4])
    mask = a["mask"]
    axis.hexbin(a["u"][mask], error[mask], gridsize=60, bins="log", cmap="viridis", extent=(0, 0.3, 0, 1.0))
    axis.set_xlabel("U (p99 units)", fontsize=8)
    axis.set_ylabel("|error| (p99 units)", fontsize=8)
    axis.set_title(f"all head voxels: rho_U {example['rho_u']:.2f}, AUROC_U {example['auroc_u']:.2f}", fontsize=8)
    for col, domain in enumerate(summaries):
        axis = fig.add_subplot(grid[1, 2 * col:2 * col + 2])
        for target in targets:
            if target in summaries[domain]:
                entry = summaries[domain][target]
                axis.plot(range(1, 11), entry["deciles"], marker="o", label=f"{target} (rho_U {entry['rho_u']:.2f})")
        axis.set_xticks(range(1, 11))
        axis.set_xlabel("uncertainty decile (1 = lowest U)", fontsize=8)
        axis.set_ylabel("mean |error| (p99 units)", fontsize=8)
        axis.set_title(f"{domain}: mean |error| per uncertainty decile (mean over cases)", fontsize=9)
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model .pt file (default: the bundled model)")
    parser.add_argument("--lgg", help=f"LGG case folders (default: ${LGG_ENV})")
    parser.add_argument("--split", default=str(DEFAULT_SPLIT), help="split file ('val')")
    parser.add_argument("--openms", default=os.environ.get(OPENMS_ENV, ""),
                        help=f"OpenMS case folders (default: ${OPENMS_ENV}; none: skipped)")
    parser.add_argument("--out", default="runs/uncertainty", help="folder for rows.jsonl, summary.json/md")
    parser.add_argument("--figure", help="PNG to write (e.g. docs/images/uncertainty_validation.png)")
    parser.add_argument("--figure-case", default="TCGA-HT-7882", help="case shown in the figure")
    parser.add_argument("--figure-target", default="t2f", help="target shown in the figure")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    parser.add_argument("--fresh", action="store_true", help="ignore rows of an earlier run")
    args = parser.parse_args(argv)
    lgg = lgg_folder(args.lgg, "--lgg")  # before any work: say what to pass
    torch.set_num_threads(args.threads)
    model = load_model(args.model) if args.model else default_model()
    contrasts = list(model.card.contrasts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done: dict[tuple[str, str], dict] = {}
    if rows_path.exists() and not args.fresh:
        for line in rows_path.read_text().splitlines():
            row = json.loads(line)
            if row.get("model_sha256") == model.sha256 and row.get("precision") == args.precision:
                done[(row["case"], row["target"])] = row
    domains = {"LGG validation": [lgg / name for name in json.loads(Path(args.split).read_text())["val"]]}
    if args.openms:
        domains["OpenMS"] = sorted(p for p in Path(args.openms).iterdir() if p.is_dir())
    rows_by_domain: dict[str, list[dict]] = {}
    example = None
    with rows_path.open("w" if args.fresh else "a") as log:
        for domain, folders in domains.items():
            rows_by_domain[domain] = []
            for folder in folders:
                present = [c for c in contrasts if (folder / f"{folder.name}-{c}.nii.gz").exists()]
                for target in present:
                    show = args.figure and folder.name == args.figure_case and target == args.figure_target
                    row = done.get((folder.name, target))
                    if row is None or show:
                        row = score_case(model, folder, target, args.precision, args.device, keep=bool(show))
                        if show:
                            example = row
                        if (folder.name, target) not in done:
                            saved = {k: v for k, v in row.items() if not k.startswith("_")}
                            log.write(json.dumps({**saved, "model_sha256": model.sha256,
                                                  "precision": args.precision}) + "\n")
                            log.flush()
                        print(f"{domain} {folder.name} {target}<-{row['inputs']}: rho_U {row['rho_u']:.3f} "
                              f"AUROC_U {row['auroc_u']:.3f} lesion {row['lesion_rho_u']:.3f}/"
                              f"{row['lesion_auroc_u']:.3f} ({row['seconds']:.1f} s)", flush=True)
                    rows_by_domain[domain].append(row)
    summaries = {d: summarize(rows, contrasts) for d, rows in rows_by_domain.items()}
    table = markdown(summaries, contrasts)
    ok, notes = bar_verdict(summaries["LGG validation"])
    verdict = ("REACHED" if ok else "NOT REACHED") + " (the uncertainty bar on the LGG validation patients)"
    text = f"Model {model.card.name} ({model.sha256[:12]}), precision {args.precision}\n\n{table}\n\n" + \
        "\n".join(f"- {n}" for n in notes) + f"\n\nBar: {verdict}\n"
    print(text)
    write_text_atomic(out / "summary.md", text)
    write_text_atomic(out / "summary.json", json.dumps({"model": model.card.name, "sha256": model.sha256,
                                                  "precision": args.precision, "summaries": summaries,
                                                  "bar_reached": ok, "notes": notes}, indent=1))
    if args.figure and example is not None:
        figure(Path(args.figure), example, summaries, contrasts,
               f"Uncertainty maps of {model.card.name}: {example['case']} {example['target']} from "
               f"{example['inputs']}, and calibration over the validation patients")
        print(f"Figure: {args.figure}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
