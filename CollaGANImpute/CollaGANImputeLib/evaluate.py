"""Score a model on complete cases with the protocol of EVALUATION.md: every contrast imputed from the others.

Example:
    >>> rows = evaluate_cases(model, ["data/case1", "data/case2"])           # doctest: +SKIP
    >>> write_report(rows, "out/")   # CSV, JSON, Markdown (:mod:`.evaluation_report`)   # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .card import LoadedModel
from .case import ImputationResult
from .case_files import read_case
from .errors import CollaGANError, ModelError
from .figures import montage_png
from .inference import CancelFlag
from .io import OutputSet, case_name, find_lesion_mask, read_lesion_mask, synthetic_filename
from .metrics import (
    DEFAULT_PROTOCOL,
    check_protocol,
    score_volume,
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
