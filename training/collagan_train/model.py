"""Generator (CCNR U-Net, paper Table 2) and multi-scale two-head discriminator (paper Table 3).

Example:
    >>> g = Generator(n_contrasts=3, base=16)
    >>> g(torch.zeros(2, 6, 64, 64)).shape
    torch.Size([2, 1, 64, 64])
    >>> d = Discriminator(n_contrasts=3)
    >>> [t.shape for t in d(torch.zeros(2, 1, 64, 64))]
    [torch.Size([2, 1, 2, 2]), torch.Size([2, 3])]
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from .voxel_regression import VoxelRegression, n_features


class CCNR(nn.Module):
    """Parallel 1x1 and 3x3 convolutions, concatenated, instance norm, leaky ReLU (the paper's CCNR unit).

    Each branch gives half of ``out_ch``: the 1x1 branch keeps voxel-wise (MR-parameter) processing, the 3x3
    branch adds neighbourhood context.
    """

    def __init__(self, in_ch: int, out_ch: int, slope: float = 0.2) -> None:
        super().__init__()
        half = out_ch // 2
        self.conv1 = nn.Conv2d(in_ch, half, kernel_size=1)
        self.conv3 = nn.Conv2d(in_ch, out_ch - half, kernel_size=3, padding=1)
        self.norm = nn.InstanceNorm2d(out_ch, affine=True)
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(torch.cat([self.conv1(x), self.conv3(x)], dim=1)))


def _double(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(CCNR(in_ch, out_ch), CCNR(out_ch, out_ch))


class Generator(nn.Module):
    """U-Net of CCNR units: ``levels`` resolutions with ``base * 2**i`` channels (16..256 for the paper).

    Input (B, 2N, H, W): N contrasts (target/missing slots zero) + N one-hot target planes; output (B, 1, H, W)
    in p99 units. H and W must be divisible by ``2**(levels-1)`` (16 for 5 levels).

    ``voxel_prior`` (not in the paper) adds a voxel-wise path: the output is the voxel-regression baseline's
    quadratic polynomial of the available inputs (``voxel_regression.VoxelRegression``, one per target and input
    subset, fitted once by least squares on the training split and then fixed) plus the U-Net, which learns
    the residual: the anatomy and contrast a voxel's own intensities cannot explain. Why: on 2 CPU cores a few
    thousand steps left the plain U-Net behind that baseline (docs/RESULTS.md, what was learnt).

    ``input_coefficients`` (not in the paper) lets the last features also predict, per pixel, one coefficient per
    input contrast: the output is ``out(features) + sum_k coef_k(features) * input_k``. Why: every CCNR unit
    instance-normalizes, so a plain U-Net cannot see the inputs' intensity level and outputs the level it learned
    on LGG heads (~0.4 of p99) also for a brain-only scan (~0.7); the coefficients carry the level through, as a
    voxel regression does, but are the network's own per-pixel choice (nothing fixed anchors the output to an
    input). The coefficient layer starts at zero, so a warm-started generator starts where it was.

    ``prior_mix`` (with ``voxel_prior``; not in the paper) blends instead of adding: per target, the output is
    ``share * U-Net + (1 - share) * polynomial``, ``share`` being that target's entry (a fixed buffer; the
    one-hot target planes pick it). Why: a trained generator and the voxel regression err differently, so a
    blend can be more accurate than either, and the share says per target how much of the image is the
    network's (``python -m training.collagan_train.main blend``).
    """

    __constants__ = ["voxel_prior", "input_coefficients", "mixed"]  # TorchScript compiles the branches in use

    def __init__(self, n_contrasts: int, base: int = 16, levels: int = 5, voxel_prior: bool = False,
                 input_coefficients: bool = False, prior_mix: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError("The generator needs at least 2 levels.")
        if prior_mix is not None and (not voxel_prior or len(prior_mix) != n_contrasts):
            raise ValueError("prior_mix needs voxel_prior=True and one share per contrast.")
        self.n_contrasts = n_contrasts
        self.levels = levels
        self.voxel_prior = voxel_prior
        self.input_coefficients = input_coefficients
        self.mixed = prior_mix is not None
        if voxel_prior:  # coefficients are a buffer: set by start_from_voxel_prior or loaded with the state dict
            self.prior = VoxelRegression(torch.zeros(n_contrasts, 2**n_contrasts, n_features(n_contrasts)))
        if prior_mix is not None:
            self.register_buffer("mix", torch.tensor([float(m) for m in prior_mix]))
        widths = [base * 2**i for i in range(levels)]
        self.encoders = nn.ModuleList()
        in_ch = 2 * n_contrasts
        for width in widths[:-1]:
            self.encoders.append(_double(in_ch, width))
            in_ch = width
        self.pool = nn.AvgPool2d(2)
        self.bottom = _double(widths[-2], widths[-1])
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in range(levels - 2, -1, -1):
            self.ups.append(nn.ConvTranspose2d(widths[i + 1], widths[i], kernel_size=2, stride=2))
            self.decoders.append(_double(2 * widths[i], widths[i]))
        self.out = nn.Conv2d(widths[0], 1, kernel_size=1)
        if input_coefficients:
            self.coef = nn.Conv2d(widths[0], n_contrasts, kernel_size=1)
            nn.init.zeros_(self.coef.weight)
            nn.init.zeros_(self.coef.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(x), x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last decoder's features (B, base, H, W), from which the output layer(s) read the image."""
        skips: List[torch.Tensor] = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        i = 0
        for up, decoder in zip(self.ups, self.decoders):
            x = up(x)
            x = decoder(torch.cat([skips[len(skips) - 1 - i], x], dim=1))
            i += 1
        return x

    def output(self, x: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """The image (B, 1, H, W) from :meth:`features` ``x`` and the model input ``inputs``."""
        out = self.out(x)
        if self.input_coefficients:  # missing slots are zero, so their coefficients do not matter
            out = out + (self.coef(x) * inputs[:, :self.n_contrasts]).sum(dim=1, keepdim=True)
        if self.voxel_prior:
            if self.mixed:  # the target's share: its one-hot plane (ones over the field) picks its entry
                n = self.n_contrasts
                share = (inputs[:, n:2 * n].mean(dim=(2, 3)) * self.mix).sum(dim=1)[:, None, None, None]
                return share * out + (1 - share) * self.prior(inputs)
            return self.prior(inputs) + out
        return out

    @torch.no_grad()
    def start_from_voxel_prior(self, coef: torch.Tensor) -> None:
        """Set the prior's coefficients and zero the U-Net's output layer: the generator then starts as the
        voxel regression, and the U-Net's (e.g. warm-started) features begin to add to it from there."""
        if not self.voxel_prior:
            raise ValueError("This generator was built without voxel_prior=True.")
        self.prior.coef.copy_(coef)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)


