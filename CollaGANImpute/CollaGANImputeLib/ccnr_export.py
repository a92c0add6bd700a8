"""The export-time rewrite of the generator's CCNR units into a faster, equivalent form (training's export).

Each CCNR unit (parallel 1x1 and 3x3 convolutions, concatenated, instance norm, leaky ReLU) gets an instance norm
computed by a kernel that keeps channels-last layout, an in-place leaky ReLU and, when narrow, one 3x3 convolution
whose kernel holds the 1x1 kernel at its centre (:class:`FastCCNR`, :class:`MergedCCNR`). Same function in exact
arithmetic; in fp32 the outputs differ by about 1e-6. Inference never needs this module: a model file carries its
own graph (TorchScript code, ONNX nodes).

Example:
    >>> fast = optimize_for_inference(generator)    # doctest: +SKIP
    >>> save_model(fast, card, "model.pt")          # doctest: +SKIP
"""

from __future__ import annotations

import copy
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModelError

#: A CCNR unit whose 1x1 branch has fewer output channels than this is merged into one 3x3 convolution:
#: oneDNN runs such narrow convolutions far below peak (one AVX-512 register holds 16 fp32 / 32 bf16 values).
MERGE_BELOW_CHANNELS = 16


def instance_norm_lrelu(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                        slope: float) -> torch.Tensor:
    """Affine instance norm + leaky ReLU, fast in channels-last layout.

    A single slice is normalized by ``batch_norm`` in training mode: for a batch of one, per-channel batch
    statistics are the instance statistics, and this CPU kernel keeps channels-last layout and does not depend
    on how the work is split. (``instance_norm`` copies channels-last input to NCHW; the channels-last
    ``group_norm`` CPU kernel uses a one-pass variance that loses all precision on near-constant maps: fp32
    error 10.6 against 4.5e-3 here, for maps of mean 10 and s.d. 0.01.) Batches use ``instance_norm``.
    """
    if y.size(0) == 1:
        y = F.batch_norm(y, None, None, weight, bias, True, 0.0, eps)
    else:
        y = F.instance_norm(y, None, None, weight, bias, True, 0.0, eps)
    return F.leaky_relu(y, slope, inplace=True)


class FastCCNR(nn.Module):
    """A CCNR unit (1x1 and 3x3 convolutions, concatenated, instance norm, leaky ReLU) with the fast norm."""

    def __init__(self, in_channels: int, out1: int, out3: int, eps: float = 1e-5, slope: float = 0.2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out1, kernel_size=1)
        self.conv3 = nn.Conv2d(in_channels, out3, kernel_size=3, padding=1)
        self.norm_weight = nn.Parameter(torch.ones(out1 + out3))
        self.norm_bias = nn.Parameter(torch.zeros(out1 + out3))
        self.eps = eps
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.conv1(x), self.conv3(x)], dim=1)
        return instance_norm_lrelu(y, self.norm_weight, self.norm_bias, self.eps, self.slope)


