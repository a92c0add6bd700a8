"""Faster CollaGAN inference: how the model is run (precision, memory layout) and an exact export-time rewrite.

The generator is small and memory-bound in plain fp32 (benchmarks/bench_inference.py, docs/PERFORMANCE.md).
Two levers make it fast without changing what it computes beyond bf16 rounding:

* Run time (:func:`plan_inference`): on a CPU with native bf16 dot products (AVX512-BF16 or AMX) the weights
  and activations are bf16 in channels-last layout, which oneDNN runs at several times the fp32 speed; on CUDA
  the model runs under bf16 (or fp16) autocast in channels-last layout; anywhere else it stays fp32.
  ``precision="auto"`` chooses; ``"fp32"``, ``"bf16"`` and ``"fp16"`` force a choice.
* Export time (:func:`optimize_for_inference`): each CCNR unit (parallel 1x1 and 3x3 convolutions,
  concatenated, instance norm, leaky ReLU) gets an instance norm computed by a kernel that keeps channels-last
  layout, an in-place leaky ReLU and, when narrow, one 3x3 convolution whose kernel holds the 1x1 kernel at its
  centre (:class:`FastCCNR`, :class:`MergedCCNR`). Same function in exact arithmetic; in fp32 the outputs
  differ by about 1e-6.

On the CPU a TorchScript model is called one slice at a time: the fast single-slice norm needs it, small
activations stay in cache (measured no slower than batches), and results cannot depend on the batch size.

Example:
    >>> plan = plan_inference(model.module, torch.device("cpu"))      # doctest: +SKIP
    >>> plan.describe()                                                # doctest: +SKIP
    'bf16 weights, channels-last, one slice at a time'
    >>> y = plan(x)               # (B, 2N, H, W) float32 -> (B, 1, H, W) float32 on the plan's device
    >>> fast = optimize_for_inference(generator)    # at export, before CollaGANImputeLib.save_model
"""

from __future__ import annotations

import contextlib
import copy
import functools
import platform
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError, ModelError

#: Accepted values of the ``precision`` argument.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: Slices per batch when the caller lets us choose (``batch_size=None``). On a CPU a TorchScript model runs one
#: slice per call anyway (the batch only sets how often progress and cancel are checked); a GPU wants large
#: batches to fill its cores.
DEFAULT_BATCH = {"cpu": 4, "cuda": 32}


# --------------------------------------------------------------------------------------------- capabilities


def _cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (x86 AVX512-BF16 or AMX; Arm BF16) and oneDNN is usable.

    oneDNN also *emulates* bf16 on any AVX-512 CPU, but there it is slower than fp32, so ``auto`` only picks
    bf16 with the native instructions. Windows and macOS report no flags here: ``auto`` stays fp32 there
    (``precision="bf16"`` still forces it).
    """
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):  # older torch without the probe
        return False
    flags = _cpu_flags()
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → the fastest precision that keeps the quality rule on ``device``; others are checked and kept.

    CUDA: bf16 where the GPU supports it (Ampere and newer), else fp16. CPU: bf16 with native bf16 dot
    products (:func:`cpu_has_native_bf16`), else fp32.
    """
    if precision not in PRECISIONS:
        raise InputError(f"Unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def default_batch_size(device: torch.device) -> int:
    """Slices per model call when the caller does not choose (see :data:`DEFAULT_BATCH`)."""
    return DEFAULT_BATCH.get(device.type, 8)


# ------------------------------------------------------------------------------------------------ run time


# module → whether it holds InstanceNorm layers (a walk over every submodule: once per model, not per call)
_INSTANCE_NORM: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _has_instance_norm(module: nn.Module) -> bool:
    """Whether ``module`` (eager or TorchScript) contains InstanceNorm layers."""
    if module not in _INSTANCE_NORM:
        _INSTANCE_NORM[module] = any(getattr(sub, "original_name", type(sub).__name__).startswith("InstanceNorm")
                                     for sub in module.modules())
    return _INSTANCE_NORM[module]


def _weights_version(module: nn.Module) -> tuple:
    """Changes whenever a weight of ``module`` is replaced, moved or modified in place."""
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in
                 list(module.parameters()) + list(module.buffers()))


