"""``collagan-impute``: impute a missing MR contrast from the acquired ones with a CollaGAN model, score models,
run the demo, read a model's card (also ``python -m CollaGANImputeLib``). Every imputed image is synthetic:
research use only, not for diagnosis.

Exit codes a script can rely on: 0 done, 1 unexpected failure, 2 bad input, usage or output location,
3 unusable model, 4 no trained model bundled (pass --model), 130 cancelled (Ctrl-C), 143 terminated (SIGTERM).
Errors go to stderr as one clear line (docs/RELIABILITY.md lists them).

Examples:
    collagan-impute impute cases/TCGA-CS-4941 --out out/            # every missing contrast of the case
    collagan-impute impute cases/* --out out/ --montage             # a batch, with a picture per case
    collagan-impute impute cases/TCGA-CS-4941 --uncertainty         # with an uncertainty map per target
    collagan-impute impute cases/TCGA-CS-4941 --register            # inputs moved between scans: align first
    collagan-impute impute --input t1n=a.nii.gz --input t2f=b.nrrd --target t1c --out out/
    collagan-impute evaluate data/lgg/complete --out eval/ --model model.pt  # score on complete cases
    collagan-impute compare out/TCGA-CS-4941-t1c-synthetic-collagan.nii.gz cases/TCGA-CS-4941  # against the real
    collagan-impute demo --out demo-output
    collagan-impute info
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import textwrap
import threading
import warnings
from pathlib import Path
from typing import Optional, Sequence

from ._version import __version__

# Each command imports what it needs when it runs (torch, SimpleITK, scikit-image, matplotlib cost seconds):
# --help and --version import none of them, impute not the evaluation, metrics or figure code.
from .cli_common import (  # noqa: F401  (the exit codes a script relies on, importable from here)
    EXIT_CANCELLED,
    EXIT_FAILURE,
    EXIT_INPUT,
    EXIT_MODEL,
    EXIT_NO_MODEL,
    EXIT_OK,
    EXIT_TERMINATED,
    REGISTER_HELP,
    RUNTIME_CHOICES,
    RUNTIME_HELP,
    _announce_runtime,
    _device,
    _load,
    _non_negative_int,
    _parse_inputs,
    _positive,
    _Progress,
)
from .cli_compare import cmd_compare
from .cli_evaluate import cmd_demo, cmd_evaluate
from .errors import Cancelled, CollaGANError, InputError, ModelError, NoBundledModelError, OutputError, Terminated


def cmd_impute(args: argparse.Namespace) -> int:
    if bool(args.case) == bool(args.input):
        raise InputError("Give case folder(s) or --input CONTRAST=PATH pairs (not both, not neither).")
    if args.name and len(args.case) > 1:
        raise InputError("--name names one case; with several case folders the folder names are used.")
    from .pipeline import impute_case

    cases = [_parse_inputs(args.input)] if args.input else [Path(c) for c in args.case]
    model = _load(args.model)
    _announce_runtime(model, args)
    failed = []
    for case in cases:
        label = case.name if isinstance(case, Path) else (args.name or "inputs")
        progress = _Progress(f"imputing {label}")
        try:
            written = impute_case(
                case, model, out_dir=args.out, targets=args.target or None, reference=args.reference,
                device=args.device, batch_size=args.batch_size, progress=progress, name=args.name,
                montage=args.montage, precision=args.precision, uncertainty=args.uncertainty,
                overwrite=args.overwrite, allow_synthetic=args.allow_synthetic_input,
                register=args.register, runtime=args.runtime)
        except (InputError, OutputError) as exc:
            if len(cases) == 1:
                raise
            failed.append(label)
            print(f"error: {label}: {exc}", file=sys.stderr)  # a batch goes on past one bad case
            continue
        finally:
            progress.close()
        for target, path in written.items():
            print(f"{target}: {path}  (SYNTHETIC, model {model.card.name})")
            if args.uncertainty:
                from .uncertainty import uncertainty_path

                print(f"{target}: {uncertainty_path(path)}  (uncertainty map of the synthetic {target}, not an image: "
                      "model disagreement, not a confidence map)")
        args.done.append(label)
    if failed:
        print(f"error: {len(failed)} of {len(cases)} cases failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_INPUT
    return EXIT_OK


def cmd_web(args: argparse.Namespace) -> int:
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"Warning: serving on {args.host}: anyone who can reach this address can use the page and its "
              "uploads. Put it behind an authenticating reverse proxy (docs/WEB.md).", file=sys.stderr)
    try:
        from .web_serve import serve
    except ImportError as exc:
        raise InputError(f"The web app needs the 'web' extra: pip install 'collagan-impute[web]' ({exc}).") from exc
    return serve(host=args.host, port=args.port, model=args.model, device=args.device, precision=args.precision,
                 runtime=args.runtime,
                 allowed_origins=args.allow_origin, idle_timeout=args.idle_timeout)


def cmd_info(args: argparse.Namespace) -> int:
    model = _load(args.model)
    if args.json:
        print(model.card.to_json())
    else:
        from .model_info import format_overview, model_overview

        print(format_overview(model_overview(model)))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    description, epilog = __doc__.replace("``", "").split("\n\n", 1)  # the docstring's reST marks are not help
    parser = argparse.ArgumentParser(prog="collagan-impute", description=textwrap.fill(" ".join(description.split())),
                                     epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, precision: str = "auto") -> None:
        p.add_argument("--model", help="model .pt file or bundled model name (default: the bundled model)")
        p.add_argument("--device", default="auto", type=_device, help="auto (CUDA if available), cuda or cpu")
        p.add_argument("--batch-size", type=_positive, default=None,
                       help="slices per forward pass on CUDA (default: chosen for the device; halved on OOM)")
        p.add_argument("--precision", default=precision, choices=["auto", "fp32", "bf16", "fp16"],
                       help=f"auto = bf16 where the hardware runs it natively, fp32 = reproducible everywhere "
                            f"(default: {precision})")
        p.add_argument("--threads", type=_positive, help="CPU threads (default: the runtime's choice)")
        p.add_argument("--runtime", default="auto", choices=RUNTIME_CHOICES, help=RUNTIME_HELP)
        p.add_argument("--target", action="append", help="contrast to impute (repeatable; default: the missing)")

    p = sub.add_parser("impute", help="impute the missing contrast(s) of one case")
    p.add_argument("case", nargs="*", help="case folder(s) with <case>-<contrast>.nii.gz files")
    p.add_argument("--input", action="append", default=[], metavar="CONTRAST=PATH",
                   help="explicit input file, or DICOM folder (its series for CONTRAST by their tags; FOLDER#N: "
                        "series number N)")
    p.add_argument("--out", help="output folder (default: next to the inputs)")
    p.add_argument("--reference", help="contrast whose grid the output takes (default: the first input)")
    p.add_argument("--name", help="case name used in output file names (default: folder name)")
    p.add_argument("--montage", action="store_true", help="also write a PNG per target: inputs | synthetic")
    p.add_argument("--overwrite", action="store_true",
                   help="replace outputs of another case in the output folder (default: refused; a rerun of the "
                        "same case replaces its own outputs)")
    p.add_argument("--allow-synthetic-input", action="store_true",
                   help="use inputs whose header or sidecar says they are synthetic (default: refused); recorded "
                        "in the outputs' provenance")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write <case>-<target>-uncertainty-collagan.nii.gz: how much the model's predictions "
                        "from smaller input sets and mirrored inputs disagree (p99 units; about 3x the time). A "
                        "disagreement map, not a confidence map: it misses errors all predictions share")
    p.add_argument("--register", action="store_true", help=REGISTER_HELP)
    common(p)
    p.set_defaults(func=cmd_impute)

    p = sub.add_parser("evaluate", help="score imputation on complete cases (EVALUATION.md protocol)")
    p.add_argument("data", help="folder of case folders")
    p.add_argument("--out", required=True, help="folder for CSV, JSON, Markdown and montage PNGs")
    p.add_argument("--cases", nargs="+", help="case folder names to use (default: all)")
    p.add_argument("--split", help="JSON split file; scores the cases listed under --split-set")
    p.add_argument("--split-set", default="val", help="key of the split file (default: val)")
    p.add_argument("--all-subsets", action="store_true", help="also score every smaller input set (missing-N study)")
    p.add_argument("--save-volumes", action="store_true", help="also write the imputed volumes")
    p.add_argument("--uncertainty", action="store_true",
                   help="also score each imputation's uncertainty map (rho_U, AUROC_U; about 3x the time)")
    p.add_argument("--protocol", default="v3", choices=["v3", "v2"],
                   help="docs/EVALUATION.md version (default: v3, scored where the real image was acquired; v2 "
                        "reproduces earlier tables)")
    p.add_argument("--register", action="store_true",
                   help=REGISTER_HELP.replace("the inputs", "the inputs and the real target", 1))
    common(p, precision="fp32")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="score a synthetic volume against the acquired one (EVALUATION.md)")
    p.add_argument("synthetic", help="the synthetic volume (this package's output, or another method's in p99 units)")
    p.add_argument("case", nargs="?", help="case folder holding the acquired target and the inputs (BraTS names)")
    p.add_argument("--target", help="contrast of the synthetic volume (default: what its sidecar records)")
    p.add_argument("--inputs", help="comma-separated contrasts it was imputed from (default: its sidecar's, else "
                                    "every other contrast of the case)")
    p.add_argument("--real", help="the acquired target volume (instead of a case folder)")
    p.add_argument("--input", action="append", default=[], metavar="CONTRAST=PATH",
                   help="an input volume (instead of a case folder; repeatable)")
    p.add_argument("--lesion", help="lesion label map (default: the case folder's <case>-seg file, if any)")
    p.add_argument("--out", help="folder for the scores CSV, the signed error map, the scored region and a picture "
                                 "(default: print only)")
    p.add_argument("--protocol", default="v3", choices=["v3", "v2"],
                   help="docs/EVALUATION.md version (default: v3; v2 reproduces earlier tables)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="the bundled sample case with the bundled model")
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    common(p)
    p.set_defaults(func=cmd_demo, all_subsets=False)

    p = sub.add_parser("web", help="serve the panel as a web page (trame-slicer; needs the 'web' extra)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    p.add_argument("--model", help="model .pt file or bundled model name (default: the bundled model)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="auto (CUDA if available)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="as for impute (default: auto)")
    p.add_argument("--threads", type=_positive, help="CPU threads (default: the runtime's choice)")
    p.add_argument("--runtime", default="auto", choices=RUNTIME_CHOICES, help=RUNTIME_HELP)
    p.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                   help="another origin whose pages may use the server, e.g. a reverse proxy's "
                        "https://collagan.example.org (repeatable; default: only the served page)")
    p.add_argument("--idle-timeout", type=_non_negative_int, default=0, metavar="SECONDS",
                   help="stop after this many seconds with no page open (default: 0, never; results not "
                        "downloaded are lost when it stops)")
    p.set_defaults(func=cmd_web)

    p = sub.add_parser("info", help="what a model is for, its limits and validation (--json: the full card)")
    p.add_argument("model", nargs="?", help="model .pt file or bundled name (default: the bundled model)")
    p.add_argument("--json", action="store_true",
                   help="print the full embedded card as JSON (architecture, training, every method's metrics)")
    p.set_defaults(func=cmd_info)
    return parser


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.done = []  # cases of a batch already written (a cancel does not undo them)
    previous = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM is cleaned up after like Ctrl-C
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "threads", None):
            from .hardware import set_num_threads

            set_num_threads(args.threads)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, category, *rest: print(
                f"warning: {message}", file=sys.stderr)
            code = args.func(args)
            sys.stdout.flush()  # a reader that went away (`info --json | head`) shows here, not at exit
            return code
    except BrokenPipeError:
        # Quietly, like other command-line tools: stdout goes to devnull so the exit flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except NoBundledModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_MODEL
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    except (InputError, CollaGANError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except (KeyboardInterrupt, Cancelled) as exc:
        kept = f"; {len(args.done)} case(s) done before were kept: {', '.join(args.done)}" if args.done else ""
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "cancelled"
        print(f"{what}: nothing of the case in progress was written{kept}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_CANCELLED
    except MemoryError:  # wherever it strikes: one line (the core names the volume where it can)
        print("error: out of memory; nothing of the case in progress was written. Free memory or use a machine with "
              "more, or crop or resample the inputs.", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # a file the command reads or writes outside the core's checks: one line, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
