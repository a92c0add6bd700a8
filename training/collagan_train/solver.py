"""The training loop: classifier warm-up, then D and G steps with multiple cycle consistency; validation,
CSV log, curve PNG, atomic checkpoints and exact resume; DistributedDataParallel under torchrun (gloo/NCCL).

Every step's data and random numbers follow from (seed, step, rank, world size) alone: each step takes the next
``batch_size x world`` slices of a seeded per-epoch order (rank r its r-th block), and the sampling/augmentation
and dropout streams are re-seeded from (seed, step, rank). A checkpoint therefore needs no per-rank RNG state, a
resume continues exactly at the same world size, and a resume at another world size continues from the same
position in the data.

:class:`Solver` owns the training step and loop; its checkpoints (:mod:`.checkpoints`), validation
(:mod:`.validation`) and time budget (:mod:`.budget`) come from mixins, its logs from :mod:`.run_logs`, its
DistributedDataParallel wrapper from :mod:`.distributed`, its precision from :mod:`.precision`.

Example:
    >>> solver = Solver(cfg, train_data, val_data, out_dir="runs/x")     # doctest: +SKIP
    >>> solver.train()                                                    # doctest: +SKIP
    >>> solver = Solver.from_checkpoint("runs/x/latest.pt", train_data, val_data)  # resume exactly
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from CollaGANImputeLib.contract import model_input as build_input  # the contract's one layout
from torch import nn

from . import losses
from .average import ema_update
from .budget import BudgetedSteps, StepTimes, TimeBudget
from .checkpoints import CheckpointFiles, warm_start_generator
from .config import TrainConfig
from .data_loader import SliceData, training_batches
from .distributed import wrap
from .model import Discriminator, Generator
from .precision import uses_bf16
from .run_logs import LOG_FIELDS, append_row, progress_postfix, truncate_logs
from .sampling import restyle_inputs, sample_inputs, volume_strip_factors
from .validation import Validation


class Solver(CheckpointFiles, Validation, BudgetedSteps):
    """Owns models, optimizers, schedulers, RNG streams and the data position: everything a resume needs."""

    def __init__(self, cfg: TrainConfig, train: SliceData, val: Optional[SliceData], out_dir: Optional[str] = None,
                 rank: int = 0, world: int = 1, device: Optional[torch.device] = None, warm_start: bool = True
                 ) -> None:
        self.base_cfg = cfg
        self.cfg = cfg = cfg.with_method()
        self.train_data, self.val_data = train, val
        self.rank, self.world = rank, world
        self.device = device or torch.device("cpu")
        self.out_dir = Path(out_dir or cfg.out_dir)
        self.n = len(cfg.contrasts)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank (and broadcast below)
        self.G = Generator(self.n, cfg.g_base, cfg.g_levels, cfg.g_voxel_prior,
                           cfg.g_input_coefficients, cfg.g_prior_mix).to(self.device)
        self.D = Discriminator(self.n, cfg.d_dropout, cfg.d_sigmoid).to(self.device)
        if warm_start:  # a resume (warm_start=False) takes every weight, the prior's included, from the checkpoint
            warm_start_generator(self.G, cfg, train, self.device)
        if cfg.channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        # Batch-1 steps are noisy; the weight average is what validation scores and export ships.
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False) if cfg.ema_decay > 0 else None
        # Adam's weight_decay adds wd * w to the gradient: the authors' L2 regularisation of G.
        self.opt_g = torch.optim.Adam(self.G.parameters(), cfg.lr_g, (cfg.beta1, cfg.beta2),
                                      weight_decay=cfg.weight_decay_g)
        self.opt_d = torch.optim.Adam(self.D.parameters(), cfg.lr_d, (cfg.beta1, cfg.beta2))
        self.sched_g = torch.optim.lr_scheduler.StepLR(self.opt_g, cfg.lr_decay_every, cfg.lr_decay)
        self.sched_d = torch.optim.lr_scheduler.StepLR(self.opt_d, cfg.lr_decay_every, cfg.lr_decay)
        # What the training step calls: DDP wrappers when distributed.
        self._g: nn.Module = self.G
        self._d: nn.Module = self.D
        if world > 1:
            self._g = wrap(self.G, self.device)
            # D's GAN head is unused in the classifier warm-up: DDP must look for unused parameters there.
            self._d = wrap(self.D, self.device, find_unused_parameters=True)
        # Sampling/augmentation stream (self.gen); train_step re-seeds it and the dropout stream every step.
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank + 1)
        self.step, self.epoch, self.cursor = 0, 0, 0
        self.best = math.inf
        self.train_seconds = 0.0
        self._batches: Optional[Iterator[tuple]] = None  # made at the first step, from the position then
        if cfg.batch_size * world > len(train):
            raise ValueError(f"batch_size {cfg.batch_size} x {world} processes needs {cfg.batch_size * world} "
                             f"training slices, there are {len(train)}: lower batch_size or use fewer processes.")
        per_epoch = max(1, len(train) // (cfg.batch_size * world))
        self.steps_per_epoch = per_epoch
        if cfg.aug_brain_only_p > 0 and train.brain is None:
            raise ValueError("aug_brain_only_p needs the brain-only copies: load the data with load_data, or call "
                             "train.add_brain_only_copies() first.")
        self.strip_factors = volume_strip_factors(train, cfg)
        if cfg.target_weights and len(cfg.target_weights) != self.n:
            raise ValueError(f"target_weights has {len(cfg.target_weights)} values for {self.n} contrasts "
                             f"{cfg.contrasts}; give one per contrast.")
        self.warmup = (cfg.clsf_warmup_steps if cfg.clsf_warmup_steps >= 0
                       else int(math.ceil(cfg.clsf_warmup_epochs * per_epoch)))
        if cfg.w_d_clsf == 0:
            self.warmup = 0

    # ----- data -----
    def _next_batch(self) -> Tuple[List[int], torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next batch from the DataLoader (started at the solver's position); advances (epoch, cursor).
        ``cursor`` counts the epoch's slices all ranks have taken: a resume at another world size goes on from the
        same place (:func:`.data_loader.batch_plan`)."""
        if self._batches is None:
            self._batches = training_batches(self.train_data, self.cfg, self.step, self.epoch, self.cursor,
                                             self.rank, self.world)
        self.epoch, self.cursor, indices, images, masks, lesions = next(self._batches)
        return indices.tolist(), images, masks, lesions

    def _stream_seed(self, stream: int) -> int:
        """The seed of random stream ``stream`` at this step on this rank."""
        return int(np.random.SeedSequence([self.cfg.seed, self.step, self.rank, stream]).generate_state(1)[0])

    def sample(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch: images (B, N, h, w), target (B,), available (B, N) after input dropout, head masks and
        lesion masks (B, h, w), and each contrast's factor to target units (B, N; :func:`.stores.target_scales`:
        the images are in input units), drawn with the step's sampling stream (:func:`.sampling.sample_inputs`)."""
        indices, images, masks, lesions = self._next_batch()
        scale = torch.from_numpy(self.train_data.target_scale[indices])
        factors = self.strip_factors[indices] if self.strip_factors is not None else None
        images, target, available, masks, lesions = sample_inputs(images, masks, lesions, self.cfg, self.gen, factors)
        return (images.to(self.device), target.to(self.device), available.to(self.device), masks.to(self.device),
                lesions.to(self.device), scale.to(self.device))

    # ----- one step -----
    def autocast(self):
        """bf16 autocast where :func:`uses_bf16`."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=uses_bf16(self.cfg, self.device))

    def to_memory_format(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the networks' memory format (channels-last where ``cfg.channels_last``)."""
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def train_step(self) -> Dict[str, float]:
        """One optimisation step; returns the loss terms as floats."""
        self.gen.manual_seed(self._stream_seed(0))
        # Dropout draws from the global stream: fork it so the caller's state is left as it was.
        with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []):
            torch.manual_seed(self._stream_seed(1))
            return self._train_step()

    def _train_step(self) -> Dict[str, float]:
        cfg = self.cfg
        self.G.train()
        self.D.train()
        images, target, available, masks, lesions, scale = self.sample()
        head = masks[:, None] if cfg.head_only_loss else None
        b, n = images.shape[:2]
        rows = torch.arange(b, device=self.device)
        real_t = (images[rows, target] * scale[rows, target][:, None, None])[:, None]
        out: Dict[str, float] = {"phase": "clsf" if self.step < self.warmup else "gan"}
        if self.step < self.warmup:  # eq. 4 only: the classifier learns the contrasts from real images
            with self.autocast():
                _, logits = self._d(self.to_memory_format(images.reshape(b * n, 1, *images.shape[-2:])))
            loss_d = cfg.w_d_clsf * losses.classification(logits.float(), torch.arange(n, device=self.device).repeat(b))
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
            out.update(loss_d=loss_d.item(), d_clsf=loss_d.item())
        else:
            given = restyle_inputs(images, lesions, target, cfg, self.gen)  # the first pass sees re-styled inputs
            with self.autocast(), torch.set_grad_enabled(not cfg.freeze_g):
                fake = self._g(self.to_memory_format(build_input(given, available, target))).float()
            if head is not None:  # only the head is scored: outside it every loss sees the real image
                fake = torch.where(head, fake, real_t)
            use_d = cfg.w_gan > 0 or cfg.w_g_clsf > 0 or cfg.w_d_clsf > 0
            if use_d:
                self.D.requires_grad_(True)
                with self.autocast():
                    gan_real, logits_real = self._d(self.to_memory_format(real_t))
                    gan_fake, _ = self._d(self.to_memory_format(fake.detach()))
                d_gan = cfg.w_gan * losses.lsgan_d(gan_real.float(), gan_fake.float())
                d_clsf = cfg.w_d_clsf * losses.classification(logits_real.float(), target)
                loss_d = d_gan + d_clsf
                self.opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                self.opt_d.step()
                out.update(loss_d=loss_d.item(), d_gan=d_gan.item(), d_clsf=d_clsf.item())
                self.D.requires_grad_(False)  # G's step must not touch D
            if cfg.freeze_g:  # a discriminator for a generator that stays as it is (finetune's starting D)
                self.sched_d.step()
                self.step += 1
                return out
            terms: Dict[str, torch.Tensor] = {}
            if cfg.w_gan > 0 or cfg.w_g_clsf > 0:
                with self.autocast():  # the bare D: its weights take no gradient here, so nothing to average
                    gan_fake, logits_fake = self.D(self.to_memory_format(fake))
                terms["g_gan"] = cfg.w_gan * losses.lsgan_g(gan_fake.float())
                terms["g_clsf"] = cfg.w_g_clsf * losses.classification(logits_fake.float(), target)
            terms.update(losses.direct_terms(fake, real_t, masks, lesions, cfg))
            # Scored against the inputs as acquired, not their re-styled look.
            terms.update(losses.identity_terms(fake, real_t, images, available, masks, target, cfg))
            if cfg.w_cyc_l1 > 0 or cfg.w_cyc_ssim > 0:
                terms.update(self._cycle(images, target, available, fake, scale, head))
                out["n_cycle"] = float(int(available.sum()))
            loss_g = sum(terms.values())
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_g.step()
            if self.G_ema is not None:
                ema_update(self.G_ema, self.G, self.step, cfg.ema_decay)
            out.update({k: v.item() for k, v in terms.items()}, loss_g=loss_g.item())
        if out["phase"] == "gan":  # G's schedule starts with G's training
            self.sched_g.step()
        if "loss_d" in out:  # methods without D (l1) never step it
            self.sched_d.step()
        self.step += 1
        return out

    def _cycle(self, images: torch.Tensor, target: torch.Tensor, available: torch.Tensor, fake: torch.Tensor,
               scale: torch.Tensor, head: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Eq. 2-3: put the fake in the target slot and reconstruct every *available* input from the rest,
        all (sample, input) pairs in one batched G call. Nulled slots get no cycle term (authors' code). The fake
        enters in input units and each reconstruction is compared in target units (``scale``, as in sample)."""
        n = images.shape[1]
        bi, ki = torch.nonzero(available, as_tuple=True)
        t_hot = nn.functional.one_hot(target[bi], n).to(images.dtype)[:, :, None, None]
        k_hot = nn.functional.one_hot(ki, n).to(images.dtype)[:, :, None, None]
        fake_in = fake[bi] / scale[bi, target[bi]][:, None, None, None]
        x = images[bi] * available[bi][:, :, None, None].to(images.dtype) + t_hot * fake_in
        x = x * (1 - k_hot)
        with self.autocast():
            recon = self._g(self.to_memory_format(build_input(x, torch.ones_like(available[bi]), ki))).float()
        real = (images[bi, ki] * scale[bi, ki][:, None, None])[:, None]
        if head is not None:
            recon = torch.where(head[bi], recon, real)
        return losses.cycle(recon, real, self.cfg.w_cyc_ssim, self.cfg.w_cyc_l1)

    # ----- the loop -----
    def train(self, on_step=None, budget: Optional[TimeBudget] = None) -> None:
        """Train until ``cfg.steps``; logs, validates and checkpoints on rank 0. With a ``budget`` (one process
        only), ``cfg.steps`` is capped once its first steps are timed, and set again (never above what was asked)
        after each validation, which measures what validating and scoring cost."""
        from tqdm import tqdm

        from .curves import plot_curves

        if budget is not None and self.world > 1:
            raise ValueError("A time budget caps the steps of one process; run without one under torchrun.")
        cfg = self.cfg
        main = self.rank == 0
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            truncate_logs(self.out_dir, self.step)  # the rows after the checkpoint are produced again
        last_ckpt = time.time()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (main and cfg.progress), dynamic_ncols=True)
        times = StepTimes()
        every = (cfg.steps, cfg.val_every, cfg.ckpt_every)
        if budget is not None:
            budget.requested = cfg.steps
        validations: List[float] = []  # seconds of each validation with its checkpoint, in this process
        t_val: Optional[float] = None
        # Once a budget sets the cadence, the next validation follows the last one (not multiples of val_every:
        # a changed cadence would otherwise validate at once, again and again).
        last_val, next_val = self.step, None
        ask = budget is not None and budget.minutes > 0
        while self.step < cfg.steps:
            t0 = time.time()
            out = self.train_step()
            dt = time.time() - t0
            self.train_seconds += dt
            times.add(dt)
            if on_step is not None:
                on_step(self.step, out)
            if not main:
                continue
            if ask and len(times.timed) >= budget.timing_steps:
                ask = False
                line = self.apply_budget(budget, float(np.mean(times.timed)),
                                         float(np.mean(validations)) if validations else None, every)
                cfg = self.cfg
                bar.total = cfg.steps
                next_val = max(last_val + cfg.val_every, self.step)
                if line:
                    bar.write(line)
            bar.update(1)
            bar.set_postfix(**progress_postfix(out, self.warmup), s_it=f"{times.mean:.2f}")
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                append_row(self.out_dir / "log.csv", LOG_FIELDS, dict(out, step=self.step, epoch=self.epoch,
                                                                      lr_g=self.sched_g.get_last_lr()[0],
                                                                      sec_per_step=times.mean))
            checkpoint = (self.step % cfg.ckpt_every == 0 or time.time() - last_ckpt >= cfg.ckpt_every_s
                          or self.step == cfg.steps)
            due = self.step % cfg.val_every == 0 if next_val is None else self.step >= next_val
            if (due or self.step == cfg.steps) and self.step > self.warmup:
                t_val, last_val = time.time(), self.step
                next_val = None if next_val is None else self.step + cfg.val_every
                checkpoint = self.validate_and_keep_best() or checkpoint
            if checkpoint:
                self.save("latest.pt")
                plot_curves(self.out_dir)
                last_ckpt = time.time()
            if t_val is not None and budget is not None and budget.minutes > 0:
                # Measured now: a validation with its checkpoint; the budget is asked again with it.
                validations, t_val = validations + [time.time() - t_val], None
                ask = self.step < cfg.steps
        bar.close()
        if budget is not None:
            budget.done = self.step
