"""Which runtime runs the model: torch (TorchScript; CUDA, or the CPU) or the ONNX export on ONNX Runtime or OpenVINO.

``runtime="auto"`` runs torch on a CUDA GPU and, on the CPU, the fastest runtime installed for this CPU: a short
measurement (each candidate runs a few slices of the model) made once and cached per machine, keyed by the CPU
model, its instruction sets, the packages' versions, the thread count and the model
(:func:`fastest_runtime`). The ONNX runtimes need no torch: ``pip install 'collagan-impute[cpu]'`` imputes on
the CPU without it. This module imports neither torch nor a runtime until one is asked for.

Example:
    >>> choose_runtime(model, "auto", "cpu", "auto")                 # doctest: +SKIP
    'openvino'
    >>> run = runner(model, "openvino", "auto")                      # doctest: +SKIP
    >>> y = run(x)         # (B, 2N, H, W) float32 NumPy -> (B, 1, H, W) float32 NumPy
    >>> run.describe()                                               # doctest: +SKIP
    'OpenVINO 2026.4 (bf16, 2 threads)'
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np

from .errors import InputError, ModelError

if TYPE_CHECKING:
    import torch

    from .card import LoadedModel

#: Accepted values of the ``runtime`` argument.
RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
ONNX_RUNTIMES = ("onnxruntime", "openvino")
#: Slices per batch when the caller lets us choose (``batch_size=None``). On a CPU the batch mostly sets how often
#: progress and cancel are checked (a TorchScript model runs one slice per call; the ONNX runtimes measured no
#: faster with larger batches); a GPU wants large batches to fill its cores.
DEFAULT_BATCH = {"cpu": 4, "cuda": 32}
CACHE_ENV = "COLLAGAN_CACHE_DIR"
_threads: Optional[int] = None


def default_batch_size(device: Union[str, torch.device, None]) -> int:
    """Slices per model call when the caller does not choose (see :data:`DEFAULT_BATCH`)."""
    kind = getattr(device, "type", None) or str(device or "cpu").split(":")[0]
    return DEFAULT_BATCH.get(kind, 8)


def cuda_out_of_memory() -> tuple[type[BaseException], ...]:
    """torch's CUDA out-of-memory error, for an ``except`` clause; none where torch is not loaded (no CUDA then)."""
    import sys

    torch = sys.modules.get("torch")
    return (torch.cuda.OutOfMemoryError,) if torch is not None else ()


def set_num_threads(threads: int) -> None:
    """CPU threads for every runtime (``--threads``): torch's where torch is installed, and the ONNX runtimes'."""
    global _threads
    _threads = int(threads)
    if importlib.util.find_spec("torch") is not None:
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


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


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


def resolve_device(device: Union[str, torch.device, None] = "auto") -> Union[torch.device, str]:
    """``auto`` picks CUDA when a GPU is usable, else CPU; ``cuda`` without a GPU is refused clearly.

    Without torch installed only the CPU is usable: ``auto`` and ``cpu`` give the string ``"cpu"``.
    """
    if not installed("torch"):
        if device is None or str(device) in ("auto", "cpu"):
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


def describe_device(device: Union[torch.device, str]) -> str:
    """What will run the model, for the user: GPU name and memory, or the CPU thread count."""
    if str(device) == "cpu" and not installed("torch"):
        return f"CPU ({num_threads()} threads)"
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"CUDA GPU {props.name} ({props.total_memory / 2**30:.1f} GiB)"
    return f"CPU ({torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------------------------------- runners


@dataclass
class OnnxRunner:
    """One compiled ONNX model: ``runner(x)`` maps float32 (B, 2N, H, W) to float32 (B, 1, H, W), NumPy in and out,
    one slice at a time."""

    runtime: str
    precision: str
    threads: int
    call: Callable[[np.ndarray], np.ndarray]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # One slice per call, as the torch CPU path: OpenVINO's fp32 kernels split a batch differently (outputs
        # ~1e-3 apart), and results must not depend on the batch size (which only sets progress and cancel steps).
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.concatenate([self.call(x[i:i + 1]) for i in range(x.shape[0])])

    def describe(self) -> str:
        name = {"onnxruntime": f"ONNX Runtime {_version('onnxruntime')}",
                "openvino": f"OpenVINO {_version('openvino')}"}[self.runtime]
        return f"{name} ({self.precision}, {self.threads} thread{'' if self.threads == 1 else 's'})"


