"""Start-up cost of the ``collagan-impute`` command: import time, heavy modules loaded, and CLI wall time.

For each tree (this checkout, and with ``--before REV`` the package as it was at that git revision, unpacked
with ``git archive`` into a temporary folder), in fresh processes and interleaved run by run:

- ``python -X importtime -m CollaGANImputeLib --version``: total import time of the command line and which
  heavy modules (torch, SimpleITK, scipy, scikit-image, matplotlib, the evaluation module) it loads up front;
- the wall time of ``--help``, ``info`` and ``impute`` of one BraTS-sized case (240x240x155, two inputs,
  the missing contrast imputed with the bundled model on the CPU), and for ``impute`` the time until its first
  progress report (what a user waits before the first slice) and the heavy modules it loads.

Medians over ``--runs`` (default 5), wall time and the command's own CPU time (user + system; on a machine shared
with other jobs it varies far less than wall time). The CPU use of other processes during the runs is printed
too: figures from a busy machine are slower, and only a before/after pair from the same run compares fairly.

Example:
    python benchmarks/bench_startup.py --runs 5 --threads 2                    # this checkout, ~2 min
    python benchmarks/bench_startup.py --runs 5 --before HEAD~3 --json startup.json
    python benchmarks/bench_startup.py --runs 3 --before 95a6563 --after 539e2fe   # two commits, not the checkout
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchlib import CpuLoad, write_brats_sized_case
from CollaGANImputeLib.hardware import cpu_name

REPO = Path(__file__).resolve().parents[1]
HEAVY = ["torch", "SimpleITK", "scipy.ndimage", "skimage", "matplotlib", "CollaGANImputeLib.evaluate",
         "CollaGANImputeLib.metrics", "CollaGANImputeLib.figures"]


def parse_importtime(stderr: str) -> tuple[float, set[str]]:
    """(seconds of import time, names of the modules imported) from ``-X importtime`` output."""
    total, names = 0, set()
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        _, cumulative, name = line[len("import time:"):].split("|", 2)
        if not name[1:].startswith(" "):  # a top-level import (nested ones are indented further)
            total += int(cumulative)
        names.add(name.strip())
    return total / 1e6, names


def unpack(rev: str, folder: Path) -> Path:
    """The tree of ``rev`` (package, resources) in ``folder``, via ``git archive``: the checkout is untouched."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "CollaGANImpute", "Resources"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


class Tree:
    """One version of the package, run as ``python -m CollaGANImputeLib`` with its folder first on the path."""

    def __init__(self, label: str, root: Path, work: Path) -> None:
        self.label, self.root, self.work = label, root, work
        self.env = {**os.environ, "PYTHONPATH": str(root / "CollaGANImpute"), "PYTHONWARNINGS": "ignore",
                    "COLLAGAN_RESOURCES": str(root / "Resources"), "MPLBACKEND": "Agg"}
        self.samples: dict[str, list] = {}

    def add(self, key: str, value) -> None:
        self.samples.setdefault(key, []).append(value)

    def run(self, args: list[str], importtime: bool = False) -> tuple[float, float, str, Optional[float]]:
        """Wall time, CPU time (user + system, of the process and its threads), stderr, and the time of the first
        progress report (``imputing ...`` on stderr) if any."""
        command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "CollaGANImputeLib", *args]
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=self.work, env=self.env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        first, chunks = None, []
        while True:
            chunk = os.read(process.stderr.fileno(), 65536)
            if not chunk:
                break
            chunks.append(chunk)
            if first is None and b"imputing" in chunk:
                first = time.perf_counter() - start
        _, status, usage = os.wait4(process.pid, 0)  # the child's own CPU time: little affected by other load
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        stderr = b"".join(chunks).decode(errors="replace")
        if process.returncode != 0:
            raise RuntimeError(f"{self.label}: {' '.join(args)} failed ({process.returncode}):\n{stderr[-2000:]}")
        return wall, usage.ru_utime + usage.ru_stime, stderr, first


