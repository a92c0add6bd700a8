"""Generator and discriminator shapes, scripting, and the CCNR unit."""

from __future__ import annotations

import pytest
import torch

from training.collagan_train.model import CCNR, Discriminator, Generator, count_parameters


@pytest.mark.parametrize("shape", [(32, 48), (64, 16)])
def test_generator_any_size_divisible_by_16_and_scriptable(shape):
    g = Generator(n_contrasts=3, base=4, levels=5).eval()
    x = torch.rand(2, 6, *shape)
    y = g(x)
    assert y.shape == (2, 1, *shape)
    scripted = torch.jit.script(g)
    assert torch.allclose(scripted(x), y, atol=1e-6)


def test_paper_generator_widths():
    g = Generator(n_contrasts=3, base=16, levels=5)
    assert g.bottom[0].conv1.out_channels + g.bottom[0].conv3.out_channels == 256  # Table 2: 16..256
    assert g.encoders[0][0].conv1.in_channels == 6  # N contrasts + N mask planes
    assert count_parameters(g) > 1_000_000


def test_ccnr_concatenates_1x1_and_3x3():
    unit = CCNR(2, 8)
    assert unit.conv1.kernel_size == (1, 1) and unit.conv3.kernel_size == (3, 3)
    out = unit(torch.rand(1, 2, 8, 8))
    assert out.shape == (1, 8, 8, 8)
    # Instance norm: every channel of every sample is standardised before the leaky ReLU.
    pre = unit.norm(torch.cat([unit.conv1(torch.ones(1, 2, 8, 8)), unit.conv3(torch.ones(1, 2, 8, 8))], 1))
    assert pre.mean(dim=(2, 3)).abs().max() < 1e-5


def test_discriminator_two_heads():
    d = Discriminator(n_contrasts=4, dropout=0.5).eval()
    gan, logits = d(torch.rand(3, 1, 128, 96))
    assert gan.shape == (3, 1, 4, 3)  # patch map at 1/32 resolution
    assert logits.shape == (3, 4)
    assert gan.min().item() >= 0 and gan.max().item() <= 1  # Table 3 sigmoid
    d.train()
    a, _ = d(torch.ones(1, 1, 64, 64))
    b, _ = d(torch.ones(1, 1, 64, 64))
    assert not torch.equal(a, b)  # dropout active in training
