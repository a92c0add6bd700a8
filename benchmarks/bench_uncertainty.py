"""What the uncertainty map costs: end-to-end imputation of a 240x240x155 case with and without ``--uncertainty``
at the default settings (bundled model, ``precision="auto"``, device auto), runs interleaved; prints the
figures and the ratio against the bar of at most 4x the plain imputation time.

Usage:
    python benchmarks/bench_uncertainty.py [--model M.pt] [--repeats 5] [--threads 2]

Each run is ``impute_case`` from disk to disk (read two inputs, mask and normalize, infer, write the volume and
its sidecar; with the map also its members' passes and the map's file), in this process with the model loaded
once; the case is built from the bundled sample case as the other benchmarks do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "CollaGANImpute"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from benchlib import CpuLoad, write_brats_sized_case  # noqa: E402
from CollaGANImputeLib import impute_case, load_model  # noqa: E402
from CollaGANImputeLib.hardware import cpu_name  # noqa: E402
from CollaGANImputeLib.models import default_model, sample_case_dir  # noqa: E402
from CollaGANImputeLib.uncertainty import ensemble_members  # noqa: E402

BAR = 4.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model .pt file (default: the bundled model)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each kind, interleaved (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--target", default="t1c", help="contrast imputed from the others (default t1c)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model) if args.model else default_model()
    contrasts = list(model.card.contrasts)
    inputs = [c for c in contrasts if c != args.target]
    with tempfile.TemporaryDirectory() as tmp:
        case = write_brats_sized_case(sample_case_dir(), Path(tmp) / "case", contrasts)
        files = {c: case / f"{case.name}-{c}.nii.gz" for c in inputs}
        times: dict[str, list[float]] = {"plain": [], "uncertainty": []}
        load = CpuLoad()
        impute_case(files, model, out_dir=Path(tmp) / "warm", targets=[args.target], device=args.device)  # warm-up
        for repeat in range(args.repeats):
            for kind in ("plain", "uncertainty"):
                out = Path(tmp) / f"{kind}{repeat}"
                start = time.perf_counter()
                impute_case(files, model, out_dir=out, targets=[args.target], device=args.device,
                            uncertainty=kind == "uncertainty")
                times[kind].append(time.perf_counter() - start)
        others = load.others_cores()
    plain, with_map = statistics.median(times["plain"]), statistics.median(times["uncertainty"])
    ratio = with_map / plain
    members = ensemble_members(inputs)
    print(f"Machine: {cpu_name()}, {torch.get_num_threads()} torch threads, device {args.device}; other processes "
          f"used {others:.2f} cores meanwhile")
    print(f"Model {model.card.name}; {args.target} from {'+'.join(inputs)}, 240x240x155, precision auto; "
          f"members: {', '.join(m.describe() for m in members)} ({len(members)} more passes)")
    print(f"plain imputation       median {plain:6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times['plain'])})")
    print(f"with uncertainty map   median {with_map:6.2f} s  (runs: "
          f"{', '.join(f'{t:.2f}' for t in times['uncertainty'])})")
    print(f"ratio {ratio:.2f}x (bar: at most {BAR:.0f}x): {'met' if ratio <= BAR else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"plain_s": times["plain"], "uncertainty_s": times["uncertainty"],
                                               "ratio": ratio, "members": len(members), "others_cores": others,
                                               "threads": torch.get_num_threads(), "cpu": cpu_name()}, indent=1))
    return 0 if ratio <= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
