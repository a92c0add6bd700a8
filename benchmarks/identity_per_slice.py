"""Contrast identity I of the synthetic FLAIR per validation patient, over the whole volume (EVALUATION.md v2)
and with each slice's mean removed first, with the correlations behind it: where the volume's I is much lower
than the per-slice one, the resemblance to an input is in how the brightness goes from slice to slice.

Usage:
    python benchmarks/identity_per_slice.py --model Resources/Models/collagan_lgg_t1n_t1c_t2f.pt --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "CollaGANImpute"))

import torch  # noqa: E402
from CollaGANImputeLib import load_model  # noqa: E402
from CollaGANImputeLib.evaluate import score_imputation  # noqa: E402
from CollaGANImputeLib.io import find_lesion_mask, read_lesion_mask  # noqa: E402
from CollaGANImputeLib.metrics import contrast_identity, pearson  # noqa: E402
from CollaGANImputeLib.pipeline import read_case  # noqa: E402


def slice_centred(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``volume`` with each slice's mean inside ``mask`` subtracted."""
    out = volume.astype(np.float64).copy()
    for z in range(len(volume)):
        if mask[z].any():
            out[z] -= volume[z][mask[z]].mean()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "Resources/Models/collagan_lgg_t1n_t1c_t2f.pt"))
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/lgg/complete"))
    parser.add_argument("--split", default=str(REPO / "training/splits/lgg_split.json"))
    parser.add_argument("--target", default="t2f")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    inputs = [c for c in model.card.contrasts if c != args.target]
    print("case  I(volume)  I(slice means removed)  r(pred,real)  " + "  ".join(f"r(pred,{c})" for c in inputs)
          + "  " + "  ".join(f"r(real,{c})" for c in inputs))
    for case in json.loads(Path(args.split).read_text())["val"]:
        folder = Path(args.data) / case
        images = read_case(folder, model.card.contrasts)
        lesion_path = find_lesion_mask(folder)
        lesion = read_lesion_mask(lesion_path) if lesion_path else None
        scored = score_imputation(model, images, args.target, inputs, lesion, device="cpu")
        mask, pred, real = scored.mask, scored.pred, scored.real
        given = [scored.result.case.arrays[c] for c in inputs]
        centred = [slice_centred(x, mask) for x in (pred, real, *given)]
        per_slice = contrast_identity(centred[0], centred[1], centred[2:], mask)
        print(f"{case}  {scored.scores['identity']:+.3f}  {per_slice:+.3f}  {pearson(pred, real, mask):.3f}  "
              + "  ".join(f"{pearson(pred, g, mask):.3f}" for g in given) + "  "
              + "  ".join(f"{pearson(real, g, mask):.3f}" for g in given), flush=True)


if __name__ == "__main__":
    main()
