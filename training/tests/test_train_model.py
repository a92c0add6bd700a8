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
    assert pre.mean(dim=(2, 3)).abs().max() < 1e-4  # float32 rounding of a 64-voxel mean


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


def _pooled_spread(d: Discriminator, x: torch.Tensor) -> float:
    """How much D's pooled trunk features differ between images (what D_clsf can tell apart)."""
    h = d.trunk(torch.cat([d.branch_a(x), d.branch_b(x), d.branch_c(x)], dim=1)).mean(dim=(2, 3))
    return float(h.std(dim=0).mean() / h.abs().mean())


def test_discriminator_classifier_learns(sample_slices):
    """D_clsf must learn the contrast of real slices: memorise 2 slices x 3 contrasts (64x64 centre crops)
    at the CPU config's lr 1e-4. Measured after 40 steps: 0.12-0.17 with the fix, 0.88-1.02 under PyTorch's
    default init (seeds 0-2)."""
    torch.manual_seed(0)
    mid = len(sample_slices) // 2
    x = torch.from_numpy(sample_slices.images[[mid - 3, mid + 3]].astype("float32"))[..., 96:160, 96:160]
    x = x.reshape(-1, 1, 64, 64)
    y = torch.arange(3).repeat(2)
    d = Discriminator(n_contrasts=3, dropout=0.0)
    with torch.no_grad():  # at init the pooled features must depend on the image, not only on the biases
        assert _pooled_spread(d, x) > 0.05
    opt = torch.optim.Adam(d.parameters(), 1e-4, (0.5, 0.999))
    first = None
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(d(x)[1], y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 0.9  # starts near chance (ln 3 = 1.10)
    assert loss.item() < 0.4, f"D_clsf did not learn: loss {loss.item():.3f} after 40 steps"


def test_voxel_prior_generator_starts_as_the_voxel_regression_and_scripts():
    from training.collagan_train.baselines import VoxelRegression, n_features

    torch.manual_seed(0)
    coef = torch.randn(3, 8, n_features(3)) * 0.1
    g = Generator(n_contrasts=3, base=4, levels=3, voxel_prior=True).eval()
    g.start_from_voxel_prior(coef)
    x = torch.rand(2, 6, 32, 32)
    x[:, 0] = 0
    x[:, 3:] = 0
    x[:, 3] = 1  # target: contrast 0 from contrasts 1 and 2
    expected = VoxelRegression(coef)(x)
    assert torch.allclose(g(x), expected, atol=1e-6)
    with torch.no_grad():
        g.out.weight.fill_(0.1)  # the U-Net's residual now adds to the prior
    assert not torch.allclose(g(x), expected, atol=1e-3)
    scripted = torch.jit.script(g)
    assert torch.allclose(scripted(x), g(x), atol=1e-6)
    clone = Generator(n_contrasts=3, base=4, levels=3, voxel_prior=True)
    clone.load_state_dict(g.state_dict())  # the coefficients travel with the weights
    assert torch.equal(clone.prior.coef, coef)
    with pytest.raises(ValueError, match="voxel_prior"):
        Generator(n_contrasts=3, base=4, levels=3).start_from_voxel_prior(coef)


def test_input_coefficients_start_as_the_plain_generator_and_carry_the_input_level():
    torch.manual_seed(0)
    plain = Generator(n_contrasts=3, base=4, levels=3).eval()
    g = Generator(n_contrasts=3, base=4, levels=3, input_coefficients=True).eval()
    missing, unexpected = g.load_state_dict(plain.state_dict(), strict=False)  # a warm start from a plain run
    assert set(missing) == {"coef.weight", "coef.bias"} and not unexpected
    x = torch.rand(2, 6, 32, 32)
    x[:, 0] = 0
    x[:, 3:] = 0
    x[:, 3] = 1  # target: contrast 0 from contrasts 1 and 2
    assert torch.allclose(g(x), plain(x), atol=1e-6)  # zero coefficients at the start
    with torch.no_grad():
        g.out.weight.zero_()
        g.out.bias.zero_()
        g.coef.bias.copy_(torch.tensor([0.0, 0.5, 0.5]))  # output = the mean of the two inputs
    brighter = x.clone()
    brighter[:, :3] *= 1.5  # a brighter scan: the instance-normalized features cannot see this
    assert torch.allclose(g(x), 0.5 * (x[:, 1:2] + x[:, 2:3]), atol=1e-6)
    assert torch.allclose(g(brighter), 1.5 * g(x), atol=1e-5)
    assert torch.allclose(torch.jit.script(g)(x), g(x), atol=1e-6)
