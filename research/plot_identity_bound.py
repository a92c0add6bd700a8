"""Plot the second table of ``identity_counterfactual.py`` for one or more models: can a regression have I > 0?

Left: each patient's R² = r(pred, real)² against ρ = r(real, closest input); a prediction that is the
conditional mean of the real image has I > 0 only above the line R² = ρ. Right: the measured r(pred, input)
against the conditional mean's ρ / R; a plain regression sits on the diagonal, a model trained to look less like
its input sits below it. Filled markers: I > 0.

Usage:
    python -m research.identity_counterfactual --data DATA/lgg --threads 2 > runs/cf_v6.txt
    python -m research.plot_identity_bound runs/cf_v6.txt runs/cf_k.txt --labels v6 "stage K" \
        --out docs/images/identity_bound.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_bound_table(path: Path) -> list[tuple[str, float, float, float, float, float]]:
    """(case, R², ρ, r(pred, input), ρ / R, I) per patient from an identity_counterfactual output."""
    lines = path.read_text().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("I > 0 needs"))
    except StopIteration:
        raise SystemExit(f"{path} has no R² / ρ table: make it with python -m research.identity_counterfactual."
                         ) from None
    rows = []
    for line in lines[start + 1:]:
        fields = line.split()
        if len(fields) == 6 and not line.startswith("cases"):
            rows.append((fields[0], *map(float, fields[1:])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tables", nargs="+", type=Path, help="outputs of identity_counterfactual.py")
    parser.add_argument("--labels", nargs="+", help="one per table (default: the file names)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    labels = args.labels or [t.stem for t in args.tables]
    if len(labels) != len(args.tables):
        raise SystemExit("--labels: give one label per table.")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    for (table, label), color in zip(zip(args.tables, labels), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        rows = read_bound_table(table)
        positive = [r for r in rows if r[5] > 0]
        negative = [r for r in rows if r[5] <= 0]
        for subset, face, suffix in ((positive, color, "I > 0"), (negative, "none", "I ≤ 0")):
            if subset:
                left.scatter([r[2] for r in subset], [r[1] for r in subset], edgecolors=color, facecolors=face,
                             label=f"{label}: {suffix} ({len(subset)})")
                right.scatter([r[4] for r in subset], [r[3] for r in subset], edgecolors=color, facecolors=face)
    for axis, (low, high) in ((left, (0.3, 0.9)), (right, (0.5, 1.1))):
        axis.plot([low, high], [low, high], "k--", linewidth=1)
        axis.set_xlim(low, high)
        axis.set_ylim(low, high)
    left.set_xlabel("ρ = r(real, closest input)")
    left.set_ylabel("R² = r(synthetic, real)²")
    left.set_title("a regression has I > 0 only above the line")
    left.legend(loc="upper left", fontsize=8)
    right.set_xlabel("ρ / R: r(synthetic, input) of the conditional mean")
    right.set_ylabel("measured r(synthetic, input)")
    right.set_title("below the line: less like the input than a regression")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
