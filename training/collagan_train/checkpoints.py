"""Training checkpoints: what a run's state holds, writing it atomically, resuming from it exactly, and the
generator a checkpoint describes (export, diagnostics, and the warm start of a staged schedule).

A checkpoint (``latest.pt``, ``best.pt``) holds G (and its weight average with ``ema_decay``), D, the optimizers
and schedules, the position in the data (step, epoch, cursor), the best choice score, the training seconds and the
config; the random streams follow from the step, so nothing else is needed to continue exactly. A snapshot
(``snapshots/g_<step>.pt``, ``keep_snapshots``) holds the generator only: any validated step can be exported later.

Example:
    >>> state = torch.load("runs/x/best.pt", map_location="cpu", weights_only=False)   # doctest: +SKIP
    >>> generator, cfg = generator_from_checkpoint(state)   # G (the average where kept), in eval mode  # doctest: +SKIP
    >>> solver = Solver.from_checkpoint("runs/x/latest.pt", train, val)   # resume exactly   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, Optional, Tuple, Type, TypeVar

import torch
from CollaGANImputeLib.atomic import atomic_path

from .cases import repo_path
from .config import TrainConfig
from .model import Discriminator, Generator

if TYPE_CHECKING:
    from .data_loader import SliceData

#: Weights a generator may lack in its warm start: a plain generator may seed a voxel-prior one (the prior is then
#: fitted) or one with input coefficients (zero at the start).
WARM_START_MAY_LACK = {"prior.coef", "prior.bits", "coef.weight", "coef.bias"}


def generator_weights(state: dict) -> Dict[str, torch.Tensor]:
    """G's weights from a training checkpoint: the weight average where the run kept one (``ema_decay``)."""
    return state.get("G_ema") or state["G"]


def generator_from_checkpoint(state: dict) -> Tuple[Generator, TrainConfig]:
    """The generator a training checkpoint describes (its config's architecture, :func:`generator_weights`),
    in eval mode, with that config."""
    cfg = TrainConfig(**state["config"]).with_method()
    generator = Generator(len(cfg.contrasts), cfg.g_base, cfg.g_levels, cfg.g_voxel_prior,
                          cfg.g_input_coefficients, cfg.g_prior_mix)
    generator.load_state_dict(generator_weights(state))
    return generator.eval(), cfg