def resolve_onnx_precision(runtime: str, precision: str) -> str:
    """The precision an ONNX runtime runs at: ONNX Runtime's CPU kernels are fp32 only; OpenVINO runs bf16 where the
    CPU has native bf16 (``auto``, as the torch path does) or when asked."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise InputError(f"Unknown precision '{precision}'; use one of auto, fp32, bf16, fp16.")
    if precision == "fp16" or (runtime == "onnxruntime" and precision == "bf16"):
        raise InputError(f"The {runtime} runtime does not run {precision} on the CPU: use --precision fp32 or auto, "
                         "or --runtime torch.")
    if runtime == "openvino" and (precision == "bf16" or (precision == "auto" and native_bf16())):
        return "bf16"
    return "fp32"


@functools.lru_cache(maxsize=4)
def _compiled(path: str, digest: str, runtime: str, precision: str, threads: int) -> OnnxRunner:
    """The compiled model of the file ``path`` (``digest`` keys the cache: a replaced file is compiled anew)."""
    if runtime == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return OnnxRunner(runtime, precision, threads, lambda x: session.run(None, {name: x})[0])
    import openvino

    compiled = openvino.Core().compile_model(path, "CPU", {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"})
    request = compiled.create_infer_request()
    return OnnxRunner(runtime, precision, threads, lambda x: np.array(request.infer([x])[0], copy=True))


def onnx_runner(model: LoadedModel, runtime: str, precision: str = "auto") -> OnnxRunner:
    """The cached compiled ONNX model of ``model`` on ``runtime`` (``onnxruntime`` or ``openvino``)."""
    if model.onnx is None:
        raise ModelError(f"Model '{model.card.name}' has no ONNX export beside {model.path.name}, which the {runtime} "
                         "runtime runs: export it again with training's export, or use --runtime torch.")
    if not installed(runtime):
        raise InputError(f"The {runtime} runtime is not installed: pip install {runtime} (or use --runtime auto).")
    precision = resolve_onnx_precision(runtime, precision)
    try:
        return _compiled(str(model.onnx), model.onnx_sha256, runtime, precision, num_threads())
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # onnxruntime/openvino raise their own exception types for a broken graph
        detail = str(exc).strip().splitlines()
        raise ModelError(f"{model.onnx} cannot be loaded by {runtime} ({type(exc).__name__}: "
                         f"{detail[-1] if detail else ''}). Export the model again.") from exc


# ---------------------------------------------------------------------------------------------------- choice


def torch_usable(model: LoadedModel) -> bool:
    return model.module is not None and installed("torch")


def wants_cuda(device: Union[str, torch.device, None]) -> bool:
    """Whether ``device`` names CUDA, or is ``auto`` with a usable GPU (asked of torch only where it is installed)."""
    text = str(device or "auto")
    if text.startswith("cuda"):
        return True
    if text == "auto" and installed("torch"):
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
        if model.module is None:
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


def cache_dir() -> Path:
    """Where measurements are kept: $COLLAGAN_CACHE_DIR, else the user cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "collagan-impute"


def machine_key(model: LoadedModel, candidates: list[str], precision: str) -> str:
    """What a measurement depends on: CPU model and instruction sets, package versions, threads, model, precision."""
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "sse4", "f16c", "bf16", "asimd",
                                                             "sve", "neon")))
    parts = [cpu_name(), platform.machine(), flags, {p: _version(p) for p in ("torch", "onnxruntime", "openvino")},
             num_threads(), model.card.weights_sha256 or model.sha256, model.onnx_sha256, candidates, precision]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


def _timing_input(model: LoadedModel) -> np.ndarray:
    n, (height, width) = model.card.n_contrasts, model.card.in_plane_size
    x = np.zeros((1, 2 * n, height, width), dtype=np.float32)
    x[0, 1:n] = np.random.default_rng(0).random((n - 1, height, width), dtype=np.float32)
    x[0, n] = 1  # the first contrast is the target
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
            best[name] = min(best[name], time.perf_counter() - start)
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
        from .io import OutputSet

        path.parent.mkdir(parents=True, exist_ok=True)
        with OutputSet() as outputs:
            outputs.stage(path, lambda tmp: Path(tmp).write_text(json.dumps(known, indent=2)))
            outputs.commit()
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
