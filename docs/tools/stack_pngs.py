"""Stack PNG figures vertically into one picture (the docs' multi-case montages).

Example:
    python docs/tools/stack_pngs.py docs/images/out.png /tmp/a.png /tmp/b.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from CollaGANImputeLib.figures import save_figure_atomic  # noqa: E402


def stack(out: Path, pictures: list[Path], width_in: float = 12.0) -> Path:
    images = [plt.imread(str(p)) for p in pictures]
    heights = [width_in * im.shape[0] / im.shape[1] for im in images]
    figure, axes = plt.subplots(len(images), 1, figsize=(width_in, sum(heights)),
                                gridspec_kw={"height_ratios": heights})
    for axis, image in zip(list(axes) if len(images) > 1 else [axes], images):
        axis.imshow(image)
        axis.axis("off")
    figure.subplots_adjust(left=0, right=1, top=1, bottom=0, hspace=0.02)
    return save_figure_atomic(figure, out, dpi=100)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: stack_pngs.py OUT.png IN1.png [IN2.png ...]")
    print(stack(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]))
