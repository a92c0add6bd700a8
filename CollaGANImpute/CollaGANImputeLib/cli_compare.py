"""``collagan-impute compare``: score a synthetic volume against the acquired one with the evaluation protocol
(docs/EVALUATION.md), as the Slicer module's and the web page's Compare do. The scores go to stdout; with ``--out``
also a CSV of them, the signed error map, the scored region M_t and a picture, written together or not at all.

The synthetic volume may come from this package (its JSON sidecar names the target and the inputs) or from any
other method, given in p99 units as EVALUATION.md reads it: ``--target`` then names its contrast.

Example:
    collagan-impute compare out/P1-t1c-synthetic-collagan.nii.gz cases/P1      # the case folder holds the real t1c
    collagan-impute compare other.nii.gz --target t1c --real P1-t1c.nii.gz \\
        --input t1n=P1-t1n.nii.gz --input t2f=P1-t2f.nii.gz --out compare/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .cli_common import EXIT_OK, _parse_inputs
from .errors import InputError

if TYPE_CHECKING:
    from .scene.comparison import Comparison

#: The synthetic volume's 99th percentile inside the head outside this range: it is likely not in p99 units.
P99_UNITS = (0.25, 4.0)


def recorded_imputation(path: Path) -> dict[str, object]:
    """The target, inputs and model that this package's JSON sidecar beside ``path`` records ({} without one)."""
    from .provenance import sidecar_path

    sidecar = sidecar_path(path)
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
    except (OSError, UnicodeDecodeError, ValueError):
        record = {}
    if not isinstance(record, dict) or not record.get("collagan_target"):
        return {}
    return {"target": str(record["collagan_target"]), "model": str(record.get("collagan_model", "")),
            "inputs": [c for c in str(record.get("collagan_inputs", "")).split(",") if c]}


def compared_files(args: argparse.Namespace, target: str, recorded_inputs: list[str]
                   ) -> tuple[Path, dict[str, Path], Optional[Path]]:
    """(real target, inputs, lesion mask) from the case folder, or from --real, --input and --lesion."""
    from .case_names import find_case_files, find_lesion_mask
    from .contrast_names import CANONICAL_CONTRASTS

    lesion = Path(args.lesion) if args.lesion else None
    if args.case:
        if args.real or args.input:
            raise InputError("Give the case folder, or --real and --input files, not both.")
        files = find_case_files(args.case, CANONICAL_CONTRASTS)  # this package's outputs are never found
        if target not in files:
            raise InputError(f"{args.case} holds no acquired '{target}' (<case>-{target}.nii.gz) to compare with; "
                             "give it with --real PATH and the inputs with --input.")
        names = args.inputs.split(",") if args.inputs else recorded_inputs or [c for c in files if c != target]
        absent = [c for c in names if c not in files]
        if absent:
            raise InputError(f"{args.case} lacks the input(s) {', '.join(absent)} that the synthetic image was "
                             "imputed from; give them with --input CONTRAST=PATH.")
        return files[target], {c: files[c] for c in names}, lesion or find_lesion_mask(args.case)
    if not args.real or not args.input:
        raise InputError("Give the case folder, or --real PATH (the acquired target) with --input CONTRAST=PATH for "
                         "each input the synthetic image was imputed from.")
    return Path(args.real), _parse_inputs(args.input), lesion


