"""Measurement helpers for the inference benchmarks: peak memory, other processes' CPU use, matrix-multiply
peak, model FLOPs, the BraTS-sized test volume and the generator weights to time.

Example:
    >>> reset_peak_rss(); work(); peak_rss_mb()          # doctest: +SKIP
    >>> load = CpuLoad(); work(); load.others_cores()     # cores used by other processes meanwhile
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the generator class lives in the training tree
    sys.path.insert(0, str(REPO))

from training.collagan_train.checkpoints import generator_from_checkpoint  # noqa: E402
from training.collagan_train.model import Generator  # noqa: E402

BRATS_SHAPE = (155, 240, 240)  # (slices, rows, columns) of a BraTS volume


# ------------------------------------------------------------------------------------------------ memory


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: writing 5 to clear_refs); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB since the last :func:`reset_peak_rss` (else since start)."""
    from CollaGANImputeLib.hardware import peak_memory_mb

    peak = peak_memory_mb()
    return peak if peak is not None else float("nan")


# --------------------------------------------------------------------------------------------------- CPU


def _busy_jiffies() -> int:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


def _own_jiffies() -> int:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return int(sum(u.ru_utime + u.ru_stime for u in usage) * os.sysconf("SC_CLK_TCK"))


class CpuLoad:
    """How many cores *other* processes kept busy since construction (a timing is unreliable above ~0.2)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.busy = _busy_jiffies()
        self.own = _own_jiffies()

    def others_cores(self) -> float:
        elapsed = time.perf_counter() - self.start
        others = (_busy_jiffies() - self.busy) - (_own_jiffies() - self.own)
        return max(0.0, others / os.sysconf("SC_CLK_TCK") / max(elapsed, 1e-9))


def wait_until_quiet(max_wait_s: float, threshold: float = 0.2, sample_s: float = 2.0) -> float:
    """Wait (at most ``max_wait_s``) until other processes use under ``threshold`` cores; returns their use."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        load = CpuLoad()
        time.sleep(sample_s)
        others = load.others_cores()
        if others < threshold or time.perf_counter() >= deadline:
            return others


