"""Faster CollaGAN inference with torch: how the TorchScript model is run (precision, memory layout).

The generator is small and memory-bound in plain fp32 (benchmarks/bench_inference.py, docs/PERFORMANCE.md).
Two levers make it fast without changing what it computes beyond bf16 rounding:

* Run time (:func:`plan_inference`): on a CPU with native bf16 dot products (AVX512-BF16 or AMX) the weights
  and activations are bf16 in channels-last layout, which oneDNN runs at several times the fp32 speed; on CUDA
  the model runs under bf16 (or fp16) autocast in channels-last layout; anywhere else it stays fp32.
  ``precision="auto"`` chooses; ``"fp32"``, ``"bf16"`` and ``"fp16"`` force a choice.
* Export time (:func:`.ccnr_export.optimize_for_inference`, used by training's export): the CCNR units in a
  form that keeps channels-last layout and merges narrow convolutions; same function, ~1e-6 apart in fp32.

On the CPU a TorchScript model is called one slice at a time: the fast single-slice norm needs it, small
activations stay in cache (measured no slower than batches), and results cannot depend on the batch size.

Example:
    >>> plan = plan_inference(model.module, torch.device("cpu"))      # doctest: +SKIP
    >>> plan.describe()                                                # doctest: +SKIP
    'bf16 weights, channels-last, one slice at a time'
    >>> y = plan(x)               # (B, 2N, H, W) float32 -> (B, 1, H, W) float32 on the plan's device
"""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
import weakref
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .errors import InputError
from .hardware import native_bf16

#: Accepted values of the ``precision`` argument.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# --------------------------------------------------------------------------------------------- capabilities


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
    return native_bf16()


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