def _conv(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """4x4 conv + leaky ReLU: stride 1 keeps the size, 2 halves it, 4 quarters it (TF 'same' padding)."""
    pad = {1: (1, 2, 1, 2), 2: (1, 1, 1, 1), 4: (0, 0, 0, 0)}[stride]
    return nn.Sequential(nn.ZeroPad2d(pad), nn.Conv2d(in_ch, out_ch, 4, stride=stride), nn.LeakyReLU(0.2))


class Discriminator(nn.Module):
    """Three branches at different scales (Table 3), concatenated at 1/4 resolution, three strided convs, then
    D_gan (1-channel patch map, LSGAN) and D_clsf (N-way logits).

    Dropout follows each shared strided conv: the paper found it "very effective to prevent the overfitting
    of the discriminator" (§4.2). D_clsf uses global average pooling + a linear layer so any H, W divisible by
    32 works (Table 3's 8x8-kernel FC is the same thing at 256x256).
    """

    def __init__(self, n_contrasts: int, dropout: float = 0.5, sigmoid: bool = True) -> None:
        super().__init__()
        self.branch_a = nn.Sequential(_conv(1, 4, 1), _conv(4, 4, 1), _conv(4, 4, 1), _conv(4, 4, 1),
                                      _conv(4, 16, 4))
        self.branch_b = nn.Sequential(_conv(1, 4, 1), _conv(4, 8, 2), _conv(8, 8, 1), _conv(8, 16, 2),
                                      _conv(16, 16, 1))
        self.branch_c = nn.Sequential(_conv(1, 16, 4), _conv(16, 16, 1), _conv(16, 16, 1), _conv(16, 16, 1),
                                      _conv(16, 16, 1))
        self.trunk = nn.Sequential(_conv(48, 32, 2), nn.Dropout(dropout), _conv(32, 64, 2), nn.Dropout(dropout),
                                   _conv(64, 128, 2), nn.Dropout(dropout))
        self.gan_head = nn.Conv2d(128, 1, kernel_size=3, padding=1)
        self.sigmoid = sigmoid
        self.clsf_head = nn.Linear(128, n_contrasts)
        init_discriminator(self)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(torch.cat([self.branch_a(x), self.branch_b(x), self.branch_c(x)], dim=1))
        gan = self.gan_head(h)
        if self.sigmoid:
            gan = torch.sigmoid(gan)
        return gan, self.clsf_head(h.mean(dim=(2, 3)))


def init_discriminator(module: nn.Module) -> None:
    """He-normal weights (leaky ReLU 0.2) and zero biases for every conv/linear layer of D.

    Why: D has no normalization layers, and PyTorch's default init (uniform weights of std ~1/sqrt(3 fan_in),
    uniform non-zero biases) shrinks the signal at every one of its 8 layers, so by the trunk the biases
    dominate: on real LGG crops the pooled features varied across images by ~0.004 against a mean of ~0.008,
    D_clsf saw nearly the same vector for every contrast and stayed at chance (ln 3) for hundreds of steps.
    TF's defaults (the authors' code) have zero biases; He init keeps the activation scale through the depth.
    With it D_clsf memorises a tiny real batch in tens of steps (``test_discriminator_classifier_learns``).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