def cmd_compare(args: argparse.Namespace) -> int:
    import numpy as np

    from .case_files import read_input
    from .io import read_lesion_mask, synthetic_label
    from .refusals import refuse_unusable_inputs
    from .scene.comparison import compare_to_reference, score_table

    path = Path(args.synthetic)
    recorded = recorded_imputation(path)
    target = args.target or recorded.get("target")
    if not target:
        raise InputError(f"{path.name} has no sidecar saying which contrast it is: give --target (e.g. --target t1c).")
    real_path, input_paths, lesion_path = compared_files(args, str(target), list(recorded.get("inputs", [])))
    if target in input_paths:
        raise InputError(f"'{target}' is the contrast compared with: it cannot be one of the inputs too.")
    synthetic = read_input(path)
    real = read_input(real_path, str(target))
    why = synthetic_label(real)
    if why is not None:
        raise InputError(f"The real '{target}' ({real_path.name}) is not an acquired scan ({why}): compare with the "
                         f"acquired '{target}'.")
    inputs = {c: read_input(p, c) for c, p in input_paths.items()}
    refuse_unusable_inputs(inputs, inputs)
    comparison = compare_to_reference(synthetic, real, inputs, read_lesion_mask(lesion_path) if lesion_path else None,
                                      protocol=args.protocol)
    level = float(np.percentile(comparison.synthetic[comparison.case.mask], 99))
    if not P99_UNITS[0] <= level <= P99_UNITS[1]:
        print(f"warning: {path.name}'s 99th percentile inside the head is {level:.3g}, not about 1: it is likely "
              "not in p99 units, which the scores assume (EVALUATION.md). Divide it by its 99th percentile inside "
              "the head first.", file=sys.stderr)
    print(f"{path.name} against {real_path.name} ({target} from {'+'.join(inputs)}; EVALUATION.md {args.protocol}):")
    for label, value, note in score_table(comparison.scores):
        print(f"  {label:28s} {value:>10s}  {note}")
    if args.out:
        written = _write(Path(args.out), path, str(target), comparison, {
            "synthetic": str(path), "real": str(real_path), "inputs": "+".join(inputs),
            "lesion": str(lesion_path or ""), "protocol": args.protocol}, [real_path, *input_paths.values()],
            str(recorded.get("model") or "given"))
        for file in written:
            print(f"wrote {file}")
    return EXIT_OK


def _write(out: Path, synthetic: Path, target: str, comparison: Comparison, context: dict[str, str],
           sources: list[Path], method: str) -> list[Path]:
    """The scores CSV, the signed error map, the scored region and the picture, staged and committed as one set."""
    from .refusals import refuse_overwriting_inputs

    stem = synthetic.name[: -len(".nii.gz")] if synthetic.name.lower().endswith(".nii.gz") else synthetic.stem
    files = [out / f"{stem}-compare.csv", out / f"{stem}-error.nii.gz", out / f"{stem}-scored-region.nii.gz",
             out / f"{stem}-compare.png"]
    refuse_overwriting_inputs(files, {str(i): p for i, p in enumerate([synthetic, *sources])})
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _commit(files, target, comparison, context, method, synthetic.name)
    except BaseException:
        if created:  # nothing is left of a set that was not written, the folder made for it included
            out.rmdir()
        raise


def _commit(files: list[Path], target: str, comparison: Comparison, context: dict[str, str], method: str,
            name: str) -> list[Path]:
    import numpy as np

    from .figures import montage_png
    from .io import OutputSet, write_volume
    from .provenance import error_map_description, scored_region_description
    from .scene.comparison import write_scores_csv

    case = comparison.case
    with OutputSet() as outputs:
        outputs.stage(files[0], lambda tmp: write_scores_csv(tmp, comparison.scores, context), suffix=".csv")
        write_volume(comparison.error_image, files[1], outputs=outputs,
                     description=error_map_description(target))
        # Where the scores were taken (M_t), for scoring the same voxels with other code.
        write_volume(case.to_image(comparison.region.astype(np.uint8)), files[2], outputs=outputs,
                     description=scored_region_description(target, context["protocol"]))
        outputs.stage(files[3], lambda tmp: montage_png(
            tmp, {c: case.arrays[c] for c in case.arrays}, comparison.synthetic, target, real=comparison.real,
            mask=comparison.region, lesion=comparison.lesion, rows=2, method=method,
            title=f"{name} against {Path(context['real']).name}: NMSE {comparison.scores['nmse']:.3f}, "
                  f"SSIM {comparison.scores['ssim']:.3f}"), suffix=".png")
        return outputs.commit()
