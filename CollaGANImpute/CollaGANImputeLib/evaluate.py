"""Score a model on complete cases with the protocol of EVALUATION.md: every contrast imputed from the others.

Example:
    >>> rows = evaluate_cases(model, ["data/case1", "data/case2"])           # doctest: +SKIP
    >>> write_report(rows, "out/")   # CSV, JSON, Markdown  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io as _io
import itertools
import json
import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .atomic import write_text_atomic
from .card import LoadedModel
from .case import ImputationResult
from .case_files import read_case
from .errors import CollaGANError, ModelError
from .figures import montage_png
from .inference import CancelFlag
from .io import OutputSet, case_name, find_lesion_mask, read_lesion_mask, synthetic_filename
from .metrics import (
    DEFAULT_PROTOCOL,
    METRIC_NAMES,
    NO_DATA_WARN_SHARE,
    NOT_SCORED_SHARE,
    UNCERTAINTY_NAMES,
    check_protocol,
    score_volume,
    summarize,
)
from .pipeline import impute
from .provenance import stage_imputed
from .registration import register_rigid
from .uncertainty_metrics import uncertainty_scores

CaseCallback = Callable[[str, str, Sequence[str]], None]


def input_subsets(contrasts: Sequence[str], target: str, all_subsets: bool) -> list[tuple[str, ...]]:
    """The input sets to score ``target`` from: all others, or every non-empty subset of them."""
    others = [c for c in contrasts if c != target]
    if not all_subsets:
        return [tuple(others)]
    return [combo for size in range(len(others), 0, -1) for combo in itertools.combinations(others, size)]


@dataclass
class ScoredImputation:
    """One target of one case imputed and scored: canonical p99 arrays and the protocol's scores."""

    result: ImputationResult
    pred: np.ndarray
    real: np.ndarray
    lesion: Optional[np.ndarray]
    scores: dict[str, float]

    @property
    def mask(self) -> np.ndarray:
        return self.result.case.mask


def score_imputation(
    model: LoadedModel,
    images: Mapping[str, sitk.Image],
    target: str,
    inputs: Sequence[str],
    lesion_image: Optional[sitk.Image] = None,
    device: str = "auto",
    batch_size: Optional[int] = None,
    cancel: CancelFlag = None,
    precision: str = "fp32",
    uncertainty: bool = False,
    protocol: str = DEFAULT_PROTOCOL,
    register: bool = False,
    runtime: str = "auto",
) -> ScoredImputation:
    """Impute ``target`` from ``inputs`` and score it against the real ``images[target]`` (EVALUATION.md):
    mask from the inputs only, scores inside ``M_t`` (``protocol="v2"``: M), lesion scores inside the lesion.
    ``uncertainty``: also the uncertainty map, scored with the protocol's rho_U and AUROC_U (whole head and
    inside the lesion). ``register``: the inputs are co-registered to the reference (:func:`impute`) and so is the
    real target, so that the scores compare like with like (the lesion mask is placed by its header)."""
    check_protocol(protocol)
    result = impute({c: images[c] for c in inputs}, model, targets=[target], device=device,
                    batch_size=batch_size, cancel=cancel, precision=precision, uncertainty=uncertainty,
                    register=register, runtime=runtime)
    case = result.case
    transform = None
    if register:  # against impute's reference, the first input
        alignment = register_rigid(case.reference, images[target], target, inputs[0])
        transform = alignment.transform if alignment.applied else None
    real = case.normalize_like_inputs(images[target], transform)
    lesion = None
    if lesion_image is not None:
        lesion = case.lesion_like_inputs(lesion_image)
    pred = result.arrays[target]
    given = [case.arrays[c] for c in inputs]  # the inputs as the model saw them, for contrast identity
    scores = score_volume(pred, real, case.mask, lesion, given, protocol=protocol)
    if uncertainty:
        scores.update(uncertainty_scores(result.uncertainty_arrays[target], pred, real, case.mask, lesion,
                                         protocol=protocol))
    return ScoredImputation(result, pred, real, lesion, scores)


