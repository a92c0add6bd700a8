"""Training and inference feed the model one input layout: the contract's ``model_input``."""

from __future__ import annotations

import numpy as np
import torch
from CollaGANImputeLib.contract import ModelCard, load_model, save_model
from CollaGANImputeLib.inference import build_input as inference_input
from CollaGANImputeLib.inference import impute_slices

from training.collagan_train.solver import build_input as training_input

CONTRASTS = ["t1n", "t1c", "t2f"]


def _weighted_sum(n: int) -> torch.nn.Conv2d:
    """A 1x1 convolution weighting each input channel differently: its output changes with any channel's content."""
    conv = torch.nn.Conv2d(2 * n, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1.0, 2 * n + 1).reshape(1, 2 * n, 1, 1) / 10)
        conv.bias.zero_()
    return conv


def test_training_and_inference_build_the_same_tensor_for_the_same_slices(sample_slices):
    images = torch.from_numpy(np.asarray(sample_slices.images[:4], dtype=np.float32))
    for target in range(3):
        for given in ([k for k in range(3) if k != target], [(target + 1) % 3]):
            available = torch.zeros(4, 3, dtype=torch.bool)
            available[:, given] = True
            trained = training_input(images, available, torch.full((4,), target))
            named = {CONTRASTS[k]: images[:, k] for k in given}
            inferred = inference_input(named, CONTRASTS, CONTRASTS[target], tuple(images[:, 0].shape))
            assert torch.equal(trained, inferred)
            assert not trained[:, target].any() and trained[:, 3 + target].eq(1).all()


def test_the_imputation_path_feeds_the_model_what_training_feeds_it(sample_slices, tmp_path):
    # The real inference path (grid, batching, empty-slice reuse) against the model applied to training's input.
    conv = _weighted_sum(3)
    save_model(conv, ModelCard(name="weighted-sum", contrasts=CONTRASTS), tmp_path / "m.pt")
    model = load_model(tmp_path / "m.pt")
    images = torch.from_numpy(np.asarray(sample_slices.images[:6], dtype=np.float32))
    available = torch.tensor([[True, False, True]] * 6)
    with torch.no_grad():
        expected = conv(training_input(images, available, torch.full((6,), 1)))[:, 0].numpy()
    got = impute_slices(model, {"t1n": images[:, 0].numpy(), "t2f": images[:, 2].numpy()}, "t1c", device="cpu",
                        precision="fp32", batch_size=4)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected).max() > 0.1  # the slices carry signal: a zeroed channel would show