def best_of(function: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` timed calls, in seconds (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Achieved GFLOP/s of an n x n matrix product in ``dtype``: the machine's practical peak."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    return 2 * n**3 / best_of(lambda: a @ b, repeats) / 1e9


# ------------------------------------------------------------------------------------------------- model


def model_gflop(module: torch.nn.Module, channels: int, size: tuple[int, int] = (256, 256)) -> float:
    """Convolution GFLOP of one slice through ``module`` (torch's FLOP counter; 2 FLOP per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.zeros(1, channels, *size))
    return counter.get_total_flops() / 1e9


@dataclass
class Weights:
    """The generator to time and where its weights come from."""

    generator: torch.nn.Module
    source: str
    trained: bool
    outside_head: str = "model"  # the card's rule, as export writes it: "zero" for head-only training


def find_checkpoint(runs: Path = REPO / "runs", base: int = 16, levels: int = 5) -> Optional[Path]:
    """The newest ``best.pt`` (else ``latest.pt``) under runs/*/ of a paper-sized generator, if any."""
    candidates = []
    for config in runs.glob("*/config.json"):
        try:
            cfg = json.loads(config.read_text())
        except (OSError, ValueError):
            continue
        if cfg.get("g_base") != base or cfg.get("g_levels") != levels:
            continue
        for name in ("best.pt", "latest.pt"):
            if (config.parent / name).is_file():
                candidates.append(config.parent / name)
                break
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def eager_from_model(module: torch.jit.ScriptModule, contrasts: int, base: int, levels: int) -> Generator:
    """The eager generator whose fast export (``optimize_for_inference``) is ``module``: the rewrite undone.

    A merged unit's 3x3 kernel holds the 1x1 branch at its centre (first half of the outputs, zero rim); a
    fast unit keeps both convolutions; the norm's affine parameters go back to ``norm``.
    """
    state = module.state_dict()
    voxel_prior = any(key.startswith("prior.") for key in state)
    input_coefficients = any(key.startswith("coef.") for key in state)
    mix = state["mix"].tolist() if "mix" in state else None  # a network blended with the polynomial, per target
    generator = Generator(contrasts, base, levels, voxel_prior, input_coefficients, mix)
    eager: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        unit, _, name = key.rpartition(".")
        if name in ("norm_weight", "norm_bias"):
            eager[f"{unit}.norm.{name[5:]}"] = value
        elif unit.endswith(".conv") and f"{unit[:-5]}.norm_weight" in state:  # a merged unit
            half = value.shape[0] // 2
            if name == "weight":
                rim = torch.ones(3, 3, dtype=torch.bool)
                rim[1, 1] = False
                if value[:half, :, rim].any():
                    raise ValueError(f"{key}: the 1x1 half has a non-zero rim; not a merged CCNR unit")
                eager[f"{unit[:-5]}.conv1.weight"] = value[:half, :, 1:2, 1:2].clone()
                eager[f"{unit[:-5]}.conv3.weight"] = value[half:].clone()
            else:
                eager[f"{unit[:-5]}.conv1.bias"], eager[f"{unit[:-5]}.conv3.bias"] = value[:half], value[half:]
        else:
            eager[key] = value
    generator.load_state_dict(eager)
    return generator.eval()


def load_weights(checkpoint: Optional[str], contrasts: int = 3, base: int = 16, levels: int = 5) -> Weights:
    """Paper-sized generator (Table 2): "bundled" (the bundled model's weights, the rewrite of its fast export
    undone), "auto" (the newest checkpoint under runs/), "none" (random) or a training checkpoint's path."""
    if checkpoint == "bundled":
        from CollaGANImputeLib import default_model

        model = default_model()
        generator = eager_from_model(model.module, contrasts, base, levels)
        return Weights(generator, f"bundled model {model.card.name} (sha256 {model.sha256[:8]})", True,
                       model.card.outside_head)
    path = find_checkpoint(base=base, levels=levels) if checkpoint == "auto" else (
        None if checkpoint in (None, "none") else Path(checkpoint))
    if path is not None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            generator, cfg = generator_from_checkpoint(state)  # the weights export ships (EMA if kept)
            if (len(cfg.contrasts), cfg.g_base, cfg.g_levels) != (contrasts, base, levels):
                raise ValueError(f"not the paper-sized {contrasts}-contrast generator (base {cfg.g_base}, "
                                 f"{cfg.g_levels} levels)")
            return Weights(generator, f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path} "
                                      f"(step {state.get('step', '?')})", True,
                           cfg.outside_head)
        except Exception as exc:  # a checkpoint being written right now, or another architecture
            print(f"note: cannot use checkpoint {path} ({type(exc).__name__}: {exc}); timing random weights")
    torch.manual_seed(0)
    return Weights(Generator(contrasts, base, levels).eval(), "random weights (seed 0)", False)


# ------------------------------------------------------------------------------------------------ volume


def write_brats_sized_case(sample: Path, folder: Path, contrasts: list[str]) -> Path:
    """A 240x240x155 case folder (int16 NIfTI) from the 256x256xS sample case: centre crop in-plane and
    nearest-neighbour stretch along z, so every slice holds real head anatomy (no empty slice to skip)."""
    case = folder / "BENCH-240"
    case.mkdir(parents=True, exist_ok=True)
    name = sample.name
    for contrast in contrasts:
        image = sitk.ReadImage(str(sample / f"{name}-{contrast}.nii.gz"))
        array = sitk.GetArrayFromImage(image)
        rows, cols = array.shape[1:]
        top, left = (rows - BRATS_SHAPE[1]) // 2, (cols - BRATS_SHAPE[2]) // 2
        array = array[:, top:top + BRATS_SHAPE[1], left:left + BRATS_SHAPE[2]]
        index = (np.arange(BRATS_SHAPE[0]) * array.shape[0]) // BRATS_SHAPE[0]
        out = sitk.GetImageFromArray(array[index].astype(np.int16))
        out.SetSpacing(image.GetSpacing())
        out.SetOrigin(image.GetOrigin())
        out.SetDirection(image.GetDirection())
        sitk.WriteImage(out, str(case / f"BENCH-240-{contrast}.nii.gz"), useCompression=True)
    return case
