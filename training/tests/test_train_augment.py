"""Appearance augmentation, the lesion-aware losses and checkpoint choice on set-aside training patients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.collagan_train import augment, losses
from training.collagan_train.cases import select_cases
from training.collagan_train.solver import Solver


def test_strip_outer_head_erodes_zeroes_and_rescales(sample_slices):
    images, masks, _ = sample_slices.batch([10, 11], torch.Generator())
    stripped, inner = augment.strip_outer_head(images, masks, torch.Generator().manual_seed(0), p=1.0,
                                               radius=(8, 8))
    assert (inner <= masks).all() and inner.sum() < masks.sum()  # a shell of the head is gone
    assert (stripped[~inner[:, None].expand_as(stripped)] == 0).all()
    for i in range(2):  # each contrast back in p99 units of the new mask, as the core would normalize it
        for c in range(3):
            p99 = torch.quantile(stripped[i, c][inner[i]], 0.99)
            assert abs(float(p99) - float(torch.quantile(images[i, c][masks[i]], 0.99))) < 1e-3
    assert torch.equal(augment.strip_outer_head(images, masks, torch.Generator(), p=0.0)[0], images)


def test_volume_strip_factors_put_the_stripped_volume_in_its_own_p99_units(sample_slices):
    cases = [case for case, _ in sample_slices.index]
    radii = augment.strip_radii((6, 18))
    assert radii == [6, 10, 14, 18]
    factors = augment.volume_strip_factors(sample_slices.images, sample_slices.masks, cases, radii)
    assert factors.shape == (len(cases), 4, 3) and (factors > 1).any()  # the bright outer head goes
    first = np.flatnonzero(np.asarray(cases) == cases[0])
    assert (factors[first] == factors[first[0]]).all()  # one factor per case, radius and contrast
    # Every slice stripped with radius 10: the volume, inside the new head, is back in p99 units as the core
    # would normalize a scan that arrived stripped (min_keep=0 so no slice keeps its outer head).
    images = torch.from_numpy(np.asarray(sample_slices.images[first], dtype=np.float32))
    masks = torch.from_numpy(np.asarray(sample_slices.masks[first]))
    picks = torch.Generator().manual_seed(0)
    stripped, inner = images.clone(), masks.clone()
    for i in range(len(first)):
        out_i, mask_i = augment.strip_outer_head(images[i:i + 1], masks[i:i + 1], picks, p=1.0, radius=(10, 10),
                                                 min_keep=0.0, factors=torch.from_numpy(factors[first[i:i + 1], 1:2]))
        stripped[i], inner[i] = out_i[0], mask_i[0]
    for c in range(3):
        assert abs(np.percentile(stripped[:, c].numpy()[inner.numpy()], 99)
                   - np.percentile(images[:, c].numpy()[masks.numpy()], 99)) < 2e-3


def test_identity_loss_prefers_the_target_over_a_copy_of_an_input():
    gen = torch.Generator().manual_seed(0)
    shared = torch.rand(2, 1, 32, 32, generator=gen)
    real = shared + torch.rand(2, 1, 32, 32, generator=gen)        # the target: the input's part plus its own
    inputs = torch.cat([shared, torch.rand(2, 1, 32, 32, generator=gen)], dim=1)
    available, head = torch.ones(2, 2, dtype=torch.bool), torch.ones(2, 1, 32, 32, dtype=torch.bool)
    assert float(losses.identity_loss(real, real, inputs, available, head)) < 1e-5
    copy = inputs[:, :1].clone().requires_grad_(True)              # the input as the answer: I < 0
    loss = losses.identity_loss(copy, real, inputs, available, head)
    assert loss.item() > 0.5
    loss.backward()
    assert copy.grad is not None and copy.grad.abs().sum() > 0
    # An unavailable input is not compared with.
    assert losses.identity_loss(copy, real, inputs, torch.tensor([[False, True]] * 2), head).item() < loss.item()


def test_pooled_identity_sees_slice_levels_that_follow_an_input():
    # Per slice the output is the target itself; only its level from slice to slice follows the input, as
    # when a volume's synthetic brightness tracks the T1's. The per-slice term cannot see that; pooled, it can.
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(4, 1, 32, 32, generator=gen)
    inputs = torch.rand(4, 2, 32, 32, generator=gen)
    inputs[:, 0] += torch.tensor([0.0, 3.0, 0.0, 3.0])[:, None, None]
    fake = real + torch.tensor([0.0, 3.0, 0.0, 3.0])[:, None, None, None]
    available, head = torch.ones(4, 2, dtype=torch.bool), torch.ones(4, 1, 32, 32, dtype=torch.bool)
    target = torch.tensor([1, 1, 1, 1])
    assert float(losses.identity_loss(fake, real, inputs, available, head)) < 1e-5
    assert float(losses.identity_loss_pooled(real, real, inputs, available, head, target)) < 1e-5
    assert float(losses.identity_loss_pooled(fake, real, inputs, available, head, target)) > 0.5
    # Slices are pooled only with slices of the same target; a target with one slice adds nothing.
    assert float(losses.identity_loss_pooled(fake, real, inputs, available, head, torch.arange(4))) == 0.0


def test_joint_gamma_raises_the_level_of_every_contrast_alike_and_keeps_p99_units():
    x = torch.rand(8, 3, 16, 16)
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0
    y = augment.joint_gamma(x, torch.Generator().manual_seed(0), p=1.0, lowest=0.4)
    assert (y[:, :, 0, 0] == 0).all() and torch.allclose(y[:, :, 0, 1], torch.ones(8, 3))
    assert (y >= x - 1e-6).all() and y.mean() > x.mean() + 0.05
    # one gamma per slice for all contrasts: log y / log x is the same across channels
    inside = (x > 0.05) & (x < 0.95)
    ratio = torch.where(inside, torch.log(y.clamp_min(1e-9)) / torch.log(x.clamp_min(1e-9)), torch.nan)
    per_slice = ratio.flatten(1).nanmean(1)
    assert torch.allclose(ratio[inside], per_slice[:, None, None, None].expand_as(ratio)[inside], atol=1e-4)
    assert torch.equal(augment.joint_gamma(x, torch.Generator(), p=0.0), x)


def test_input_appearance_keeps_zeros_and_changes_intensities():
    x = torch.rand(4, 3, 32, 32)
    x[:, 1] = 0  # an emptied slot stays empty
    y = augment.input_appearance(x, torch.Generator().manual_seed(1), p=1.0)
    assert (y[:, 1] == 0).all() and not torch.allclose(x, y)
    assert torch.equal(augment.input_appearance(x, torch.Generator(), p=0.0), x)


def test_lesion_contrast_loss_is_zero_when_kept_and_positive_when_lost():
    real = torch.full((1, 1, 32, 32), 0.5)
    lesion = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    lesion[..., 8:18, 8:18] = True
    real[lesion] = 1.0
    head = torch.ones_like(lesion)
    assert float(losses.lesion_contrast_loss(real.clone(), real, head, lesion)) == 0.0
    vanished = torch.full_like(real, 0.5)
    assert float(losses.lesion_contrast_loss(vanished, real, head, lesion)) > 0.9  # C 2.0 -> 1.0
    assert float(losses.lesion_contrast_loss(vanished, real, head, torch.zeros_like(lesion))) == 0.0


def test_lesion_weight_raises_the_loss_of_errors_inside_the_lesion(tiny_cfg):
    plain = tiny_cfg("method=l1").with_method()  # the training step's config: the method's weights applied
    weighted = tiny_cfg("method=l1", "lesion_weight=5").with_method()
    real = torch.zeros(1, 1, 16, 16)
    fake = torch.zeros(1, 1, 16, 16)
    lesion = torch.zeros(1, 16, 16, dtype=torch.bool)
    lesion[0, :4, :4] = True
    fake[0, 0, :4, :4] = 1.0  # the error sits in the lesion
    head = torch.ones_like(lesion)
    a = losses.direct_terms(fake, real, head, lesion, plain)["direct_l1"]
    b = losses.direct_terms(fake, real, head, lesion, weighted)["direct_l1"]
    assert float(b) == float(a) * 5


def test_edge_weight_raises_the_loss_of_errors_in_the_heads_outer_band(tiny_cfg):
    plain = tiny_cfg("method=l1").with_method()
    weighted = tiny_cfg("method=l1", "edge_weight=3", "edge_px=2", "lesion_weight=5").with_method()
    real = torch.zeros(1, 1, 16, 16)
    head = torch.zeros(1, 16, 16, dtype=torch.bool)
    head[0, 2:14, 2:14] = True
    lesion = torch.zeros_like(head)
    lesion[0, 2:4, 6:10] = True  # in the band too: the lesion's weight wins
    for region, factor in ((head & ~losses.edge_band(head, 2), 1), (losses.edge_band(head, 2) & ~lesion, 3),
                           (lesion, 5)):
        fake = torch.where(region[:, None], 1.0, real)
        a = losses.direct_terms(fake, real, head, lesion, plain)["direct_l1"]
        b = losses.direct_terms(fake, real, head, lesion, weighted)["direct_l1"]
        assert math.isclose(float(b), float(a) * factor, rel_tol=1e-6), (factor, float(a), float(b))


def test_edge_band_is_the_masks_outer_ring():
    head = torch.zeros(2, 12, 12, dtype=torch.bool)
    head[0, 1:11, 1:11] = True  # a 10x10 square: a 2-pixel ring around a 6x6 core
    band = losses.edge_band(head, 2)
    assert int(band[0].sum()) == 100 - 36 and not band[0, 3:9, 3:9].any() and band[0, 1, 5]
    assert not band[1].any()  # an empty mask has no band


def test_select_cases_are_seeded_training_patients():
    cases = [f"c{i:02d}" for i in range(52)]
    chosen = select_cases(cases, 6, 2019)
    assert len(chosen) == 6 and set(chosen) <= set(cases) and chosen == select_cases(list(reversed(cases)), 6, 2019)


def test_validation_logs_fidelity_checks_and_snapshots(tiny_cfg, sample_slices, tmp_path):
    cfg = tiny_cfg("method=l1", "steps=2", "val_every=2", "keep_snapshots=true", "n_select=1", "lesion_weight=5",
                   "w_lesion_contrast=1", "aug_strip_p=0.5", "aug_appearance_p=0.5", "w_identity=1",
                   "target_weights=[1,1,2]", "aug_joint_gamma_p=0.5")
    solver = Solver(cfg, sample_slices, sample_slices)
    solver.train()
    header = (solver.out_dir / "val.csv").read_text().splitlines()[0].split(",")
    for key in ("t2f_identity", "t2f_lesion_kept", "select_score", "mean_identity"):
        assert key in header
    assert (solver.out_dir / "snapshots" / "g_000002.pt").is_file()
    assert {"lesion_contrast", "identity"} <= set((solver.out_dir / "log.csv").read_text().splitlines()[0].split(","))


def test_brain_only_copy_removes_the_scalp_and_renormalizes_in_the_brain(sample_slices):
    images = np.asarray(sample_slices.images, dtype=np.float32)
    head = np.asarray(sample_slices.masks)
    copy, brain, ok = augment.brain_only_volume(images, head)
    assert 2 <= ok.sum() < len(ok)  # some slices get a brain mask; where it fails the slice is left out
    assert (brain <= head).all() and brain[ok].sum() < 0.9 * head[ok].sum()  # scalp and skull are gone
    assert (copy[~ok] == 0).all() and (copy[~brain[:, None].repeat(3, axis=1)] == 0).all()
    # The bright scalp fat is outside the mask: the brain's own tissue is what sets its 99th percentile.
    ring = head[ok] & ~brain[ok]
    assert images[:, 0][ok][ring].mean() > 0 and np.percentile(images[:, 0][ok][ring], 95) > 0.8
    for c in range(3):  # every contrast in p99 units of the brain, as the core normalizes a skull-stripped scan
        assert abs(np.percentile(copy[:, c][brain], 99) - 1.0) < 1e-3


def test_batch_swaps_in_the_brain_only_copy(sample_slices):
    data = sample_slices.subset([sample_slices.index[0][0]])
    assert data.add_brain_only_copies() > 0
    good = np.flatnonzero(data.brain.ok)[:4].tolist()
    images, masks, lesions = data.batch(good, torch.Generator().manual_seed(0), brain_p=1.0)
    assert torch.equal(masks, torch.from_numpy(data.brain.masks[good]))
    assert (lesions <= masks).all() and (images[~masks[:, None].expand_as(images)] == 0).all()
    plain = data.batch(good, torch.Generator().manual_seed(0), brain_p=0.0)
    assert torch.equal(plain[1], torch.from_numpy(np.asarray(data.masks[good])))


def test_input_contrast_stretches_around_the_median_and_keeps_p99_and_background():
    gen = torch.Generator().manual_seed(0)
    images = torch.zeros(2, 3, 32, 32)
    images[:, :, 8:24, 8:24] = torch.linspace(0.2, 1.0, 16)[None, None, None, :].expand(2, 3, 16, 16)
    out = augment.input_contrast(images, gen, p=1.0, stretch=1.8)
    inside = images > 0
    assert (out[~inside] == 0).all() and (out[inside] >= 0.01).all()
    assert torch.allclose(out[images == 1.0], torch.ones(1))  # the p99 level stays 1
    spread = (out[:, :, 8:24, 8:24].std(dim=(2, 3)) / images[:, :, 8:24, 8:24].std(dim=(2, 3)))
    assert (spread > 1.02).any() and (spread < 0.98).any()  # some inputs stretched, some flattened
    assert torch.equal(augment.input_contrast(images, gen, p=0.0), images)


def test_synthetic_enhancement_brightens_t1c_inside_the_lesion_only(sample_slices):
    images = torch.from_numpy(np.asarray(sample_slices.images[:4], dtype=np.float32))
    lesions = torch.zeros(4, *images.shape[-2:], dtype=torch.bool)
    lesions[:3, 100:160, 90:150] = True  # slice 3 has no lesion
    target = torch.tensor([2, 0, 1, 2])  # slice 2 imputes T1+Gd itself: its target must stay real
    out = augment.synthetic_enhancement(images, lesions, target, 1, torch.Generator().manual_seed(0), p=1.0)
    added = out - images
    assert float(added[:2, 1][lesions[:2]].max()) > 0.15  # painted, inside the lesion
    assert float(added[:2, 1][~lesions[:2]].abs().max()) < 0.15  # outside only the 2-pixel softening reaches
    assert torch.equal(out[2], images[2]) and torch.equal(out[3], images[3])  # T1+Gd target, no lesion
    assert torch.equal(out[:, [0, 2]], images[:, [0, 2]])  # other contrasts untouched
    assert torch.equal(augment.synthetic_enhancement(images, lesions, target, 1, torch.Generator(), p=0.0), images)


def test_no_data_is_a_patch_of_exact_zeros_not_dark_tissue(sample_slices):
    images, masks, _ = sample_slices.batch([10], torch.Generator())
    assert not losses.no_data(images)[:, :, masks[0]].any()  # real head tissue: never a patch of exact zeros
    images[0, 2, :, :100] = 0  # a FLAIR slab that ends: no data in the first 100 columns
    missing = losses.no_data(images)
    assert missing[0, 2, :, :97].all() and not missing[0, 2, :, 104:][masks[0, :, 104:]].any()
    assert not missing[0, :2][:, masks[0]].any()  # the other contrasts are untouched


def test_target_coverage_only_leaves_the_targets_missing_data_out_of_the_loss_mask(tiny_cfg, sample_slices):
    images = np.array(sample_slices.images)
    images[:, 2, :, :128] = 0  # the FLAIR (index 2) was not acquired in the left half of every slice
    data = type(sample_slices)(images, sample_slices.masks, sample_slices.index, sample_slices.lesions)
    cfg = tiny_cfg("method=l1", "crop=0", "flip=false", "batch_size=8", "head_only_loss=true",
                   "target_coverage_only=true", "target_weights=[1,1,2]")
    solver = Solver(cfg, data, None)
    seen = set()
    for _ in range(3):
        _, target, _, masks, lesions, _ = solver.sample()
        for i, t in enumerate(target.tolist()):
            left, right = masks[i, :, :120], masks[i, :, 136:]
            assert right.any() and (not left.any() if t == 2 else left.any()), (t, int(left.sum()))
            seen.add(t == 2)
        assert not (lesions & ~masks).any()
    assert seen == {True, False}  # both cases drawn


def test_target_coverage_only_without_head_only_losses_is_refused(tiny_cfg):
    with pytest.raises(ValueError, match="set head_only_loss to true"):
        tiny_cfg("target_coverage_only=true", "head_only_loss=false")
