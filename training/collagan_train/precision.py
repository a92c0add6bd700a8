"""The precision training runs at: bf16 autocast on CUDA and on CPUs where torch multiplies bf16 natively, fp32
elsewhere (a CPU without native bf16 emulates it: a training step 17x slower than fp32 with AVX2 alone).

Example:
    >>> uses_bf16(TrainConfig(bf16=None), torch.device("cuda"))          # doctest: +SKIP
    True
"""

from __future__ import annotations

import torch
from CollaGANImputeLib.hardware import native_bf16

from .config import TrainConfig


def torch_native_bf16() -> bool:
    """Whether torch multiplies bf16 natively here: the CPU can, and torch runs its AVX-512 (or newer) kernels,
    not the AVX2 ones that ``ATEN_CPU_CAPABILITY=avx2`` selects."""
    return native_bf16() and torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2")


def uses_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether training with ``cfg`` on ``device`` runs bf16 autocast: ``cfg.bf16`` where set, else on CUDA and on
    CPUs where torch multiplies bf16 natively (a CPU without emulates it, 17x slower than fp32 with AVX2 alone)."""
    return cfg.bf16 if cfg.bf16 is not None else (device.type == "cuda" or torch_native_bf16())
