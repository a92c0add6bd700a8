"""The report of an evaluation (:func:`.evaluate.evaluate_cases`' rows): per-case and summary CSV, JSON and a
Markdown table (:func:`write_report`), and the lines that warn of real images with no data in the head.

Example:
    >>> rows, failures = evaluate_cases(model, ["data/case1", "data/case2"]), []    # doctest: +SKIP
    >>> write_report(rows, "out/", failures)["markdown"]                           # doctest: +SKIP
    PosixPath('out/scores_summary.md')
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .atomic import write_text_atomic
from .metrics import DEFAULT_PROTOCOL, METRIC_NAMES, NO_DATA_WARN_SHARE, NOT_SCORED_SHARE, UNCERTAINTY_NAMES, summarize


def coverage_warnings(rows: list[dict], share: float = NO_DATA_WARN_SHARE) -> list[str]:
    """One line per case and target whose real image has no data in more than ``share`` of the head mask
    (``real_no_data``): v3 scores it only where it was acquired (``M_t``), and not at all above 50 %; v2's
    scores compare the synthetic image with zeros there.

    Example:
        >>> coverage_warnings([{"case": "TCGA-DU-A5TU", "target": "t2f", "real_no_data": 0.124}])[0][:60]
        'TCGA-DU-A5TU t2f: the acquired t2f has no data in 12.4 % of '
    """
    seen, lines = set(), []
    for row in rows:
        missing = row.get("real_no_data", 0.0)
        key = (row["case"], row["target"])
        if missing > share and key not in seen:
            seen.add(key)
            if row.get("not_scored"):
                consequence = f"not scored (above {100 * NOT_SCORED_SHARE:.0f} %)"
            elif row.get("protocol") == "v2":
                consequence = "its v2 scores compare the synthetic image with zeros there"
            else:
                consequence = "scored where it was acquired only"
            lines.append(f"{row['case']} {row['target']}: the acquired {row['target']} has no data in "
                         f"{100 * missing:.1f} % of the head mask (outside its field of view); {consequence}.")
    return lines


def summary_table(rows: list[dict]) -> list[dict]:
    """Mean ± std per (model, target, inputs) over cases."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["target"], row["inputs"]), []).append(row)
    table = []
    for (model, target, inputs), group in groups.items():
        stats = summarize(group)
        entry = {"model": model, "target": target, "inputs": inputs, "cases": len(group),
                 "protocol": group[0].get("protocol", DEFAULT_PROTOCOL)}
        for key in METRIC_NAMES:
            entry[f"{key}_mean"] = stats[key]["mean"]
            entry[f"{key}_std"] = stats[key]["std"]
        # EVALUATION.md reports I_T and I as mean and count of cases above 0, K as the median
        for key in ("identity_t", "identity"):
            entry[f"{key}_positive"] = stats[key]["positive"]
            entry[f"{key}_n"] = stats[key]["n"]
        entry["not_scored"] = sum(1 for row in group if row.get("not_scored"))
        entry["lesion_kept_median"] = stats["lesion_kept"]["median"]
        entry["lesion_kept_n"] = stats["lesion_kept"]["n"]
        if any(UNCERTAINTY_NAMES[0] in row for row in group):
            u_stats = summarize(group, UNCERTAINTY_NAMES)
            for key in UNCERTAINTY_NAMES:
                entry[f"{key}_mean"] = u_stats[key]["mean"]
                entry[f"{key}_std"] = u_stats[key]["std"]
        table.append(entry)
    return table


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def markdown_table(table: list[dict]) -> str:
    """The summary as a Markdown table (mean ± std over cases, a single case's value alone; lesion scores
    included)."""
    def fmt(entry: dict, key: str, digits: int) -> str:
        mean, std = entry[f"{key}_mean"], entry[f"{key}_std"]
        if not math.isfinite(mean):
            return "n/a"
        return f"{mean:.{digits}f}" if entry["cases"] < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"

    def fidelity(e: dict) -> list[str]:
        def identity(key: str) -> str:
            return (f"{e[f'{key}_mean']:+.3f} ({e[f'{key}_positive']}/{e[f'{key}_n']})"
                    if math.isfinite(e[f"{key}_mean"]) else "n/a")
        kept = (f"{e['lesion_kept_median']:.2f} (n={e['lesion_kept_n']})"
                if math.isfinite(e["lesion_kept_median"]) else "n/a")
        contrast = (f"{e['lesion_contrast_real_mean']:.2f} → {e['lesion_contrast_pred_mean']:.2f}"
                    if math.isfinite(e["lesion_contrast_real_mean"]) else "n/a")
        return [identity("identity_t"), kept, contrast, identity("identity")]

    lines = ["| model | target | inputs | cases | NMSE | PSNR (dB) | SSIM | lesion NMSE | lesion SSIM "
             "| tissue identity I_T (cases > 0) | lesion kept K (median) | lesion contrast real → synthetic "
             "| voxel identity I (cases > 0) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in table:
        lines.append(f"| {e['model']} | {e['target']} | {e['inputs']} | {e['cases']} | {fmt(e, 'nmse', 4)} | "
                     f"{fmt(e, 'psnr', 2)} | {fmt(e, 'ssim', 4)} | {fmt(e, 'lesion_nmse', 4)} | "
                     f"{fmt(e, 'lesion_ssim', 4)} | " + " | ".join(fidelity(e)) + " |")
    protocols = sorted({e.get("protocol", DEFAULT_PROTOCOL) for e in table}) or [DEFAULT_PROTOCOL]
    lines += ["", "I_T: r(P synthetic, P real) − max r(P synthetic, P input), P the mean over tissue cells of the "
              "inputs; > 0 means each tissue has the brightness the real contrast gives it. I (a diagnostic): the "
              "same on voxels. K = kept share of the real lesion-to-tissue contrast: 1 as in the real image, 0 "
              f"vanished, < 0 inverted (docs/EVALUATION.md {', '.join(protocols)})."]
    skipped = [e for e in table if e.get("not_scored")]
    if skipped:
        lines += [""] + [f"{e['model']} {e['target']} from {e['inputs']}: {e['not_scored']} case(s) not scored (the "
                         "real image was not acquired in more than half of the head)." for e in skipped]
    scored = [e for e in table if f"{UNCERTAINTY_NAMES[0]}_mean" in e]
    if scored:
        lines += ["", "| model | target | inputs | cases | rho_U | AUROC_U | lesion rho_U | lesion AUROC_U |",
                  "|---|---|---|---|---|---|---|---|"]
        for e in scored:
            lines.append(f"| {e['model']} | {e['target']} | {e['inputs']} | {e['cases']} | "
                         + " | ".join(fmt(e, key, 3) for key in UNCERTAINTY_NAMES) + " |")
        lines += ["", "rho_U: Spearman correlation of the uncertainty map with |error| in the head; AUROC_U: how well "
                  "it separates voxels with |error| > 0.2 from the rest (0.5 = chance); the same inside the lesion "
                  "(docs/EVALUATION.md)."]
    return "\n".join(lines) + "\n"


def _json_safe(value):
    """NaN/inf (no lesion, identical images) become null: strict JSON readers refuse NaN."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_report(rows: list[dict], out_dir: os.PathLike | str,
                 failures: Optional[Sequence[tuple[str, str]]] = None) -> dict[str, Path]:
    """Write per-case CSV, summary CSV/JSON/Markdown into ``out_dir``; returns the written paths. ``failures``
    (case, message) are listed in the JSON (``failed_cases``) and under the Markdown table."""
    out = Path(out_dir)
    table = summary_table(rows)
    paths = {"cases_csv": out / "scores_per_case.csv", "summary_csv": out / "scores_summary.csv",
             "json": out / "scores.json", "markdown": out / "scores_summary.md"}
    write_text_atomic(paths["cases_csv"], _csv(rows))
    write_text_atomic(paths["summary_csv"], _csv(table))
    protocols = sorted({row.get("protocol", DEFAULT_PROTOCOL) for row in rows}) or [DEFAULT_PROTOCOL]
    report = {"protocol": f"EVALUATION.md {', '.join(protocols)}", "summary": table, "cases": rows,
              "failed_cases": [{"case": case, "error": message} for case, message in failures or ()]}
    write_text_atomic(paths["json"], json.dumps(_json_safe(report), indent=2))
    failed = "".join(f"\n- not scored: {case}: {message}" for case, message in failures or ())
    write_text_atomic(paths["markdown"], markdown_table(table) + (f"\nFailed cases:{failed}\n" if failed else ""))
    return paths
