"""Bundle a chosen generator: export it, score it on the validation patients (and on another domain), tabulate it
beside earlier models, and export it again with those figures in its card.

Every step writes into ``--out`` and is skipped when its result is already there, so an interrupted bundle is
resumed by repeating the command. What it writes:

- ``model_nometrics.pt``: the first export (the card's words, no figures), the one that is scored;
- ``eval_lgg/``, ``eval_other/``: ``collagan-impute evaluate`` runs (the split's validation patients; the other
  domain's cases, never trained on);
- ``report_lgg.md``, ``report_other.md``: the tables of :mod:`.report`, this model last;
- ``card_metrics.json`` and ``model.pt``: the model to bundle, its card holding the validation figures.

With ``--install`` it then replaces the bundled model of that name in ``Resources/Models``: the file and its ONNX
export (``model.onnx``, written beside ``model.pt`` by the export), their SHA-256 in ``models.json`` and the card
page's title, SHA-256 and size lines (:func:`install`). The card page's prose (what changed, the tables) is still
the author's to write.

Example:
    python -m training.collagan_train.main bundle runs/soup/snapshots/g_v5_i2000.pt --version v6 --out runs/v6 \
        --about training/collagan_train/configs/card_lgg.json --other ../shared/data/openms \
        --compare voxreg=runs/baselines/eval_lgg_voxreg --compare v5=runs/v5/eval_lgg \
        --compare-other voxreg=runs/baselines/eval_openms_voxreg --compare-other v5=runs/v5/eval_openms
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from CollaGANImputeLib.atomic import atomic_path, write_text_atomic
from CollaGANImputeLib.contract import onnx_path_for, read_card, sha256_of

from .cases import REPO_ROOT, lgg_folder_or_exit
from .choose import named_run
from .export import export_checkpoint, load_about
from .report import card_metrics, load_rows, report_text
from .run_records import snapshot_contrasts

MODEL_NAME = "collagan-lgg-t1n-t1c-t2f"  # the bundled model's name (Resources/Models/models.json)
#: The size limit of a bundled model file.
MAX_MEGABYTES = 20
MODELS_DIR = REPO_ROOT / "Resources" / "Models"


def evaluate_once(data: Path, model: Path, out: Path, extra: Sequence[str], threads: int, device: str) -> Path:
    """``collagan-impute evaluate`` of ``model`` on ``data`` into ``out``, unless ``out`` holds a finished run."""
    from CollaGANImputeLib.cli import main as core_cli

    if (out / "scores.json").is_file():
        return out
    code = core_cli(["evaluate", str(data), *extra, "--model", str(model), "--threads", str(threads),
                     "--device", device, "--out", str(out)])
    if code:
        raise SystemExit(f"evaluate of {model} on {data} failed (exit {code}); see the messages above.")
    return out


def bundle(checkpoint: Path, out: Path, version: str, about: Optional[dict], lgg: Path, split: Path,
           other: Optional[Path] = None, compare: Optional[Dict[str, Path]] = None,
           compare_other: Optional[Dict[str, Path]] = None, contrasts: Optional[Sequence[str]] = None,
           name: str = MODEL_NAME, threads: int = 1, device: str = "cpu") -> Path:
    """Export, score and re-export ``checkpoint`` into ``out`` (see the module docstring); returns ``out/model.pt``.
    ``compare`` / ``compare_other``: earlier evaluate runs on the same patients, tabulated before this one;
    ``contrasts``: the targets tabulated (default: the checkpoint's contrasts)."""
    if not Path(checkpoint).is_file():
        raise SystemExit(f"No such checkpoint: {checkpoint}. Bundle a generator snapshot or an `average` output.")
    if version in (compare or {}) or version in (compare_other or {}):
        raise SystemExit(f"'{version}' is both the new model's version and a --compare name: name them apart.")
    contrasts = list(contrasts or snapshot_contrasts(Path(checkpoint)))
    out.mkdir(parents=True, exist_ok=True)
    plain = out / "model_nometrics.pt"
    if not plain.is_file():
        export_checkpoint(str(checkpoint), str(plain), name=name, about=about)
    lgg_run = evaluate_once(lgg, plain, out / "eval_lgg", ["--split", str(split)], threads, device)
    runs = {n: load_rows(f) for n, f in (compare or {}).items()}
    runs[version] = load_rows(lgg_run)
    _check_same_cases(runs, version)
    write_text_atomic(out / "report_lgg.md", report_text(runs, contrasts, version, list(runs)[0]))
    metrics = {"model": version, **card_metrics(runs, contrasts, version)}
    write_text_atomic(out / "card_metrics.json", json.dumps(metrics, indent=2))
    if other is not None:
        other_run = evaluate_once(other, plain, out / "eval_other", [], threads, device)
        others = {n: load_rows(f) for n, f in (compare_other or {}).items()}
        others[version] = load_rows(other_run)
        _check_same_cases(others, version)
        write_text_atomic(out / "report_other.md", report_text(others, contrasts, version, list(others)[0]))
    final = out / "model.pt"
    export_checkpoint(str(checkpoint), str(final), name=name, about=about, metrics=metrics)
    return final


def install(model: Path, version: str, name: str = MODEL_NAME, models_dir: Path = MODELS_DIR) -> str:
    """Make ``model`` the bundled model ``name``: copy it over the manifest entry's file, put its SHA-256 in
    ``models.json`` and update the card page's title (version), SHA-256 and size lines; returns the SHA-256.

    The new texts are made before anything is written, and each file is replaced by a rename, so a failure leaves
    whole files (a half-done swap fails the SHA-256 check at load).

    Example:
        >>> install(Path("runs/v7/model.pt"), "v7")   # doctest: +SKIP
    """
    manifest_path = Path(models_dir) / "models.json"
    if not manifest_path.is_file():
        raise SystemExit(f"No {manifest_path}: --install replaces a bundled model; add its manifest entry first.")
    manifest = json.loads(manifest_path.read_text())
    entries = [e for e in manifest.get("models", []) if e.get("name") == name]
    if not entries:
        raise SystemExit(f"{manifest_path} lists no model named '{name}': add an entry for it (file, sha256, card) "
                         "or pass the listed name with --name.")
    megabytes = Path(model).stat().st_size / 2 ** 20
    if megabytes > MAX_MEGABYTES:
        raise SystemExit(f"{model} is over the {MAX_MEGABYTES} MB limit of a bundled model; not installed.")
    entry, sha = entries[0], sha256_of(model)
    entry["sha256"] = sha
    onnx = onnx_path_for(model)
    if onnx.is_file():  # the ONNX export of the same weights, named like the model file (models.py checks it)
        # Loading trusts the listed SHA-256 instead of reading the ONNX card again: the cards must agree now.
        if read_card(onnx).to_json() != read_card(model).to_json():
            raise SystemExit(f"{onnx} does not carry the card of {Path(model).name} (another model's export or an "
                             "older one): export both again from one checkpoint; nothing was installed.")
        entry["onnx"], entry["onnx_sha256"] = Path(entry["file"]).with_suffix(".onnx").name, sha256_of(onnx)
    else:
        entry.pop("onnx", None)
        entry.pop("onnx_sha256", None)
    texts = {manifest_path: json.dumps(manifest, indent=2) + "\n"}
    card_page = Path(models_dir) / entry["card"] if entry.get("card") else None
    if card_page is not None and card_page.is_file():
        text = re.sub(r"^(# Model card: .*)\(v[^)]*\)", rf"\g<1>({version})", card_page.read_text(), count=1,
                      flags=re.M)
        text = re.sub(r"(\| SHA-256 \| `)[0-9a-f]{64}(`)", rf"\g<1>{sha}\g<2>", text, count=1)
        texts[card_page] = re.sub(r"(TorchScript, )[0-9.]+ MB", rf"\g<1>{megabytes:.1f} MB", text, count=1)
    target = Path(models_dir) / entry["file"]
    copies = {model: target, **({onnx: onnx_path_for(target)} if onnx.is_file() else {})}
    for source, destination in copies.items():
        with atomic_path(destination) as staged:
            shutil.copyfile(source, staged)
    if not onnx.is_file() and onnx_path_for(target).is_file():
        onnx_path_for(target).unlink()  # an earlier model's export must not stay beside this one
    for path, text in texts.items():
        write_text_atomic(path, text)
    return sha


def _check_same_cases(runs: Dict[str, List[dict]], version: str) -> None:
    """Side-by-side figures only mean something on the same patients."""
    expected = {r["case"] for r in runs[version]}
    for run_name, rows in runs.items():
        if {r["case"] for r in rows} != expected:
            raise SystemExit(f"The '{run_name}' run scored other patients than {version} "
                             f"({sorted({r['case'] for r in rows} ^ expected)} differ): compare runs of "
                             "`collagan-impute evaluate` on the same cases.")


def cmd_bundle(args: argparse.Namespace) -> None:
    lgg = lgg_folder_or_exit(args.data)
    about = load_about(args.about, args.version) if args.about else None
    final = bundle(Path(args.checkpoint), Path(args.out), args.version, about, lgg, Path(args.split),
                   Path(args.other) if args.other else None, dict(named_run(c) for c in args.compare),
                   dict(named_run(c) for c in args.compare_other), args.contrasts, args.name, args.threads,
                   args.device)
    with open(Path(args.out) / "commands.txt", "a") as handle:
        handle.write(f"python -m training.collagan_train.main {shlex.join(args.argv)}\n")
    megabytes = final.stat().st_size / 2 ** 20
    print((Path(args.out) / "report_lgg.md").read_text())
    print(f"\n{final}: {megabytes:.1f} MB, sha256 {sha256_of(final)}")
    if megabytes > MAX_MEGABYTES:
        print(f"Too large to bundle: {megabytes:.1f} MB, the limit is {MAX_MEGABYTES} MB.")
    if args.install:
        install(final, args.version, args.name, Path(args.models_dir))
        print(f"Installed as the bundled '{args.name}' in {args.models_dir} (file, models.json, the card page's "
              "title, SHA-256 and size). Still to write: the card page's prose and tables (from report_lgg.md).")
    else:
        print("To bundle it: repeat with --install (replaces the file, its models.json SHA-256 and the card page's "
              f"header lines), then write the card page's prose (`collagan-impute info {final}` prints the "
              "embedded card).")


def add_parser(sub) -> None:
    p = sub.add_parser("bundle", help="export a chosen generator, score it on validation and another domain, "
                                      "and export it again with the figures in its card")
    p.add_argument("checkpoint", help="the chosen generator (a snapshot, or an `average` output)")
    p.add_argument("--out", required=True, help="folder for the exports, evaluate runs and reports")
    p.add_argument("--version", required=True, help="the new model's version (its column in the tables)")
    p.add_argument("--about", help="JSON file with the card's words for users (configs/card_lgg.json)")
    p.add_argument("--data", help="folder of complete LGG cases (default: as 'train' finds it)")
    p.add_argument("--split", default=str(REPO_ROOT / "training" / "splits" / "lgg_split.json"),
                   help="the split whose validation patients are scored")
    p.add_argument("--other", help="a folder of cases from another domain, scored separately (never trained on)")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=FOLDER",
                   help="an earlier evaluate run on the validation patients (repeatable)")
    p.add_argument("--compare-other", action="append", default=[], metavar="NAME=FOLDER",
                   help="an earlier evaluate run on the --other cases (repeatable)")
    p.add_argument("--contrasts", nargs="+", help="targets tabulated (default: the checkpoint's contrasts)")
    p.add_argument("--name", default=MODEL_NAME, help=f"the model's name in its card (default: {MODEL_NAME})")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--install", action="store_true",
                   help="then replace the bundled model of --name with it (file, models.json, card page header)")
    p.add_argument("--models-dir", default=str(MODELS_DIR), help=f"where --install puts it (default: {MODELS_DIR})")
    p.set_defaults(func=cmd_bundle)
