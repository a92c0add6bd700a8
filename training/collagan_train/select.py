"""Score training snapshots on the patients set aside for checkpoint choice, then apply the checkpoint rule.

Each snapshot is exported with the card's words for users (``OUT/<snapshot>/model.pt``) and scored through the
core's ``collagan-impute evaluate`` on whole volumes of the set-aside patients that its run recorded in
``split_used.json`` (``OUT/<snapshot>/select``). A snapshot already scored is not scored again, so the command
can be repeated as a run writes more snapshots. With ``--bundled``, the bundled model's run on the same patients
competes and is the reference of the per-target guard (:mod:`.choose`).

Example:
    python -m training.collagan_train.main select runs/v6_stage_i/snapshots/g_001000.pt \
        runs/v6_stage_i/snapshots/g_002000.pt --about training/collagan_train/configs/card_lgg.json \
        --out runs/select_i --bundled v5=runs/v5_s002500/select
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .bundle import MODEL_NAME, evaluate_once  # candidates are scored under the bundled model's name, as it would be
from .cases import lgg_folder_or_exit
from .choose import Scores, choose, named_run, print_choice, run_scores
from .export import load_about
from .report import load_rows
from .run_records import run_folder, snapshot_contrasts, split_used


def set_aside_cases(snapshot: Path) -> List[str]:
    """The patients the snapshot's run set aside for checkpoint choice (its run's ``split_used.json``)."""
    run = run_folder(snapshot)
    if not (run / "split_used.json").is_file():
        raise SystemExit(f"No split_used.json in {run}, the run of {snapshot}: score snapshots of a run made by "
                         "'main train', which records the set-aside patients there.")
    cases = split_used(run).get("select") or []
    if not cases:
        raise SystemExit(f"{run / 'split_used.json'} lists no set-aside patients: train with n_select > 0 so that "
                         "checkpoints are chosen on training patients, never on the validation ones.")
    return list(cases)


def score_snapshot(snapshot: Path, cases: Sequence[str], out: Path, data: Path, about: Optional[dict] = None,
                   threads: int = 1, device: str = "cpu") -> Path:
    """Export ``snapshot`` to ``out/model.pt`` and score it on ``cases`` (its run's set-aside patients) into
    ``out/select`` (skipped when that run is complete); returns the evaluate folder."""
    from .export import export_checkpoint

    scores = out / "select"
    if (scores / "scores.json").is_file():
        return scores
    out.mkdir(parents=True, exist_ok=True)
    model = export_checkpoint(str(snapshot), str(out / "model.pt"), name=MODEL_NAME, about=about)
    return evaluate_once(data, model, scores, ["--cases", *cases], threads, device)


def require_snapshots(snapshots: Sequence[Path]) -> None:
    missing = [str(s) for s in snapshots if not Path(s).is_file()]
    if missing:
        raise SystemExit(f"No such snapshot: {', '.join(missing)}. A run writes one at every validation step "
                         "(val_every) into <out_dir>/snapshots when keep_snapshots is on.")


def select(snapshots: Sequence[Path], out: Path, data: Path, about: Optional[dict] = None, threads: int = 1,
           bundled: Optional[Scores] = None, contrasts: Optional[Sequence[str]] = None,
           tolerance: float = 0.05, device: str = "cpu") -> tuple[Optional[str], Dict[str, str], Dict[str, Scores]]:
    """Score every snapshot (named by its file stem) and apply the checkpoint rule: (chosen, reasons, scores).
    ``contrasts``: the targets the rule weighs (default: the first snapshot's)."""
    require_snapshots(snapshots)
    names = [Path(s).stem for s in snapshots]
    if len(set(names)) != len(names):
        raise SystemExit(f"Snapshot names repeat ({names}): score snapshots of different runs into different "
                         "--out folders.")
    set_aside = {name: set_aside_cases(Path(s)) for name, s in zip(names, snapshots)}
    if len({tuple(sorted(c)) for c in set_aside.values()}) > 1:
        raise SystemExit("The snapshots' runs set aside different patients "
                         f"({', '.join(f'{n}: {sorted(c)}' for n, c in set_aside.items())}); the rule compares "
                         "scores on the same patients: select among runs made with one split.")
    contrasts = list(contrasts or snapshot_contrasts(Path(snapshots[0])))
    scored = {name: run_scores(load_rows(score_snapshot(Path(s), set_aside[name], out / name, data, about, threads,
                                                        device)), contrasts) for name, s in zip(names, snapshots)}
    chosen, reasons = choose(scored, bundled, tolerance)
    return chosen, reasons, scored


def cmd_select(args: argparse.Namespace) -> None:
    data = lgg_folder_or_exit(args.data)
    about = load_about(args.about, args.version) if args.about else None
    snapshots = [Path(s) for s in args.snapshots]
    require_snapshots(snapshots)
    bundled_name, bundled_rows, bundled = None, None, None
    if args.bundled:
        bundled_name, folder = named_run(args.bundled)
        bundled_rows = load_rows(folder)
        expected = set(set_aside_cases(snapshots[0]))
        if {r["case"] for r in bundled_rows} != expected:
            raise SystemExit(f"{folder} scored {sorted({r['case'] for r in bundled_rows})}, not the set-aside "
                             f"patients {sorted(expected)}: run collagan-impute evaluate --cases on those with the "
                             "bundled model.")
    contrasts = args.contrasts or snapshot_contrasts(snapshots[0])
    if bundled_rows is not None:
        bundled = run_scores(bundled_rows, contrasts)
    chosen, reasons, scored = select(snapshots, Path(args.out), data, about, args.threads, bundled, contrasts,
                                     args.tolerance, args.device)
    print_choice(scored, reasons, chosen, contrasts, bundled_name, bundled)


def add_parser(sub) -> None:
    p = sub.add_parser("select", help="export and score snapshots on the set-aside patients, then choose one")
    p.add_argument("snapshots", nargs="+", help="generator snapshots of one run (runs/<run>/snapshots/g_*.pt)")
    p.add_argument("--out", required=True, help="folder for each snapshot's model and evaluate run")
    p.add_argument("--about", help="JSON file with the card's words for users (configs/card_lgg.json)")
    p.add_argument("--version", default="candidate", help="the version the words name (default: candidate)")
    p.add_argument("--bundled", metavar="NAME=FOLDER", help="the bundled model's evaluate run on the same patients")
    p.add_argument("--data", help="folder of complete LGG cases (default: as 'train' finds it)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--contrasts", nargs="+", help="targets the rule weighs (default: the snapshots' contrasts)")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.set_defaults(func=cmd_select)
