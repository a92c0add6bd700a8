"""What this machine offers a model: the CPU (its name, instruction sets, threads), torch's devices (CUDA when a GPU
is usable, else the CPU) and the process's peak memory. Imports torch only where a question needs it.

Example:
    >>> native_bf16()            # an AVX2-only CPU                                   # doctest: +SKIP
    False
    >>> str(resolve_device("auto"))                                                 # doctest: +SKIP
    'cpu'
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from .errors import InputError

if TYPE_CHECKING:
    import torch

_threads: Optional[int] = None
#: Where Linux shows a loaded NVIDIA driver: without it no CUDA GPU is usable (:func:`nvidia_driver_loaded`).
NVIDIA_DRIVER_VERSION = Path("/proc/driver/nvidia/version")
DEVICE_FILES = Path("/dev")



def set_num_threads(threads: int) -> None:
    """CPU threads for every runtime (``--threads``): torch's where torch is installed, and the ONNX runtimes'."""
    global _threads
    _threads = int(threads)
    if "torch" in _loaded_modules():  # else torch gets them when a model is loaded for it (torch_threads)
        torch_threads()


def torch_threads() -> None:
    """Give torch the threads of :func:`set_num_threads`, if set: called where torch is imported to run a model, so
    that ``--threads`` on an ONNX runtime does not import torch."""
    if _threads is not None:
        import torch

        torch.set_num_threads(_threads)


def num_threads() -> int:
    """The CPU threads a runtime uses: :func:`set_num_threads`'s, else torch's choice, else the usable cores."""
    if _threads is not None:
        return _threads
    if "torch" in _loaded_modules():
        import torch

        return torch.get_num_threads()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _loaded_modules() -> set[str]:
    import sys

    return {name for name, module in sys.modules.items() if module is not None and "." not in name}


def installed(name: str) -> bool:
    """Whether the runtime ``name`` can be imported here."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules
        return False


@functools.cache  # fixed for the process; asked on every imputation call
def package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


@functools.lru_cache(maxsize=1)  # the CPU does not change while the process runs
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.lru_cache(maxsize=1)  # the CPU does not change while the process runs
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (x86 AVX512-BF16 or AMX; Arm BF16): elsewhere bf16 is emulated,
    slower than fp32, so ``auto`` precision stays fp32 there."""
    flags = cpu_flags()
    return bool({"avx512_bf16", "amx_bf16"} & flags) or (platform.machine().lower() in ("aarch64", "arm64")
                                                        and "bf16" in flags)


def nvidia_driver_loaded() -> bool:
    """Whether a CUDA GPU may be usable here, known without importing torch: on Linux the NVIDIA driver must be
    loaded (``/proc/driver/nvidia/version``, ``/dev/nvidia*``); elsewhere only torch can tell (True: ask it).

    Example:
        >>> nvidia_driver_loaded()        # a Linux machine without an NVIDIA GPU     # doctest: +SKIP
        False
    """
    if platform.system() != "Linux":
        return True
    return NVIDIA_DRIVER_VERSION.exists() or any(DEVICE_FILES.glob("nvidia*"))


def resolve_device(device: Union[str, torch.device, None] = "auto") -> Union[torch.device, str]:
    """``auto`` picks CUDA when a GPU is usable, else CPU; ``cuda`` without a GPU is refused clearly.

    Without torch installed only the CPU is usable: ``auto`` and ``cpu`` give the string ``"cpu"``; so do ``cpu``,
    and ``auto`` where no NVIDIA driver is loaded (:func:`nvidia_driver_loaded`), while torch is not imported yet:
    that spares importing it (over a second) where an ONNX runtime runs the model.

    Example:
        >>> resolve_device("cpu")          # in a process that has not imported torch   # doctest: +SKIP
        'cpu'
    """
    if str(device) == "cpu" or ((device is None or str(device) == "auto") and not nvidia_driver_loaded()):
        # torch's device where torch is loaded already (its callers want one); else the string, sparing the import
        return _torch_cpu() if "torch" in _loaded_modules() else "cpu"
    if not installed("torch"):
        if device is None or str(device) == "auto":  # "cpu" was answered above
            return "cpu"
        raise InputError(f"Device '{device}' needs torch, which is not installed: pip install "
                         "'collagan-impute[torch]' (with CUDA for a GPU), or use device 'cpu'.")
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InputError(f"'{device}' is not a device: use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no CUDA GPU is usable here (is the CUDA build of torch "
                         "installed and the driver loaded?). Use device 'cpu' or 'auto'.")
    return device


def _torch_cpu() -> torch.device:
    import torch

    return torch.device("cpu")


def describe_device(device: Union[torch.device, str]) -> str:
    """What will run the model, for the user: GPU name and memory, or the CPU thread count."""
    if isinstance(device, str) and device == "cpu":  # resolve_device's string: torch is not needed to say it
        return f"CPU ({num_threads()} threads)"
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"CUDA GPU {props.name} ({props.total_memory / 2**30:.1f} GiB)"
    return f"CPU ({torch.get_num_threads()} threads)"


def peak_memory_mb() -> Optional[float]:
    """This process's peak resident memory in MiB since it started (or since the peak was reset through
    ``/proc/self/clear_refs``): Linux's own high-water mark, not ``ru_maxrss``, which Linux carries over ``exec`` from
    the process that started this one; macOS's ``ru_maxrss`` (bytes); None elsewhere.

    Example:
        >>> peak_memory_mb() > 0   # doctest: +SKIP
        True
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    if platform.system() == "Darwin":
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return None
