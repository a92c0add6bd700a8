"""The training loop: classifier warm-up, then D and G steps with multiple cycle consistency; validation,
CSV log, curve PNG, atomic checkpoints and exact resume; DistributedDataParallel under torchrun (gloo/NCCL).

Every step's data and random numbers follow from (seed, step, rank, world size) alone: each step takes the next
``batch_size x world`` slices of a seeded per-epoch order (rank r its r-th block), and the sampling/augmentation
and dropout streams are re-seeded from (seed, step, rank). A checkpoint therefore needs no per-rank RNG state, a
resume continues exactly at the same world size, and a resume at another world size continues from the same
position in the data.

Example:
    >>> solver = Solver(cfg, train_data, val_data, out_dir="runs/x")     # doctest: +SKIP
    >>> solver.train()                                                    # doctest: +SKIP
    >>> solver = Solver.from_checkpoint("runs/x/latest.pt", train_data, val_data)  # resume exactly
"""

from __future__ import annotations

import copy
import csv
import inspect
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from CollaGANImputeLib.atomic import atomic_path
from CollaGANImputeLib.contract import model_input as build_input  # the contract's one layout
from CollaGANImputeLib.metrics import score_volume
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import augment, losses
from .budget import VALIDATION_PER_SLICE, TimeBudget, scaled_every
from .config import TrainConfig
from .data_loader import SliceData, training_batches
from .model import Discriminator, Generator

LOG_FIELDS = ["step", "epoch", "phase", "lr_g", "sec_per_step", "loss_d", "d_gan", "d_clsf", "loss_g", "g_gan",
              "g_clsf", "direct_l1", "direct_ssim", "cyc_l1", "cyc_ssim", "n_cycle", "direct_l2", "lesion_contrast",
              "identity", "identity_pooled"]


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


def log_header(path: Path, fields: List[str]) -> List[str]:
    """The header of the existing log ``path``, first extended by the ``fields`` it lacks (a log written by
    older code, resumed by newer code): old rows keep their values under their own column names and leave the
    new columns empty. One line is read when nothing is missing (the usual case)."""
    with open(path, newline="") as handle:
        header = next(csv.reader(handle), [])
    missing = [f for f in fields if f not in header]
    if not missing:
        return header
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header + missing, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return header + missing


def fixed_validation_slices(length: int, count: int) -> List[int]:
    """The evenly spaced validation slices every validation (and the diagnostics) score."""
    return np.unique(np.linspace(0, length - 1, min(count, length)).round().astype(int)).tolist()


def load_generator_weights(path: str, cfg: TrainConfig) -> Dict[str, torch.Tensor]:
    """G's state dict from a training checkpoint, refused when its contrasts or architecture differ."""
    from .cases import repo_path

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