def evaluate_cases(
    model: LoadedModel,
    case_dirs: Iterable[os.PathLike | str],
    targets: Optional[Sequence[str]] = None,
    all_subsets: bool = False,
    device: str = "auto",
    batch_size: Optional[int] = None,
    montage_dir: Optional[os.PathLike | str] = None,
    volumes_dir: Optional[os.PathLike | str] = None,
    on_case: Optional[CaseCallback] = None,
    cancel: CancelFlag = None,
    precision: str = "fp32",
    failures: Optional[list[tuple[str, str]]] = None,
    uncertainty: bool = False,
    protocol: str = DEFAULT_PROTOCOL,
    register: bool = False,
    runtime: str = "auto",
) -> list[dict]:
    """One row per (case, target, input set) with the protocol's scores; optional montage per target.
    ``uncertainty``: also the uncertainty scores (rho_U, AUROC_U) of each imputation's uncertainty map.
    ``protocol``: "v3" (EVALUATION.md, the default) or "v2" (earlier tables).
    ``register``: inputs and real target co-registered to the reference first (:func:`score_imputation`).

    Scores use fp32 by default so that they do not depend on the machine's CPU (``precision="auto"`` is faster).
    Cases lacking a target contrast are skipped for that target (nothing to compare with). With
    ``volumes_dir`` the imputed volumes are written there too (labeled synthetic with a JSON sidecar, one file
    per input set). A case's rows and files are kept together or not at all. With a ``failures`` list, a case
    that cannot be used (bad input, unwritable output) is appended there as (case, message) and the others go
    on; without one the first such error is raised. A model error always stops the evaluation.
    """
    check_protocol(protocol)
    contrasts = model.card.contrasts
    targets = list(targets or contrasts)
    rows: list[dict] = []
    montaged: set[str] = set()
    for folder in case_dirs:
        try:
            with OutputSet() as outputs:
                case_rows, case_montages = _evaluate_case(
                    model, Path(folder), contrasts, targets, all_subsets, device, batch_size, montage_dir,
                    volumes_dir, on_case, cancel, precision, montaged, outputs, uncertainty, protocol,
                    register, runtime)
                outputs.commit()
        except ModelError:
            raise
        except (CollaGANError, OSError) as exc:
            if failures is None:
                raise
            failures.append((case_name(folder), str(exc).strip() or type(exc).__name__))
            continue
        rows += case_rows
        montaged |= case_montages
    return rows


def _evaluate_case(model: LoadedModel, folder: Path, contrasts: Sequence[str], targets: Sequence[str],
                   all_subsets: bool, device: str, batch_size: Optional[int], montage_dir, volumes_dir,
                   on_case: Optional[CaseCallback], cancel: CancelFlag, precision: str, montaged: set[str],
                   outputs: OutputSet, uncertainty: bool = False, protocol: str = DEFAULT_PROTOCOL,
                   register: bool = False, runtime: str = "auto") -> tuple[list[dict], set[str]]:
    """The rows of one case; its volumes and montages staged in ``outputs``."""
    rows: list[dict] = []
    drawn: set[str] = set()
    images = read_case(folder, contrasts)
    lesion_path = find_lesion_mask(folder)
    lesion_image = read_lesion_mask(lesion_path) if lesion_path else None
    for target in targets:
        if target not in images:
            continue
        for inputs in input_subsets([c for c in contrasts if c in images], target, all_subsets):
            if not inputs:
                continue
            if on_case:
                on_case(case_name(folder), target, inputs)
            scored = score_imputation(model, images, target, inputs, lesion_image, device=device,
                                      batch_size=batch_size, cancel=cancel, precision=precision,
                                      uncertainty=uncertainty, protocol=protocol, register=register,
                                      runtime=runtime)
            result, case, pred, real, lesion, scores = (scored.result, scored.result.case, scored.pred,
                                                        scored.real, scored.lesion, scored.scores)
            rows.append({"case": case_name(folder), "target": target, "inputs": "+".join(inputs),
                         "n_inputs": len(inputs), "model": model.card.name, "protocol": protocol, **scores})
            if volumes_dir is not None:
                name = f"{case_name(folder)}-from-{'+'.join(inputs)}" if all_subsets else case_name(folder)
                Path(volumes_dir).mkdir(parents=True, exist_ok=True)
                stage_imputed(outputs, result.images[target], Path(volumes_dir) / synthetic_filename(name, target),
                              model, case)
            key = f"{target}|{'+'.join(inputs)}"
            if montage_dir is not None and key not in montaged | drawn and not scores["not_scored"]:
                drawn.add(key)
                Path(montage_dir).mkdir(parents=True, exist_ok=True)
                title = (f"{case_name(folder)}: {target} from {'+'.join(inputs)} (NMSE {scores['nmse']:.3f}, "
                         f"SSIM {scores['ssim']:.3f}) - {model.card.name}")
                draw = partial(montage_png, inputs={c: case.arrays[c] for c in inputs}, imputed=pred, target=target,
                               real=real, mask=case.mask, lesion=lesion, rows=2, method=model.card.name, title=title)
                outputs.stage(Path(montage_dir) / f"montage_{target}_from_{'+'.join(inputs)}.png", draw, suffix=".png")
    return rows, drawn


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
    buffer = _io.StringIO()
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


def summary_by_target(rows: list[dict]) -> dict[str, dict]:
    """Compact mean scores per target (for model cards): {target: {metric: mean}}."""
    result: dict[str, dict] = {}
    for entry in summary_table(rows):
        result[f"{entry['target']}<-{entry['inputs']}"] = {
            k: round(entry[f"{k}_mean"], 5) for k in METRIC_NAMES if math.isfinite(entry[f"{k}_mean"])
        } | {"cases": entry["cases"]}
    return result