def measure(tree: Tree, case: Path, threads: int, run: int) -> None:
    _, cpu, stderr, _ = tree.run(["--version"], importtime=True)  # imports the CLI module, runs nothing
    seconds, names = parse_importtime(stderr)
    tree.add("import_cli_s", seconds)
    tree.add("cli_loads", sorted(m for m in HEAVY if m in names))
    for name, args in (("help", ["--help"]), ("info", ["info"])):
        wall, cpu, _, _ = tree.run(args)
        tree.add(f"{name}_s", wall)
        tree.add(f"{name}_cpu_s", cpu)
    out = tree.work / f"out-{run}"
    impute = ["impute", str(case), "--out", str(out), "--device", "cpu", "--threads", str(threads)]
    wall, cpu, stderr, first = tree.run(impute, importtime=True)  # -X importtime adds well under 0.1 s
    tree.add("impute_s", wall)
    tree.add("impute_cpu_s", cpu)
    tree.add("impute_first_batch_s", first)
    seconds, names = parse_importtime(stderr)
    tree.add("impute_import_s", seconds)
    tree.add("impute_loads", sorted(m for m in HEAVY if m in names))


def summarize(tree: Tree) -> dict:
    summary = {}
    for key, values in tree.samples.items():
        numbers = [v for v in values if isinstance(v, (int, float))]
        if numbers:
            summary[key] = {"median": round(statistics.median(numbers), 3), "min": round(min(numbers), 3),
                            "max": round(max(numbers), 3), "runs": [round(v, 3) for v in numbers]}
        else:
            summary[key] = values[-1]
    return summary


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the impute runs (default 2)")
    parser.add_argument("--before", metavar="REV", help="also measure the package at this git revision")
    parser.add_argument("--after", metavar="REV", help="measure this git revision instead of the checkout")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        tmp = Path(tmp)
        case = write_brats_sized_case(REPO / "Resources" / "SampleData" / "TCGA-HT-7882", tmp / "case", ["t1n", "t2f"])
        if args.after:
            trees = [Tree(f"after ({args.after})", unpack(args.after, Path(tempfile.mkdtemp(dir=tmp))), tmp / "now")]
        else:
            trees = [Tree("this checkout", REPO, tmp / "now")]
        if args.before:
            root = unpack(args.before, Path(tempfile.mkdtemp(dir=tmp)))
            trees.insert(0, Tree(f"before ({args.before})", root, tmp / "before"))
        for tree in trees:
            tree.work.mkdir()
            tree.run(["--help"])  # warm the file cache once, so run 1 is not a cold-disk outlier
        load = CpuLoad()
        for run in range(args.runs):
            for tree in trees:
                measure(tree, case, args.threads, run)
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
        report = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                              "other_processes_cores": round(load.others_cores(), 2)},
                  "case": "240x240x155, inputs t1n+t2f, t1c imputed, bundled model, --device cpu",
                  "threads": args.threads, **{tree.label: summarize(tree) for tree in trees}}
    keys = ["import_cli_s", "help_s", "help_cpu_s", "info_s", "info_cpu_s", "impute_first_batch_s", "impute_s",
            "impute_cpu_s", "impute_import_s"]
    print(f"{report['machine']['cpu']}, {report['machine']['cores']} cores; other processes used "
          f"{report['machine']['other_processes_cores']} cores meanwhile; medians of {args.runs} runs (s)")
    print("| | " + " | ".join(keys) + " | CLI loads at import | impute loads |")
    print("|---" * (len(keys) + 3) + "|")
    for tree in trees:
        s = summarize(tree)
        print(f"| {tree.label} | " + " | ".join(f"{s[k]['median']:.2f}" for k in keys)
              + f" | {', '.join(s['cli_loads']) or '-'} | {', '.join(s['impute_loads'])} |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