class Solver:
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
        # warm_start=False (a resume): every weight, the prior's included, comes from the checkpoint instead.
        fit_prior = cfg.g_voxel_prior and warm_start
        if cfg.init_g and warm_start:  # staged schedule, e.g. CollaGAN fine-tuning of a directly trained G
            missing, unexpected = self.G.load_state_dict(load_generator_weights(cfg.init_g, cfg), strict=False)
            # A plain generator may seed a voxel-prior one (the prior is then fitted) or one with input
            # coefficients (zero at the start); nothing else may differ.
            if unexpected or set(missing) - {"prior.coef", "prior.bits", "coef.weight", "coef.bias"}:
                raise ValueError(f"init_g={cfg.init_g} does not fit this generator (missing {missing}, unexpected "
                                 f"{unexpected}); set g_voxel_prior and g_input_coefficients as in that checkpoint's "
                                 "run.")
            fit_prior = "prior.coef" in missing
        if fit_prior:
            from .baselines import fit

            coef = fit(train.images, train.masks, seed=cfg.seed, target_scale=train.target_scale)
            self.G.start_from_voxel_prior(coef.to(self.device))
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
        # What the training step calls: DDP wrappers when distributed (their construction broadcasts rank 0's
        # weights; their backward hooks average gradients bucket by bucket while the backward pass still runs).
        self._g: nn.Module = self.G
        self._d: nn.Module = self.D
        if world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # No buffer changes during training (instance norm keeps no running stats): no broadcast before every
            # forward (the keyword was renamed in PyTorch 2.13).
            quiet = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                     inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False})
            self._g = DistributedDataParallel(self.G, device_ids=ids, **quiet)
            # D's GAN head is unused in the classifier warm-up: DDP must look for unused parameters there.
            self._d = DistributedDataParallel(self.D, device_ids=ids, find_unused_parameters=True, **quiet)
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
        self.strip_factors: Optional[torch.Tensor] = None
        if cfg.aug_brain_only_p > 0 and train.brain is None:
            raise ValueError("aug_brain_only_p needs the brain-only copies: load the data with load_data, or call "
                             "train.add_brain_only_copies() first.")
        if cfg.aug_strip_p > 0 and cfg.aug_strip_per_volume:  # one re-scale per (case, radius, contrast)
            self.strip_factors = torch.from_numpy(augment.volume_strip_factors(
                train.images, train.masks, [case for case, _ in train.index],
                augment.strip_radii(cfg.aug_strip_radius)))
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
        the images are in input units). The outer-head augmentation is applied here (it changes the masks); with
        ``target_coverage_only`` the head masks leave out where the real target has no data."""
        cfg = self.cfg
        indices, images, masks, lesions = self._next_batch()
        scale = torch.from_numpy(self.train_data.target_scale[indices])
        # Before any augmentation moves the zeros: where a contrast was never acquired (outside its field of view).
        nodata = losses.no_data(images) if cfg.target_coverage_only else None
        if cfg.aug_strip_p > 0:
            factors = self.strip_factors[indices] if self.strip_factors is not None else None
            images, masks = augment.strip_outer_head(images, masks, self.gen, cfg.aug_strip_p,
                                                     cfg.aug_strip_radius, factors=factors)
            lesions = lesions & masks
        if cfg.aug_joint_gamma_p > 0:  # before the target is chosen: inputs and target get the same level change
            images = augment.joint_gamma(images, self.gen, cfg.aug_joint_gamma_p, cfg.aug_joint_gamma_min)
        b, n = images.shape[:2]
        if cfg.target_weights:  # e.g. the hardest target (FLAIR) drawn more often
            target = torch.multinomial(torch.tensor(cfg.target_weights, dtype=torch.float), b, replacement=True,
                                       generator=self.gen)
        else:
            target = torch.randint(n, (b,), generator=self.gen)
        if nodata is not None:  # the real target has nothing to learn from there: out of every head-only term
            masks = masks & ~nodata[torch.arange(b), target]
            lesions = lesions & masks
        available = torch.ones(b, n, dtype=torch.bool)
        for i in range(b):
            others = [k for k in torch.randperm(n, generator=self.gen).tolist() if k != int(target[i])]
            if cfg.single_input:
                n_null = n - 1  # all but one input nulled: single-input translation
            else:  # input dropout (§7.1): null 0..max_extra more inputs besides the target, keep at least one
                top = max(0, min(cfg.input_dropout_max_extra, n - 2))
                n_null = 1 + int(torch.randint(top + 1, (1,), generator=self.gen))
                if cfg.input_dropout_p < 1 and float(torch.rand(1, generator=self.gen)) >= cfg.input_dropout_p:
                    n_null = 1
            for k in [int(target[i])] + others[:n_null - 1]:
                available[i, k] = False
        return (images.to(self.device), target.to(self.device), available.to(self.device), masks.to(self.device),
                lesions.to(self.device), scale.to(self.device))

    def _voxel_weight(self, masks: torch.Tensor, lesions: torch.Tensor, dtype: torch.dtype
                      ) -> Optional[torch.Tensor]:
        """(B, 1, H, W) weights of the direct L1/L2 terms: lesion voxels and the head's outer band up-weighted
        (the higher weight where they meet), or None when both weights are 1."""
        cfg = self.cfg
        weight = None
        if cfg.lesion_weight != 1:
            weight = 1 + (cfg.lesion_weight - 1) * lesions[:, None].to(dtype)
        if cfg.edge_weight != 1:
            # The scalp holds a third of the head's squared error and is where a FLAIR copied from the T1 shows
            # most in the whole-head contrast identity (research/identity_counterfactual.py).
            edge = 1 + (cfg.edge_weight - 1) * losses.edge_band(masks, cfg.edge_px)[:, None].to(dtype)
            weight = edge if weight is None else torch.maximum(weight, edge)
        return weight

    def _direct_terms(self, fake: torch.Tensor, real_t: torch.Tensor, masks: torch.Tensor, lesions: torch.Tensor
                      ) -> Dict[str, torch.Tensor]:
        """Direct losses on the imputed target: (lesion-weighted) L1/L2, SSIM, and the lesion-contrast term."""
        cfg = self.cfg
        terms: Dict[str, torch.Tensor] = {}
        lesion = lesions[:, None]
        weight = self._voxel_weight(masks, lesions, fake.dtype)
        if cfg.w_direct_l1 > 0:
            terms["direct_l1"] = cfg.w_direct_l1 * losses.l1(fake, real_t, weight)
        if cfg.w_direct_l2 > 0:
            terms["direct_l2"] = cfg.w_direct_l2 * losses.l2(fake, real_t, weight)
        if cfg.w_direct_ssim > 0:
            terms["direct_ssim"] = cfg.w_direct_ssim * losses.ssim_loss(fake, real_t)
        if cfg.w_lesion_contrast > 0:
            terms["lesion_contrast"] = cfg.w_lesion_contrast * losses.lesion_contrast_loss(
                fake, real_t, masks[:, None], lesion)
        return terms

    # ----- one step -----
    def _autocast(self):
        enabled = self.cfg.bf16 if self.cfg.bf16 is not None else self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
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
            with self._autocast():
                _, logits = self._d(self._prep(images.reshape(b * n, 1, *images.shape[-2:])))
            loss_d = cfg.w_d_clsf * losses.classification(logits.float(), torch.arange(n, device=self.device).repeat(b))
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
            out.update(loss_d=loss_d.item(), d_clsf=loss_d.item())
        else:
            given = images
            if cfg.aug_enhance_p > 0:  # before the looks: it is anatomy, not style
                given = augment.synthetic_enhancement(given, lesions, target,
                                                      cfg.contrasts.index(cfg.aug_enhance_contrast), self.gen,
                                                      cfg.aug_enhance_p)
            if cfg.aug_contrast_p > 0:  # inputs only, like the appearance below
                given = augment.input_contrast(given, self.gen, cfg.aug_contrast_p, cfg.aug_contrast)
            if cfg.aug_appearance_p > 0:  # the first pass sees re-styled inputs; targets and cycles do not
                given = augment.input_appearance(given, self.gen, cfg.aug_appearance_p, cfg.aug_gamma,
                                                 cfg.aug_scale, cfg.aug_bias)
            with self._autocast(), torch.set_grad_enabled(not cfg.freeze_g):
                fake = self._g(self._prep(build_input(given, available, target))).float()
            if head is not None:  # only the head is scored: outside it every loss sees the real image
                fake = torch.where(head, fake, real_t)
            use_d = cfg.w_gan > 0 or cfg.w_g_clsf > 0 or cfg.w_d_clsf > 0
            if use_d:
                self.D.requires_grad_(True)
                with self._autocast():
                    gan_real, logits_real = self._d(self._prep(real_t))
                    gan_fake, _ = self._d(self._prep(fake.detach()))
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
                with self._autocast():  # the bare D: its weights take no gradient here, so nothing to average
                    gan_fake, logits_fake = self.D(self._prep(fake))
                terms["g_gan"] = cfg.w_gan * losses.lsgan_g(gan_fake.float())
                terms["g_clsf"] = cfg.w_g_clsf * losses.classification(logits_fake.float(), target)
            terms.update(self._direct_terms(fake, real_t, masks, lesions))
            if cfg.w_identity > 0:  # scored against the inputs as acquired, not their augmented look
                terms["identity"] = cfg.w_identity * losses.identity_loss(fake, real_t, images, available,
                                                                          masks[:, None])
            if cfg.w_identity_pooled > 0:
                terms["identity_pooled"] = cfg.w_identity_pooled * losses.identity_loss_pooled(
                    fake, real_t, images, available, masks[:, None], target)
            if cfg.w_cyc_l1 > 0 or cfg.w_cyc_ssim > 0:
                terms.update(self._cycle(images, target, available, fake, scale, head))
                out["n_cycle"] = float(int(available.sum()))
            loss_g = sum(terms.values())
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_g.step()
            if self.G_ema is not None:
                # The usual warm-up: the average forgets the random start within ~10x its step count.
                decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))
                with torch.no_grad():
                    for avg, live in zip(self.G_ema.parameters(), self.G.parameters()):
                        avg.lerp_(live, 1 - decay)
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
        with self._autocast():
            recon = self._g(self._prep(build_input(x, torch.ones_like(available[bi]), ki))).float()
        real = (images[bi, ki] * scale[bi, ki][:, None, None])[:, None]
        if head is not None:
            recon = torch.where(head[bi], recon, real)
        return losses.cycle(recon, real, self.cfg.w_cyc_ssim, self.cfg.w_cyc_l1)

    # ----- validation -----
    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """Score a fixed set of validation slices (full size, all other inputs) with the core's metrics,
        EVALUATION.md's identity checks and lesion conspicuity included; ``select_score`` (lower is better) is the mean
        over targets of (NMSE + lesion NMSE) / 2, so a checkpoint that blurs lesions away is not chosen."""
        if self.val_data is None or len(self.val_data) == 0:
            return {}
        generator = self.G_ema if self.G_ema is not None else self.G
        generator.eval()
        picks = fixed_validation_slices(len(self.val_data), self.cfg.val_slices)
        images, masks, lesions = self.val_data.batch(picks, torch.Generator())
        scale = torch.from_numpy(self.val_data.target_scale[picks])
        result: Dict[str, float] = {}
        keys = ("nmse", "psnr", "ssim", "lesion_nmse", "identity_t", "identity", "lesion_kept")
        for t, name in enumerate(self.cfg.contrasts):
            target = torch.full((len(picks),), t, dtype=torch.long)
            available = torch.ones(len(picks), self.n, dtype=torch.bool)
            available[:, t] = False
            preds = []
            for start in range(0, len(picks), 8):
                sl = slice(start, start + 8)
                with self._autocast():
                    x = build_input(images[sl], available[sl], target[sl]).to(self.device)
                    preds.append(generator(self._prep(x)).float().cpu()[:, 0])
            pred = torch.where(masks, torch.cat(preds), 0) if self.cfg.head_only_loss else torch.cat(preds)
            inputs = [images[:, k].numpy() for k in range(self.n) if k != t]
            real = images[:, t] * scale[:, t, None, None]
            scores = score_volume(pred.numpy(), real.numpy(), masks.numpy(), lesions.numpy(), inputs)
            for key in keys:
                result[f"{name}_{key}"] = scores[key]
            lesion_nmse = scores["lesion_nmse"] if math.isfinite(scores["lesion_nmse"]) else scores["nmse"]
            result[f"{name}_select"] = (scores["nmse"] + lesion_nmse) / 2
        for key in keys:
            values = [result[f"{c}_{key}"] for c in self.cfg.contrasts]
            result[f"mean_{key}"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        result["select_score"] = float(np.mean([result[f"{c}_select"] for c in self.cfg.contrasts]))
        return result

    def _choice_score(self, scores: Dict[str, float]) -> float:
        """What best.pt minimises: ``select_score`` when checkpoints are chosen on set-aside patients, else the
        mean NMSE (earlier runs)."""
        return scores["select_score"] if self.cfg.n_select else scores["mean_nmse"]

    @torch.no_grad()
    def seconds_per_slice(self, count: int = 4) -> float:
        """Seconds one full-size slice takes through the generator as validation runs it: ``count`` validation
        slices timed after one untimed pass (the first allocates)."""
        data = self.val_data if self.val_data is not None and len(self.val_data) else self.train_data
        picks = list(range(min(count, len(data))))
        images, _, _ = data.batch(picks, torch.Generator())
        available = torch.ones(len(picks), self.n, dtype=torch.bool)
        available[:, 0] = False
        generator = self.G_ema if self.G_ema is not None else self.G
        generator.eval()
        with self._autocast():
            x = self._prep(build_input(images, available, torch.zeros(len(picks), dtype=torch.long)).to(self.device))
            generator(x)
            t0 = time.time()
            generator(x)
        return (time.time() - t0) / len(picks)

    def _apply_budget(self, budget: TimeBudget, sec_per_step: float, sec_per_validation: Optional[float],
                      every: Tuple[int, int, int]) -> Optional[str]:
        """Set ``cfg.steps`` to what fits in ``budget`` (at most the requested steps), with the validation and
        checkpoint cadence ``every`` = (requested steps, val_every, ckpt_every) scaled to it; the progress line to
        print, if any. ``sec_per_validation``: the mean validation with its checkpoint, None before the first."""
        requested, val_every, ckpt_every = every
        slices = min(self.cfg.val_slices, len(self.val_data)) if self.val_data is not None else 0
        if sec_per_validation is not None and slices:
            # A validation runs its slices through G and scores them, as the scoring after training does.
            sec_per_slice = sec_per_validation / (slices * self.n)
        else:
            sec_per_slice = self.seconds_per_slice()
            sec_per_validation = VALIDATION_PER_SLICE * slices * self.n * sec_per_slice
        steps = budget.steps_that_fit(time.time(), self.step, requested, sec_per_step, val_every,
                                      sec_per_validation, sec_per_slice)
        if steps == self.cfg.steps:
            return None
        budget.steps, budget.sec_per_step = (steps if steps < requested else None), sec_per_step
        capped = {"steps": steps, "val_every": scaled_every(val_every, steps, requested),
                  "ckpt_every": scaled_every(ckpt_every, steps, requested)}
        # The checkpoints record the capped count: a resume asks the budget again from what was asked.
        self.cfg, self.base_cfg = replace(self.cfg, **capped), replace(self.base_cfg, **capped)
        return budget.tell(steps)

    # ----- checkpoints -----
    def state(self) -> dict:
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(), "sched_g": self.sched_g.state_dict(),
                "sched_d": self.sched_d.state_dict(), "step": self.step, "epoch": self.epoch,
                "cursor": self.cursor, "best": self.best, "train_seconds": self.train_seconds,
                "config": self.base_cfg.to_dict(), "world": self.world,
                **({"G_ema": self.G_ema.state_dict()} if self.G_ema is not None else {})}

    def load_state(self, state: dict) -> None:
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

    def _snapshot(self) -> Path:
        generator = self.G_ema if self.G_ema is not None else self.G
        path = self.out_dir / "snapshots" / f"g_{self.step:06d}.pt"
        with atomic_path(path) as tmp:
            torch.save({"G": generator.state_dict(), "step": self.step, "config": self.base_cfg.to_dict(),
                        "train_seconds": self.train_seconds}, tmp)
        return path

    @classmethod
    def from_checkpoint(cls, path: str, train: SliceData, val: Optional[SliceData], cfg: Optional[TrainConfig]
                        = None, **kwargs) -> Solver:
        """A solver that continues exactly where ``path`` stopped (``cfg`` may change e.g. ``steps``)."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        solver = cls(cfg or TrainConfig(**state["config"]), train, val, warm_start=False, **kwargs)
        solver.load_state(state)
        return solver

    # ----- the loop -----
    def _log(self, name: str, fields: List[str], row: dict) -> None:
        path = self.out_dir / name
        new = not path.is_file()
        columns = fields if new else log_header(path, fields)  # rows always under the file's own header
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore", restval="")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _truncate_logs(self) -> None:
        """On resume, drop log rows written after the checkpoint (they will be produced again)."""
        for name in ("log.csv", "val.csv"):
            path = self.out_dir / name
            if path.is_file():
                with open(path) as handle:
                    rows = list(csv.reader(handle))
                keep = rows[:1] + [r for r in rows[1:] if r and int(float(r[0])) <= self.step]
                with open(path, "w", newline="") as handle:
                    csv.writer(handle).writerows(keep)

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
            self._truncate_logs()
        last_ckpt = time.time()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (main and cfg.progress), dynamic_ncols=True)
        window: List[float] = []
        every = (cfg.steps, cfg.val_every, cfg.ckpt_every)
        if budget is not None:
            budget.requested = cfg.steps
        timed: List[float] = []  # this process's steps but its first (allocations, first reads)
        first = True
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
            window = (window + [dt])[-50:]
            if not first:
                timed = (timed + [dt])[-50:]
            first = False
            if on_step is not None:
                on_step(self.step, out)
            if not main:
                continue
            if ask and len(timed) >= budget.timing_steps:
                ask = False
                line = self._apply_budget(budget, float(np.mean(timed)),
                                          float(np.mean(validations)) if validations else None, every)
                cfg = self.cfg
                bar.total = cfg.steps
                next_val = max(last_val + cfg.val_every, self.step)
                if line:
                    bar.write(line)
            bar.update(1)
            # Only what this run trains: no discriminator loss (or phase) when no discriminator is trained.
            postfix = {"phase": out["phase"]} if self.warmup else {}
            postfix["g"] = f"{out.get('loss_g', float('nan')):.3f}"
            if "loss_d" in out:
                postfix["d"] = f"{out['loss_d']:.3f}"
            bar.set_postfix(**postfix, s_it=f"{np.mean(window):.2f}")
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._log("log.csv", LOG_FIELDS, dict(out, step=self.step, epoch=self.epoch,
                                                       lr_g=self.sched_g.get_last_lr()[0],
                                                       sec_per_step=float(np.mean(window))))
            checkpoint = (self.step % cfg.ckpt_every == 0 or time.time() - last_ckpt >= cfg.ckpt_every_s
                          or self.step == cfg.steps)
            due = self.step % cfg.val_every == 0 if next_val is None else self.step >= next_val
            if (due or self.step == cfg.steps) and self.step > self.warmup:
                t_val, last_val = time.time(), self.step
                next_val = None if next_val is None else self.step + cfg.val_every
                scores = self.validate()
                if scores:
                    self._log("val.csv", ["step"] + sorted(scores), dict(scores, step=self.step))
                    if self._choice_score(scores) < self.best:
                        self.best = self._choice_score(scores)
                        self.save("best.pt")
                    if cfg.keep_snapshots:  # G only (a few MB): any validated step can be exported later
                        self._snapshot()
                    checkpoint = True
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