# original module → {(device, dtype, channels_last): (weights version, converted copy)}
_CONVERTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _converted_copy(module: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool) -> nn.Module:
    """A cached copy of ``module`` with weights in ``dtype`` (and channels-last); the original is untouched."""
    key = (str(device), dtype, channels_last)
    version = _weights_version(module)
    cached = _CONVERTED.setdefault(module, {}).get(key)
    if cached is not None and cached[0] == version:
        return cached[1]
    with warnings.catch_warnings():
        # Module.to reads .grad of TorchScript parameters, which torch reports as a non-leaf access: noise here.
        warnings.filterwarnings("ignore", message=".*grad attribute of a Tensor that is not a leaf.*")
        converted = copy.deepcopy(module).to(device=device, dtype=dtype)
        if channels_last:
            converted = converted.to(memory_format=torch.channels_last)
    _CONVERTED[module][key] = (version, converted)
    return converted


@dataclass
class InferencePlan:
    """How a model is called: ``plan(x)`` maps a float32 (B, 2N, H, W) batch to the float32 (B, 1, H, W) output.

    ``mode`` is ``"weights"`` (a converted bf16/fp16 copy of a TorchScript model runs; CPU), ``"autocast"``
    (the model runs under torch.autocast; CUDA, or any non-TorchScript module) or ``"fp32"``. With
    ``one_slice_at_a_time`` the module sees batches of one slice. ``optimized_executor=False`` runs a
    TorchScript graph as scripted, without the profiling executor's first calls.
    """

    module: nn.Module
    device: torch.device
    precision: str
    channels_last: bool
    mode: str
    one_slice_at_a_time: bool = False
    optimized_executor: bool = True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.one_slice_at_a_time and x.shape[0] > 1:
            # Slice by slice from the start, so that each slice's converted copy is still in cache.
            return torch.cat([self._run(x[i:i + 1]) for i in range(x.shape[0])])
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if self.mode == "weights":
            x = x.to(_DTYPES[self.precision])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        context = (torch.autocast(self.device.type, dtype=_DTYPES[self.precision]) if self.mode == "autocast"
                   else contextlib.nullcontext())
        with context, torch.jit.optimized_execution(self.optimized_executor):
            return self.module(x).float()

    def describe(self) -> str:
        """For logs and the user, e.g. ``bf16 weights, channels-last, one slice at a time``."""
        kind = {"weights": f"{self.precision} weights", "autocast": f"{self.precision} autocast"}.get(self.mode,
                                                                                                      "fp32")
        layout = "channels-last" if self.channels_last else "NCHW"
        return f"{kind}, {layout}" + (", one slice at a time" if self.one_slice_at_a_time else "")


def plan_inference(module: nn.Module, device: torch.device, precision: str = "auto",
                   channels_last: Optional[bool] = None) -> InferencePlan:
    """Choose how to run ``module`` on ``device`` (see the module docstring); ``module`` is never modified.

    ``channels_last=None`` chooses: on for models without InstanceNorm layers (exported through
    :func:`optimize_for_inference`), off for models with them, whose kernel copies channels-last activations
    back to NCHW (measured slower than NCHW, in fp32 and bf16). On the CPU a TorchScript module (a model file:
    a pure function of its weights) gets a cached bf16/fp16 copy of its weights and is called one slice at a
    time; any other module (it may hold state, e.g. a wrapper counting calls) is called as given, under
    autocast for bf16.
    """
    precision = resolve_precision(precision, device)
    if channels_last is None:
        channels_last = not _has_instance_norm(module)
    scripted_cpu = device.type == "cpu" and isinstance(module, torch.jit.ScriptModule)
    # On the CPU TorchScript's profiling executor fuses nothing (no CPU fuser is on by default) but spends its
    # first two calls profiling: 130 and 90 ms against 60 and 20 ms without it, the same speed afterwards.
    optimized = not scripted_cpu
    if precision == "fp32":
        # A channels-last input is enough: convolutions follow the input's layout, so no copy is needed.
        return InferencePlan(module, device, "fp32", channels_last, "fp32", scripted_cpu, optimized)
    if scripted_cpu:
        converted = _converted_copy(module, device, _DTYPES[precision], channels_last)
        return InferencePlan(converted, device, precision, channels_last, "weights", True, optimized)
    return InferencePlan(module, device, precision, channels_last, "autocast")


# --------------------------------------------------------------------------------------------- export time

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
