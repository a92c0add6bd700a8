"""``collagan-impute evaluate`` and ``demo``: score a model on complete cases (docs/EVALUATION.md), with a progress
bar over the imputations and the report files.

Example:
    collagan-impute evaluate data/lgg/complete --out eval/ --model model.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from .cli_common import EXIT_INPUT, EXIT_OK, _load
from .errors import InputError

if TYPE_CHECKING:
    from .card import LoadedModel


def _case_dirs(data: Path, cases: Optional[Sequence[str]], split: Optional[Path], subset: str) -> list[Path]:
    if not data.is_dir():
        raise InputError(f"Data folder not found: {data}.")
    if split is not None:
        names = json.loads(split.read_text()).get(subset)
        if names is None:
            raise InputError(f"{split} has no '{subset}' list; use --split-set with one of its keys.")
    elif cases:
        names = list(cases)
    else:
        names = sorted(p.name for p in data.iterdir() if p.is_dir())
    dirs = [data / name for name in names]
    missing = [d.name for d in dirs if not d.is_dir()]
    if missing:
        raise InputError(f"Case folders not found in {data}: {missing}.")
    if not dirs:
        raise InputError(f"No case folders in {data}.")
    return dirs


def _evaluation_steps(model: LoadedModel, dirs: Sequence[Path], targets: Optional[Sequence[str]],
                      all_subsets: bool) -> int:
    """How many imputations evaluate_cases will score (for the progress bar's total), from file names only."""
    from .evaluate import input_subsets
    from .io import find_case_files

    contrasts = model.card.contrasts
    count = 0
    for folder in dirs:
        present = [c for c in contrasts if c in find_case_files(folder, contrasts)]
        for target in targets or contrasts:
            if target in present:
                count += sum(1 for inputs in input_subsets(present, target, all_subsets) if inputs)
    return count


def _run_evaluation(model: LoadedModel, dirs: list[Path], out: Path, args: argparse.Namespace,
                    save_volumes: bool, failures: Optional[list] = None) -> list[dict]:
    from tqdm import tqdm

    from .cli_common import _announce_runtime

    _announce_runtime(model, args)

    from .evaluate import evaluate_cases
    from .evaluation_report import coverage_warnings, markdown_table, summary_table, write_report

    steps = tqdm(total=_evaluation_steps(model, dirs, args.target, args.all_subsets), desc="evaluating",
                 unit="imputation", file=sys.stderr)
    started = [0]

    def on_case(case: str, target: str, inputs: Sequence[str]) -> None:
        steps.update(started[0] - steps.n)  # called as an imputation starts: the ones before it are done
        started[0] += 1
        steps.set_postfix_str(f"{case} {target}<-{'+'.join(inputs)}")

    try:
        rows = evaluate_cases(
            model, dirs, targets=args.target or None, all_subsets=args.all_subsets, device=args.device,
            batch_size=args.batch_size, montage_dir=out, volumes_dir=out if save_volumes else None,
            precision=args.precision, on_case=on_case, failures=failures,
            uncertainty=getattr(args, "uncertainty", False), protocol=getattr(args, "protocol", "v3"),
            register=getattr(args, "register", False), runtime=args.runtime)
        steps.update(started[0] - steps.n)
    finally:
        steps.close()
    paths = write_report(rows, out, failures)
    print(markdown_table(summary_table(rows)))
    for line in coverage_warnings(rows):
        print(f"warning: {line}", file=sys.stderr)
    print(f"Scores: {paths['summary_csv']}, {paths['cases_csv']}, {paths['json']}; montages in {out}")
    return rows


def cmd_evaluate(args: argparse.Namespace) -> int:
    model = _load(args.model)
    dirs = _case_dirs(Path(args.data), args.cases, Path(args.split) if args.split else None, args.split_set)
    failures: list[tuple[str, str]] = []
    _run_evaluation(model, dirs, Path(args.out), args, save_volumes=args.save_volumes, failures=failures)
    if failures:
        print(f"error: {len(failures)} of {len(dirs)} cases failed (not scored; listed in scores.json):",
              file=sys.stderr)
        for case, message in failures:
            print(f"error: {case}: {message}", file=sys.stderr)
        return EXIT_INPUT
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .models import default_model
    from .resources import sample_case_dir

    start = time.perf_counter()
    model = default_model()
    case = sample_case_dir()
    print(f"Demo: {case.name} (bundled sample case) with model '{model.card.name}'; every contrast imputed "
          "from the other two and scored against the real one.")
    _run_evaluation(model, [case], Path(args.out), args, save_volumes=True)
    print(f"Demo done in {time.perf_counter() - start:.1f} s, peak memory {_peak_memory()}. Output: {args.out}")
    return EXIT_OK


def _peak_memory() -> str:
    from .hardware import peak_memory_mb

    peak = peak_memory_mb()
    return f"{peak:.0f} MiB" if peak is not None else "n/a"
