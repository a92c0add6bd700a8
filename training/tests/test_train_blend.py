"""Blending a trained generator with the voxel regression per target: the output is the share-weighted mix of the
two, the snapshot exports (TorchScript and ONNX) with its shares on the card, and imputes through the core."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from CollaGANImputeLib.case_files import read_case
from CollaGANImputeLib.contract import load_model
from CollaGANImputeLib.evaluate import score_imputation
from CollaGANImputeLib.runtime import onnx_runner

from training.collagan_train.blend import blended_state, parse_mix
from training.collagan_train.export import export_checkpoint
from training.collagan_train.model import Generator
from training.collagan_train.solver import Solver, build_input
from training.collagan_train.voxel_regression import VoxelRegression, n_features


def _target_input(target: int) -> torch.Tensor:
    x = torch.rand(2, 6, 32, 32)
    x[:, target] = 0
    x[:, 3:] = 0
    x[:, 3 + target] = 1
    return x


def test_each_target_gets_its_share_of_network_and_polynomial():
    torch.manual_seed(0)
    coef = torch.randn(3, 8, n_features(3)) * 0.1
    plain = Generator(n_contrasts=3, base=4, levels=3, input_coefficients=True).eval()
    with torch.no_grad():
        plain.out.weight.normal_(0, 0.3)
    state = {"G": plain.state_dict(), "config": {"contrasts": ["t1n", "t1c", "t2f"], "g_voxel_prior": False}}
    blended = blended_state(state, coef, [1.0, 0.25, 0.0])
    g = Generator(3, 4, 3, voxel_prior=True, input_coefficients=True, prior_mix=[1.0, 0.25, 0.0]).eval()
    g.load_state_dict(blended["G"])
    polynomial = VoxelRegression(coef)
    for target, share in enumerate([1.0, 0.25, 0.0]):
        x = _target_input(target)
        with torch.no_grad():
            expected = share * plain(x) + (1 - share) * polynomial(x)
            assert torch.allclose(g(x), expected, atol=1e-5)
            assert torch.allclose(torch.jit.script(g)(x), expected, atol=1e-5)
    assert not torch.allclose(g(_target_input(1)), plain(_target_input(1)), atol=1e-3)
    assert blended["config"]["g_prior_mix"] == [1.0, 0.25, 0.0] and blended["config"]["g_voxel_prior"]
    with pytest.raises(SystemExit, match="already adds"):
        blended_state(blended, coef, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="prior_mix"):
        Generator(3, 4, 3, prior_mix=[1.0, 1.0, 1.0])


def test_mix_is_one_share_per_contrast():
    assert parse_mix("t2f=0.8, t1n=1,t1c=0", ["t1n", "t1c", "t2f"]) == [1.0, 0.0, 0.8]
    for bad in ("t1n=1,t1c=0.3", "t1n=1,t1c=0.3,t2f=1.5", "t1n=1,t1c=x,t2f=1", "t1n=1,t1c=0.3,t2w=1"):
        with pytest.raises(SystemExit, match="--mix"):
            parse_mix(bad, ["t1n", "t1c", "t2f"])


def test_blended_snapshot_exports_and_imputes_like_the_eager_blend(tiny_cfg, sample_slices, tmp_path):
    solver = Solver(tiny_cfg("steps=2", "clsf_warmup_steps=1"), sample_slices, None, out_dir=str(tmp_path))
    for _ in range(2):
        solver.train_step()
    state = torch.load(solver.save("latest.pt"), map_location="cpu", weights_only=False)
    coef = torch.randn(3, 8, n_features(3)) * 0.1
    blended = blended_state(state, coef, [1.0, 0.5, 0.0])
    snapshot = tmp_path / "blend.pt"
    torch.save(blended, snapshot)
    model = load_model(export_checkpoint(str(snapshot), str(tmp_path / "model.pt"), metrics={}))
    assert model.card.architecture["unet_share"] == {"t1n": 1.0, "t1c": 0.5, "t2f": 0.0}
    assert "blended per target" in model.card.architecture["generator"]
    assert model.card.training["blend"]["mix"] == {"t1n": 1.0, "t1c": 0.5, "t2f": 0.0}
    images = torch.from_numpy(np.asarray(sample_slices.images[:2], dtype=np.float32))
    x = build_input(images, torch.tensor([[True, False, True], [True, False, True]]), torch.tensor([1, 1]))
    with torch.no_grad():
        eager = 0.5 * solver.G.eval()(x) + 0.5 * VoxelRegression(coef)(x)
        assert torch.allclose(model.module(x), eager, atol=5e-5)
    onnx = onnx_runner(model, "onnxruntime", "fp32")(x.numpy())
    # The tiny generator's ONNX and TorchScript outputs differ by ~1e-3 with or without the blend (its few-step
    # instance norms meet near-constant channels): the blend must add no difference of its own.
    plain = load_model(export_checkpoint(str(solver.save("plain.pt")), str(tmp_path / "plain.pt"), metrics={}))
    with torch.no_grad():
        plain_gap = np.abs(onnx_runner(plain, "onnxruntime", "fp32")(x.numpy()) - plain.module(x).numpy()).max()
    assert np.abs(onnx - eager.numpy()).max() <= max(5e-5, 1.1 * plain_gap)


def test_a_cohort_blend_takes_the_share_with_the_lowest_nmse(sample_slices, tmp_path):
    """On the sample case: a "network" that is the voxel regression at half its intensity loses to the regression
    at every share, so the choice is the regression alone; the regression against itself ties, so the network's."""
    from training.collagan_train.baselines import export_voxel_regression, fit
    from training.collagan_train.blend import choose_shares

    from .conftest import SAMPLE

    coef = fit(np.asarray(sample_slices.images, dtype=np.float32), np.asarray(sample_slices.masks), max_voxels=20_000,
               target_scale=sample_slices.target_scale)
    contrasts = ["t1n", "t1c", "t2f"]
    regression = load_model(export_voxel_regression(coef, contrasts, str(tmp_path / "vr.pt")))
    darker = load_model(export_voxel_regression(coef * 0.5, contrasts, str(tmp_path / "dark.pt")))
    choice = choose_shares(darker, {"cohort": (regression, contrasts)}, [SAMPLE], contrasts, grid=(0.0, 0.5, 1.0))
    assert choice.shares == [0.0, 0.0, 0.0] and choice.sources == ["cohort"] * 3
    assert all(row["blend"] == row["regression"] < row["network"] for row in choice.rows)
    assert "| t1c | cohort | 0.0 |" in choice.table(contrasts)
    # Each model alone scores as the core's evaluation scores it (EVALUATION.md v3): its NMSE, and I_T > 0 or not.
    images = read_case(SAMPLE, contrasts)
    network, alone = (score_imputation(m, images, "t1c", ["t1n", "t2f"], device="cpu").scores
                      for m in (darker, regression))
    assert choice.rows[1]["network"] == pytest.approx(network["nmse"], rel=1e-9)
    assert choice.rows[1]["regression"] == pytest.approx(alone["nmse"], rel=1e-9)
    assert choice.rows[1]["kept_network"] == int(network["identity_t"] > 0)
    assert choice.rows[1]["kept_blend"] == int(alone["identity_t"] > 0)  # the blend chosen: the regression alone
    same = choose_shares(regression, {"cohort": (regression, contrasts)}, [SAMPLE], contrasts, grid=(0.0, 0.5, 1.0))
    assert same.shares == [1.0] * 3
    # A second polynomial serving T1+Gd only: the darker one blended with the regression wins there alone.
    both = choose_shares(darker, {"dark": (darker, contrasts), "cohort": (regression, ["t1c"])}, [SAMPLE], contrasts,
                         grid=(0.0, 0.5, 1.0))
    assert both.sources == ["dark", "cohort", "dark"] and both.shares[1] == 0.0


