"""Which runtime runs the model: torch (TorchScript; CUDA, or the CPU) or the ONNX export on ONNX Runtime or
OpenVINO (:mod:`.runtime`).

``runtime="auto"`` runs torch on a CUDA GPU and, on the CPU, the fastest runtime installed for this CPU: a short
measurement (each candidate runs a few slices of the model) made once and cached per machine, keyed by the CPU
model, its instruction sets, the packages' versions, the thread count and the model (:func:`fastest_runtime`).

Example:
    >>> choose_runtime(model, "auto", "cpu", "auto")                 # doctest: +SKIP
    'openvino'
    >>> describe_runtime(model, "auto", "cpu")                       # doctest: +SKIP
    'runtime openvino (chosen): OpenVINO 2026.4 (bf16, 2 threads)'
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from typing import TYPE_CHECKING, Any, Callable, Union

import numpy as np

from .atomic import write_text_atomic
from .errors import InputError, ModelError
from .hardware import (
    cpu_flags,
    cpu_name,
    describe_device,
    installed,
    num_threads,
    nvidia_driver_loaded,
    package_version,
    resolve_device,
)
from .runtime import ONNX_RUNTIMES, RUNTIMES, cache_dir, onnx_runner, resolve_onnx_precision

if TYPE_CHECKING:
    import torch

    from .card import LoadedModel


def torch_usable(model: LoadedModel) -> bool:
    """Whether torch can run ``model``: torch installed and a TorchScript module to load (neither is loaded here)."""
    return model.has_module and installed("torch")


def wants_cuda(device: Union[str, torch.device, None]) -> bool:
    """Whether ``device`` names CUDA, or is ``auto`` with a usable GPU (asked of torch only where it is installed and
    an NVIDIA driver is loaded: :func:`.hardware.nvidia_driver_loaded`)."""
    text = str(device or "auto")
    if text.startswith("cuda"):
        return True
    if text == "auto" and installed("torch") and nvidia_driver_loaded():
        import torch

        return torch.cuda.is_available()
    return False


def choose_runtime(model: LoadedModel, runtime: str = "auto", device: Union[str, torch.device, None] = "auto",
                   precision: str = "auto") -> str:
    """The runtime that will run ``model``: ``runtime`` itself when named (checked), else (``auto``) torch on CUDA and
    the fastest installed runtime on the CPU (:func:`fastest_runtime`)."""
    if runtime not in RUNTIMES:
        raise InputError(f"Unknown runtime '{runtime}'; use one of {', '.join(RUNTIMES)}.")
    cuda = wants_cuda(device)
    if runtime == "torch" or (runtime == "auto" and cuda):
        if not installed("torch"):
            raise InputError("The torch runtime (and CUDA) needs torch: pip install 'collagan-impute[torch]', or use "
                             "--runtime auto on the CPU.")
        if not model.has_module:
            raise ModelError(f"{model.path} was loaded without its TorchScript module; load it again with torch.")
        return "torch"
    if runtime in ONNX_RUNTIMES:
        if cuda:
            raise InputError(f"The {runtime} runtime runs on the CPU: use --device cpu, or --runtime torch for CUDA.")
        resolve_onnx_precision(runtime, precision)  # refuses a precision it does not run
        return runtime
    candidates = [r for r in ONNX_RUNTIMES if model.onnx is not None and installed(r)]
    if precision in ("bf16", "fp16"):  # only those that run the asked precision
        candidates = [r for r in candidates if r == "openvino" and precision == "bf16"]
    if torch_usable(model):
        candidates.insert(0, "torch")
    if not candidates:
        if model.onnx is None:
            raise ModelError(f"Model '{model.card.name}' has no ONNX export and torch is not installed: install torch "
                             "(pip install 'collagan-impute[torch]') or use a model with its .onnx file beside it.")
        raise InputError("No CPU runtime is installed for this model: pip install 'collagan-impute[cpu]' "
                         "(ONNX Runtime) or torch.")
    if len(candidates) == 1:
        return candidates[0]
    return fastest_runtime(model, candidates, precision)


def machine_key(model: LoadedModel, candidates: list[str], precision: str) -> str:
    """What a measurement depends on: CPU model and instruction sets, package versions, threads, model, precision."""
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "sse4", "f16c", "bf16", "asimd",
                                                             "sve", "neon")))
    versions = {p: package_version(p) for p in ("torch", "onnxruntime", "openvino")}
    parts = [MEASUREMENT, cpu_name(), platform.machine(), flags, versions,
             num_threads(), model.card.weights_sha256 or model.sha256, model.onnx_sha256, candidates, precision]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


#: What :func:`measure` times; part of the cache key, so that a changed measurement is made anew.
MEASUREMENT = "best of 5 rounds, a batch of min(8, max(2, threads)) slices"


def _timing_input(model: LoadedModel) -> np.ndarray:
    """A batch as imputation gives it: one slice per thread at least, since the ONNX runtimes run the slices of a
    batch side by side (:class:`.runtime.OnnxRunner`) and a single slice would leave threads idle."""
    n, (height, width) = model.card.n_contrasts, model.card.in_plane_size
    batch = min(8, max(2, num_threads()))
    x = np.zeros((batch, 2 * n, height, width), dtype=np.float32)
    x[:, 1:n] = np.random.default_rng(0).random((batch, n - 1, height, width), dtype=np.float32)
    x[:, n] = 1  # the first contrast is the target
    return x


def _torch_runner(model: LoadedModel, precision: str) -> Callable[[np.ndarray], Any]:
    import torch

    from .acceleration import plan_inference

    plan = plan_inference(model.module, torch.device("cpu"), precision)

    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return plan(torch.from_numpy(x))

    return run


def _runner_for_timing(model: LoadedModel, name: str, precision: str) -> Callable[[np.ndarray], Any]:
    return _torch_runner(model, precision) if name == "torch" else onnx_runner(model, name, precision)


def measure(model: LoadedModel, runtimes: list[str], precision: str = "auto", rounds: int = 5) -> dict[str, float]:
    """Seconds per 256x256 slice of each of ``runtimes`` on this CPU: after two warm-up calls each, ``rounds``
    rounds that time every runtime once in turn, the best of each kept (another process slowing one round slows
    every runtime alike, and the best time is the least disturbed). A runtime that fails is left out."""
    x = _timing_input(model)
    if "torch" in runtimes:
        model.module  # noqa: B018  (loads it and checks its weights: a damaged file is refused, not passed over)
    runners = {}
    for name in runtimes:
        try:
            run = _runner_for_timing(model, name, precision)
            run(x)
            run(x)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception:  # a runtime that fails here is not chosen; asked for by name it says why
            continue
        runners[name] = run
    best = {name: float("inf") for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run(x)
            best[name] = min(best[name], (time.perf_counter() - start) / len(x))
    return best


def fastest_runtime(model: LoadedModel, candidates: list[str], precision: str = "auto") -> str:
    """The fastest of ``candidates`` on this CPU, measured once (:func:`measure`, a few seconds) and cached in
    :func:`cache_dir`."""
    key = machine_key(model, candidates, precision)
    path = cache_dir() / "runtimes.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), dict) and known[key].get("fastest") in candidates:
        return known[key]["fastest"]
    timings = measure(model, candidates, precision)
    if not timings:
        return candidates[0]
    fastest = min(timings, key=timings.get)
    known = known if isinstance(known, dict) else {}
    known[key] = {"fastest": fastest, "ms_per_slice": {k: round(v * 1000, 1) for k, v in timings.items()},
                  "cpu": cpu_name(), "threads": num_threads()}
    try:
        write_text_atomic(path, json.dumps(known, indent=2))
    except OSError:
        pass  # a read-only home: measured again next time
    return fastest


def describe_runtime(model: LoadedModel, runtime: str, device: Union[str, torch.device, None] = "auto",
                     precision: str = "auto") -> str:
    """What will run the model, for the user, e.g. ``runtime onnxruntime: ONNX Runtime 1.32 (fp32, 2 threads)``."""
    name = choose_runtime(model, runtime, device, precision)
    how = "chosen" if runtime == "auto" else "asked for"
    if name == "torch":
        return f"runtime torch ({how}): {describe_device(resolve_device(device))}"
    return f"runtime {name} ({how}): {onnx_runner(model, name, precision).describe()}"