class MergedCCNR(nn.Module):
    """A narrow CCNR unit as one 3x3 convolution whose kernel holds the 1x1 kernel at its centre (zero rim),
    then the fast norm: one wide convolution beats two narrow ones and a concatenation."""

    def __init__(self, in_channels: int, out_channels: int, eps: float = 1e-5, slope: float = 0.2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm_weight = nn.Parameter(torch.ones(out_channels))
        self.norm_bias = nn.Parameter(torch.zeros(out_channels))
        self.eps = eps
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return instance_norm_lrelu(self.conv(x), self.norm_weight, self.norm_bias, self.eps, self.slope)


def fast_ccnr(unit: nn.Module) -> nn.Module:
    """The :class:`FastCCNR` (or, when narrow, :class:`MergedCCNR`) equivalent of a CCNR ``unit``."""
    conv1, conv3, norm = unit.conv1, unit.conv3, unit.norm
    n1, n3 = conv1.out_channels, conv3.out_channels
    eps, slope = float(norm.eps), float(unit.act.negative_slope)
    biases = [c.bias if c.bias is not None else torch.zeros(c.out_channels) for c in (conv1, conv3)]
    with torch.no_grad():
        if n1 < MERGE_BELOW_CHANNELS:
            fast: nn.Module = MergedCCNR(conv1.in_channels, n1 + n3, eps, slope)
            weight = torch.zeros_like(fast.conv.weight)
            weight[:n1, :, 1, 1] = conv1.weight[:, :, 0, 0]
            weight[n1:] = conv3.weight
            fast.conv.weight.copy_(weight)
            fast.conv.bias.copy_(torch.cat(biases))
        else:
            fast = FastCCNR(conv1.in_channels, n1, n3, eps, slope)
            for source, target, bias in ((conv1, fast.conv1, biases[0]), (conv3, fast.conv3, biases[1])):
                target.weight.copy_(source.weight)
                target.bias.copy_(bias)
        if norm.affine:  # without affine parameters the norm is the identity-affine one: ones and zeros
            fast.norm_weight.copy_(norm.weight)
            fast.norm_bias.copy_(norm.bias)
    return fast


def _is_ccnr(unit: nn.Module) -> bool:
    """Duck-typed CCNR unit, with exactly the layer settings the fast forms reproduce."""
    conv1, conv3 = getattr(unit, "conv1", None), getattr(unit, "conv3", None)
    norm, act = getattr(unit, "norm", None), getattr(unit, "act", None)
    if not (isinstance(conv1, nn.Conv2d) and isinstance(conv3, nn.Conv2d) and isinstance(norm, nn.InstanceNorm2d)
            and isinstance(act, nn.LeakyReLU)):
        return False
    plain = all(c.stride == (1, 1) and c.dilation == (1, 1) and c.groups == 1 and c.padding_mode == "zeros"
                for c in (conv1, conv3))
    return (plain and conv1.kernel_size == (1, 1) and conv1.padding == (0, 0) and conv3.kernel_size == (3, 3)
            and conv3.padding == (1, 1) and conv1.in_channels == conv3.in_channels
            and norm.num_features == conv1.out_channels + conv3.out_channels and not norm.track_running_stats)


def _first_conv_channels(module: nn.Module) -> int:
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            return sub.in_channels
    raise ModelError("optimize_for_inference: the module has no Conv2d layer; it is not a CollaGAN generator.")


def optimize_for_inference(module: nn.Module, example_input: Optional[torch.Tensor] = None,
                           rtol: float = 1e-4) -> nn.Module:
    """Return a copy of the eager generator ``module`` with every CCNR unit in its fast form.

    For the training exporter, before :func:`CollaGANImputeLib.save_model`. Each unit becomes a
    :class:`FastCCNR` or, when its 1x1 branch is narrower than :data:`MERGE_BELOW_CHANNELS`, a
    :class:`MergedCCNR`. The copy is checked against ``module`` on ``example_input`` (default: a random
    (2, C, 64, 64) batch with the first contrast as target): the largest difference must stay within ``rtol`` of
    the output's largest magnitude, else :class:`ModelError`.

    Example:
        >>> save_model(optimize_for_inference(generator), card, "model.pt")      # doctest: +SKIP
    """
    if isinstance(module, torch.jit.ScriptModule):
        raise ModelError("optimize_for_inference needs the eager (Python) generator, not a TorchScript module: "
                         "call it on the trained nn.Module before CollaGANImputeLib.save_model scripts it.")
    module = module.eval()
    fast = copy.deepcopy(module)
    count = 0

    def rewrite(parent: nn.Module) -> None:
        nonlocal count
        for name, child in parent.named_children():
            if _is_ccnr(child):
                setattr(parent, name, fast_ccnr(child))
                count += 1
            else:
                rewrite(child)

    rewrite(fast)
    if count == 0:
        raise ModelError("optimize_for_inference found no CCNR unit (conv1 1x1 + conv3 3x3 + InstanceNorm2d + "
                         "LeakyReLU) to rewrite; is this the CollaGAN generator?")
    if example_input is None:
        channels = _first_conv_channels(module)
        generator = torch.Generator().manual_seed(0)
        example_input = torch.rand(2, channels, 64, 64, generator=generator)
        n = channels // 2
        example_input[:, 0] = 0  # the target (first contrast) slot is zero ...
        example_input[:, n:] = 0
        example_input[:, n] = 1  # ... and its one-hot plane is one
    with torch.no_grad():
        expected, actual = module(example_input), fast(example_input)
    error = float((expected - actual).abs().max())
    scale = max(1.0, float(expected.abs().max()))
    if not error <= rtol * scale:
        raise ModelError(f"optimize_for_inference: the rewritten generator differs from the original by "
                         f"{error:.3g} (allowed {rtol * scale:.3g}); export the original module instead.")
    return fast.eval()


def count_fast_units(module: Union[nn.Module, torch.jit.ScriptModule]) -> int:
    """How many CCNR units of ``module`` (eager or loaded TorchScript) are in a fast form."""
    names = ("FastCCNR", "MergedCCNR")
    return sum(getattr(sub, "original_name", type(sub).__name__) in names for sub in module.modules())