def load_generator_weights(path: str, cfg: TrainConfig) -> Dict[str, torch.Tensor]:
    """G's state dict from a training checkpoint, refused when its contrasts or architecture differ."""
    file = repo_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"init_g={path}: no such checkpoint; give a training checkpoint (latest.pt/best.pt). "
                                "The lgg recipe (train --recipe lgg) makes the bundled model's lineage from scratch.")
    state = torch.load(file, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "G" not in state:
        raise ValueError(f"init_g={path} is not a training checkpoint (no 'G' weights); exported TorchScript "
                         "models cannot seed training.")
    theirs = state.get("config", {})
    for key in ("contrasts", "g_base", "g_levels"):
        if key in theirs and theirs[key] != getattr(cfg, key):
            raise ValueError(f"init_g={path} was trained with {key}={theirs[key]}, this run has "
                             f"{key}={getattr(cfg, key)}; they must match.")
    return generator_weights(state)


def warm_start_generator(generator: Generator, cfg: TrainConfig, train: SliceData, device: torch.device) -> None:
    """A new run's generator: ``init_g``'s weights where given (a staged schedule, e.g. CollaGAN fine-tuning of a
    directly trained G), and the voxel prior fitted on ``train`` where it has one that ``init_g`` lacks."""
    fit_prior = cfg.g_voxel_prior
    if cfg.init_g:
        missing, unexpected = generator.load_state_dict(load_generator_weights(cfg.init_g, cfg), strict=False)
        if unexpected or set(missing) - WARM_START_MAY_LACK:
            raise ValueError(f"init_g={cfg.init_g} does not fit this generator (missing {missing}, unexpected "
                             f"{unexpected}); set g_voxel_prior and g_input_coefficients as in that checkpoint's "
                             "run.")
        fit_prior = "prior.coef" in missing
    if fit_prior:
        from .baselines import fit

        coef = fit(train.images, train.masks, seed=cfg.seed, target_scale=train.target_scale)
        generator.start_from_voxel_prior(coef.to(device))


SolverType = TypeVar("SolverType", bound="CheckpointFiles")


class CheckpointFiles:
    """The checkpoint side of :class:`~.solver.Solver`: its state as a dict and back, written atomically to its
    ``out_dir`` (rank 0 only), and a solver that continues where a checkpoint stopped."""

    # What it reads and sets on the solver.
    cfg: TrainConfig
    base_cfg: TrainConfig  # as given (before the method's presets): what a checkpoint records
    out_dir: Path
    rank: int
    world: int
    G: Generator
    G_ema: Optional[Generator]
    D: Discriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sched_g: torch.optim.lr_scheduler.StepLR
    sched_d: torch.optim.lr_scheduler.StepLR
    step: int
    epoch: int
    cursor: int
    best: float
    train_seconds: float
    _batches: Optional[Iterator[tuple]]

    def state(self) -> dict:
        """Everything a resume needs (see the module's docstring)."""
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(), "sched_g": self.sched_g.state_dict(),
                "sched_d": self.sched_d.state_dict(), "step": self.step, "epoch": self.epoch,
                "cursor": self.cursor, "best": self.best, "train_seconds": self.train_seconds,
                "config": self.base_cfg.to_dict(), "world": self.world,
                **({"G_ema": self.G_ema.state_dict()} if self.G_ema is not None else {})}

    def load_state(self, state: dict) -> None:
        """Continue from ``state`` (:meth:`state`); a new ``lr_g``/``lr_d`` in the solver's config applies."""
        self.G.load_state_dict(state["G"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(state.get("G_ema", state["G"]))
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        # The optimizer state carries the checkpoint's learning rate; a resume with a new lr_g/lr_d
        # (--set) restarts the schedule from the new base at the same decay position.
        for opt, sched, base in ((self.opt_g, self.sched_g, self.cfg.lr_g), (self.opt_d, self.sched_d, self.cfg.lr_d)):
            if sched.base_lrs[0] != base:
                sched.base_lrs = [base for _ in sched.base_lrs]
                for group in opt.param_groups:
                    group["initial_lr"] = base
                    group["lr"] = base * sched.gamma ** (sched.last_epoch // sched.step_size)
        self.step, self.epoch, self.cursor = state["step"], state["epoch"], state["cursor"]
        self._batches = None  # restarted from the checkpoint's position; the random streams follow from the step
        self.best, self.train_seconds = state["best"], state["train_seconds"]

    def save(self, name: str) -> Path:
        """Write ``out_dir/name`` atomically (rank 0 only)."""
        path = self.out_dir / name
        if self.rank == 0:
            with atomic_path(path) as tmp:
                torch.save(self.state(), tmp)
        return path

    def save_snapshot(self) -> Path:
        """Write the generator (its weight average where kept) as ``out_dir/snapshots/g_<step>.pt``."""
        generator = self.G_ema if self.G_ema is not None else self.G
        path = self.out_dir / "snapshots" / f"g_{self.step:06d}.pt"
        with atomic_path(path) as tmp:
            torch.save({"G": generator.state_dict(), "step": self.step, "config": self.base_cfg.to_dict(),
                        "train_seconds": self.train_seconds}, tmp)
        return path

    @classmethod
    def from_checkpoint(cls: Type[SolverType], path: str, train: SliceData, val: Optional[SliceData],
                        cfg: Optional[TrainConfig] = None, **kwargs) -> SolverType:
        """A solver that continues exactly where ``path`` stopped (``cfg`` may change e.g. ``steps``); ``kwargs``
        go to the solver (``out_dir``, ``rank``, ``world``, ``device``)."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        solver = cls(cfg or TrainConfig(**state["config"]), train, val, warm_start=False, **kwargs)
        solver.load_state(state)
        return solver
