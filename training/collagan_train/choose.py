"""The checkpoint rule, applied to ``collagan-impute evaluate`` runs of candidate snapshots on the set-aside patients.

Rule (docs/RESULTS.md): among the candidates whose mean NMSE over targets is within
``tolerance`` (5 %) of the lowest, the one with the highest mean tissue-contrast identity I_T (EVALUATION.md
v3); and, given the bundled model's run on the same patients, no candidate whose NMSE on any one target is more
than ``tolerance`` worse than the bundled model's (a mean over targets can hide one target's regression). The
bundled model's own run competes under the same rule: when it wins, it stays.

Example:
    python -m training.collagan_train.main choose --bundled v5=runs/v5_s002500/select \
        --candidate h500=runs/v6_s000500/select --candidate h750=runs/v6_s000750/select
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .report import case_values, full_inputs, load_rows


@dataclass(frozen=True)
class Scores:
    """Per-target mean NMSE and mean tissue-contrast identity I_T of one run (all-other-inputs rows only)."""

    nmse: Dict[str, float]
    identity: Dict[str, float]

    @property
    def mean_nmse(self) -> float:
        return float(np.mean(list(self.nmse.values())))

    @property
    def mean_identity(self) -> float:
        return float(np.mean(list(self.identity.values())))


def run_scores(rows: List[dict], contrasts: Sequence[str]) -> Scores:
    """Means over cases per target of the rows that impute a target from all the other contrasts."""
    nmse, identity = {}, {}
    for target in contrasts:
        inputs = full_inputs(contrasts, target)
        values = case_values(rows, target, inputs, "nmse")
        if not values:
            raise SystemExit(f"no rows for target {target!r} from {inputs}: was the run made with this model's "
                             f"contrasts {list(contrasts)}?")
        nmse[target] = float(np.mean(list(values.values())))
        identity[target] = float(np.mean(list(case_values(rows, target, inputs, "identity_t").values()) or [math.nan]))
    return Scores(nmse, identity)


def choose(candidates: Dict[str, Scores], bundled: Optional[Scores] = None, tolerance: float = 0.05
           ) -> Tuple[Optional[str], Dict[str, str]]:
    """The chosen run's name and, per run, why it was or was not chosen. ``bundled`` competes too, as "bundled"
    (never ruled out by the per-target guard, which is measured against it); None only without any run.

    Example:
        >>> a = Scores({"t1n": 0.05, "t2f": 0.10}, {"t1n": 0.05, "t2f": 0.02})
        >>> b = Scores({"t1n": 0.05, "t2f": 0.105}, {"t1n": 0.06, "t2f": 0.04})
        >>> choose({"a": a, "b": b})[0]
        'b'
        >>> choose({"b": b}, bundled=a, tolerance=0.04)[0]   # b's t2f is 5 % worse than the bundled model's
        'bundled'
    """
    reasons: Dict[str, str] = {}
    eligible = {} if bundled is None else {"bundled": bundled}
    for name, s in candidates.items():
        if bundled is not None:
            worse = [t for t in s.nmse if s.nmse[t] > bundled.nmse[t] * (1 + tolerance)]
            if worse:
                reasons[name] = "out: NMSE more than {:.0%} worse than the bundled model on {}".format(
                    tolerance, ", ".join(f"{t} ({s.nmse[t] / bundled.nmse[t] - 1:+.1%})" for t in worse))
                continue
        eligible[name] = s
    if not eligible:
        return None, reasons
    lowest = min(s.mean_nmse for s in eligible.values())
    near = {n: s for n, s in eligible.items() if s.mean_nmse <= lowest * (1 + tolerance)}
    for name in eligible:
        if name not in near:
            reasons[name] = (f"out: mean NMSE {eligible[name].mean_nmse:.4f} more than {tolerance:.0%} above "
                             f"{lowest:.4f}")
    best = max(near, key=lambda n: near[n].mean_identity)
    for name in near:
        reasons[name] = "chosen: highest mean I_T" if name == best else "within NMSE tolerance, lower mean I_T"
    return best, reasons


def named_run(value: str) -> Tuple[str, Path]:
    name, sep, folder = value.partition("=")
    if not sep or not name or not folder:
        raise SystemExit(f"{value!r}: give NAME=FOLDER (an evaluate --out folder on the set-aside patients).")
    return name, Path(folder)


def print_choice(candidates: Dict[str, Scores], reasons: Dict[str, str], chosen: Optional[str],
                 contrasts: Sequence[str], bundled_name: Optional[str] = None, bundled: Optional[Scores] = None
                 ) -> None:
    """The rule's table (one row per run, the bundled model first) and the verdict, as Markdown."""
    rows = ([(f"{bundled_name} (bundled)", bundled, reasons.get("bundled", ""))] if bundled else []) + \
        [(n, s, reasons.get(n, "")) for n, s in candidates.items()]
    print("| run | mean NMSE | mean I_T | " + " | ".join(f"{t} NMSE / I_T" for t in contrasts) + " | verdict |")
    print("|---|---|---|" + "---|" * len(contrasts) + "---|")
    for name, s, why in rows:
        print(f"| {name} | {s.mean_nmse:.4f} | {s.mean_identity:+.3f} | "
              + " | ".join(f"{s.nmse[t]:.3f} / {s.identity[t]:+.3f}" for t in contrasts) + f" | {why} |")
    print("\nchosen: " + (f"{bundled_name} (keep the bundled model)" if chosen == "bundled" else str(chosen)))


def cmd_choose(args: argparse.Namespace) -> None:
    candidates = {n: run_scores(load_rows(f), args.contrasts) for n, f in map(named_run, args.candidate)}
    bundled_name, bundled = None, None
    if args.bundled:
        bundled_name, folder = named_run(args.bundled)
        bundled = run_scores(load_rows(folder), args.contrasts)
    chosen, reasons = choose(candidates, bundled, args.tolerance)
    print_choice(candidates, reasons, chosen, args.contrasts, bundled_name, bundled)


def add_parser(sub) -> None:
    p = sub.add_parser("choose", help="apply the checkpoint rule to evaluate runs on the set-aside patients")
    p.add_argument("--candidate", action="append", required=True, metavar="NAME=FOLDER",
                   help="an evaluate --out folder of one candidate snapshot")
    p.add_argument("--bundled", metavar="NAME=FOLDER", help="the bundled model's run on the same patients")
    p.add_argument("--contrasts", nargs="+", default=["t1n", "t1c", "t2f"])
    p.add_argument("--tolerance", type=float, default=0.05)
    p.set_defaults(func=cmd_choose)