def test_a_polynomial_of_fewer_contrasts_embeds_and_ignores_the_added_one():
    from training.collagan_train.voxel_regression import embed_polynomial

    torch.manual_seed(0)
    old, new = ["t1n", "t1c", "t2f"], ["t1n", "t1c", "t2w", "t2f"]
    coef = torch.randn(3, 8, n_features(3))
    for target in range(3):  # a fitted polynomial reads only the inputs of its subset
        for subset in range(8):
            for k, term in enumerate([()] + [(i,) for i in range(3)] + [(i, j) for i in range(3) for j in range(i, 3)]):
                if any(not subset >> i & 1 for i in term) or subset >> target & 1:
                    coef[target, subset, k] = 0
    fallback = torch.full((4, 16, n_features(4)), 7.0)
    wide = VoxelRegression(embed_polynomial(coef, old, new, fallback))
    narrow = VoxelRegression(coef)
    images = torch.rand(2, 3, 16, 16)
    for t_old, name in enumerate(old):
        t_new = new.index(name)
        x_old = torch.cat([images, torch.zeros(2, 3, 16, 16)], 1)
        x_old[:, t_old], x_old[:, 3 + t_old] = 0, 1
        x_new = torch.cat([images[:, :2], torch.rand(2, 1, 16, 16), images[:, 2:], torch.zeros(2, 4, 16, 16)], 1)
        x_new[:, t_new], x_new[:, 4 + t_new] = 0, 1
        assert torch.allclose(wide(x_new), narrow(x_old), atol=1e-5), name  # the T2w input is read by neither
    assert (embed_polynomial(coef, old, new, fallback)[2] == 7).all()  # T2w as a target: the fallback
