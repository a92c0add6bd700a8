"""Probe: does a learned error head track the real error better than the model-disagreement map?

A small convolutional head reads the frozen generator's last features and its prediction and outputs b, the
expected |error| (Laplace scale, trained by the Laplace negative log-likelihood |e| / b + log b). It is trained on
the errors the generator makes on the 6 training patients set aside for checkpoint choice (never trained on, so
the errors are those of unseen patients), mirrored as well, and scored with EVALUATION.md v2's rho_U and AUROC_U on
the 12 validation patients' slices, beside the disagreement map of :mod:`CollaGANImputeLib.uncertainty` (smaller
input subsets and mirrored inputs, 1-pixel smoothing) on the same slices and the rank average of the two.

Usage:
    python benchmarks/probe_error_head.py --checkpoint training/checkpoints/lgg_v3_stage_e_g.pt --threads 2

It works on the training cache's slices (the head slices of each volume, 256x256, through the same p99
normalization as the core), not on whole volumes through ``impute``: the figures are for comparing the two maps
with each other, not with docs/RESULTS.md's whole-volume uncertainty table. About 15-20 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "CollaGANImpute"))

from CollaGANImputeLib.metrics import uncertainty_scores  # noqa: E402
from CollaGANImputeLib.uncertainty import disagreement  # noqa: E402

from training.collagan_train.data_loader import SliceData, locate_lgg, select_cases  # noqa: E402
from training.collagan_train.solver import build_input, generator_from_checkpoint  # noqa: E402


class ErrorHead(nn.Module):
    """Two 3x3 convolutions on (features, prediction), then softplus: b > 0, the expected |error|."""

    def __init__(self, channels: int, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels + 1, width, 3, padding=1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(width, 1, 1))

    def forward(self, features: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.net(torch.cat([features, prediction], 1))) + 1e-3


@torch.no_grad()
def predict(generator, images: torch.Tensor, target: int, available: list[int], flip: bool = False):
    """(features, prediction) of ``target`` from the ``available`` inputs, mirrored and back when ``flip``."""
    n = images.shape[1]
    mask = torch.zeros(len(images), n, dtype=torch.bool)
    mask[:, available] = True
    x = build_input(images.flip(-1) if flip else images, mask, torch.full((len(images),), target))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = generator.features(x)
        prediction = generator.output(features, x).float()[:, 0]
    return (features.flip(-1), prediction.flip(-1)) if flip else (features, prediction)


def collect(generator, data: SliceData, target: int, members: bool, mirrored: bool = False) -> dict:
    """Features, prediction, real target, masks (and the member predictions) of every slice of ``data``."""
    n = data.images.shape[1]
    others = [k for k in range(n) if k != target]
    out: dict = {"features": [], "pred": [], "real": [], "mask": [], "lesion": [], "members": []}
    for start in range(0, len(data), 8):
        images, masks, lesions = data.batch(list(range(start, min(start + 8, len(data)))), torch.Generator())
        if mirrored:
            images, masks, lesions = images.flip(-1), masks.flip(-1), lesions.flip(-1)
        features, pred = predict(generator, images, target, others)
        out["features"].append(features.to(torch.float16))
        out["pred"].append(pred)
        out["real"].append(images[:, target])
        out["mask"].append(masks)
        out["lesion"].append(lesions)
        if members:  # the core's default members: every smaller input subset and the mirrored full set
            subsets = [predict(generator, images, target, [k])[1] for k in others]
            out["members"].append(torch.stack(subsets + [predict(generator, images, target, others, True)[1]]))
    return {k: torch.cat(v, dim=1 if k == "members" else 0) for k, v in out.items() if v}


def rank_average(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    out = np.zeros(a.shape)
    out[mask] = (rankdata(a[mask]) + rankdata(b[mask])) / 2
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="training/checkpoints/lgg_v3_stage_e_g.pt")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/probe_error_head.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator, cfg = generator_from_checkpoint(torch.load(REPO / args.checkpoint, map_location="cpu",
                                                          weights_only=False))
    folder = locate_lgg(cfg.data_dir)
    split = json.loads((REPO / cfg.split_file).read_text())
    train = SliceData.build(split["train"], cfg, folder)
    chosen = train.subset(select_cases(split["train"], 6, cfg.split_seed))
    val = SliceData.build(split["val"], cfg, folder)
    started = time.perf_counter()
    n = len(cfg.contrasts)
    parts = [collect(generator, chosen, t, members=False, mirrored=m) for t in range(n) for m in (False, True)]
    train_set = {k: torch.cat([p[k] for p in parts]) for k in ("features", "pred", "real", "mask")}
    head = ErrorHead(train_set["features"].shape[1])
    optimizer = torch.optim.Adam(head.parameters(), 1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, int(args.steps * 0.7), 0.3)
    for step in range(args.steps):
        pick = torch.randint(len(train_set["pred"]), (8,))
        features, pred = train_set["features"][pick].float(), train_set["pred"][pick][:, None]
        mask = train_set["mask"][pick][:, None].float()
        b = head(features, pred)
        error = (pred - train_set["real"][pick][:, None]).abs()
        loss = ((error / b + b.log()) * mask).sum() / mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 250 == 0:
            print(f"step {step}: Laplace NLL {loss.item():.3f}", flush=True)
    names = np.asarray([case for case, _ in val.index])
    table: dict = {}
    for t, target in enumerate(cfg.contrasts):
        s = collect(generator, val, t, members=True)
        with torch.no_grad():
            b = torch.cat([head(s["features"][i:i + 16].float(), s["pred"][i:i + 16][:, None])
                           for i in range(0, len(s["pred"]), 16)])[:, 0].numpy()
        pred, real, mask, lesion = (s[k].numpy() for k in ("pred", "real", "mask", "lesion"))
        members = s["members"].numpy()
        rows: dict = {"head": [], "disagreement": [], "rank average": []}
        for case in dict.fromkeys(names.tolist()):
            r = names == case
            u_dis = disagreement(pred[r], list(members[:, r]), mask[r])  # the core's map, default smoothing
            maps = {"head": b[r], "disagreement": u_dis, "rank average": rank_average(b[r], u_dis, mask[r])}
            for name, u in maps.items():
                rows[name].append(uncertainty_scores(u, pred[r], real[r], mask[r], lesion[r]))
        table[target] = {name: {key: float(np.nanmean([row[key] for row in group])) for key in group[0]}
                         for name, group in rows.items()}
        for name, entry in table[target].items():
            print(f"{target} {name:13s} rho_U {entry['rho_u']:.3f} AUROC_U {entry['auroc_u']:.3f} lesion rho_U "
                  f"{entry['lesion_rho_u']:.3f} lesion AUROC_U {entry['lesion_auroc_u']:.3f}", flush=True)
    table["seconds"] = time.perf_counter() - started
    table["checkpoint"] = args.checkpoint
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(table, indent=2))
    print(f"written {args.out} ({table['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
