"""How much of a model's error is a per-slice intensity scale: NMSE on the fixed validation slices as given and
after rescaling each predicted slice by its least-squares factor against the real one.

A large gap means the model gets the anatomy right but not each slice's brightness. Used to test whether
instance norm (which hides a slice's intensity level from the generator) explained CollaGAN's gap to voxel
regression on LGG; it did not: voxel regression shows the same per-slice scale spread (docs/RESULTS.md).

Example:
    python -m training.collagan_train.diagnose runs/l1_lgg_cpu/best.pt runs/voxreg/voxreg.pt
"""

from __future__ import annotations

import argparse
from typing import Callable, List, Optional

import numpy as np
import torch
from CollaGANImputeLib.contract import model_input as build_input  # the contract's one layout
from CollaGANImputeLib.metrics import nmse

from .checkpoints import generator_from_checkpoint
from .config import load_config
from .data_loader import load_data
from .validation import fixed_validation_slices


def load_predictor(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A training checkpoint (its weight average where kept) or any exported TorchScript model file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except RuntimeError:  # a TorchScript archive
        return torch.jit.load(path, map_location="cpu").eval()
    if isinstance(state, dict) and "G" in state:
        return generator_from_checkpoint(state)[0]
    return torch.jit.load(path, map_location="cpu").eval()


def slice_scale_report(predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, masks: torch.Tensor,
                       contrasts: List[str]) -> dict:
    """Per target (all other inputs): NMSE, NMSE after per-slice rescaling, mean and s.d. of the factors."""
    report = {}
    n = len(contrasts)
    masks_np = masks.numpy()
    for t, name in enumerate(contrasts):
        target = torch.full((len(images),), t, dtype=torch.long)
        available = torch.ones(len(images), n, dtype=torch.bool)
        available[:, t] = False
        with torch.no_grad():
            pred = torch.cat([predict(build_input(images[i:i + 8], available[i:i + 8], target[i:i + 8]))
                              for i in range(0, len(images), 8)])[:, 0].numpy()
        truth = images[:, t].numpy()
        factors = np.array([float((p[m] * r[m]).sum() / max(float((p[m] ** 2).sum()), 1e-12))
                            for p, r, m in zip(pred, truth, masks_np)])
        report[name] = {
            "nmse": nmse(pred, truth, masks_np),
            "nmse_slice_rescaled": nmse(pred * factors[:, None, None], truth, masks_np),
            "scale_mean": float(factors.mean()), "scale_sd": float(factors.std()),
        }
    return report


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="training checkpoints or exported model files")
    parser.add_argument("--config", default="lgg", help="recipe or config file with the data settings")
    parser.add_argument("--slices", type=int, default=48, help="fixed validation slices, as training validates")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    _, val, _ = load_data(cfg)
    picks = fixed_validation_slices(len(val), args.slices)
    images, masks, _ = val.batch(picks, torch.Generator())
    for path in args.models:
        for name, row in slice_scale_report(load_predictor(path), images, masks, cfg.contrasts).items():
            print(f"{path} {name}: NMSE {row['nmse']:.4f}, per-slice rescaled {row['nmse_slice_rescaled']:.4f}; "
                  f"slice factor {row['scale_mean']:.3f} +- {row['scale_sd']:.3f}")


if __name__ == "__main__":
    main()
