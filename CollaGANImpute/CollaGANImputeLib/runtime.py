"""What runs the model: the ONNX export compiled on ONNX Runtime or OpenVINO (:func:`onnx_runner`; OpenVINO keeps
compiled models in the cache folder, :func:`cache_dir`), and what the outputs record of it (:class:`RuntimeUsed`).
The machine's CPU, threads and devices are :mod:`.hardware`; which runtime runs a model is :mod:`.runtime_choice`.

The ONNX runtimes need no torch: ``pip install 'collagan-impute[cpu]'`` imputes on the CPU without it. This module
imports neither torch nor a runtime until one is asked for.

Example:
    >>> run = onnx_runner(model, "openvino", "auto")                 # doctest: +SKIP
    >>> y = run(x)         # (B, 2N, H, W) float32 NumPy -> (B, 1, H, W) float32 NumPy
    >>> run.describe()                                               # doctest: +SKIP
    'OpenVINO 2026.4 (bf16, 2 threads)'
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np

from .errors import InputError, ModelError
from .hardware import installed, native_bf16, num_threads, package_version

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
#: Names the folder where measurements and compiled models are kept (default: the user cache folder).
CACHE_ENV = "COLLAGAN_CACHE_DIR"


def cache_dir() -> Path:
    """Where measurements and compiled models are kept: $COLLAGAN_CACHE_DIR, else the user cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "collagan-impute"


def openvino_cache() -> Optional[str]:
    """The folder where OpenVINO keeps compiled models (``CACHE_DIR``), or None where it cannot be written.

    Why: a model compiled once loads from there in a third of the time (0.07 against 0.18-0.29 s for the bundled
    model on a 2-core EPYC), every command after the first. OpenVINO checks a kept model against the file, so a
    replaced file is compiled anew; deleting the folder only costs the next compile.
    """
    folder = cache_dir() / "openvino"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(folder) if os.access(folder, os.W_OK) else None


def default_batch_size(device: Union[str, torch.device, None]) -> int:
    """Slices per model call when the caller does not choose (see :data:`DEFAULT_BATCH`)."""
    kind = getattr(device, "type", None) or str(device or "cpu").split(":")[0]
    return DEFAULT_BATCH.get(kind, 8)


def cuda_out_of_memory() -> tuple[type[BaseException], ...]:
    """torch's CUDA out-of-memory error, for an ``except`` clause; none where torch is not loaded (no CUDA then)."""
    import sys

    torch = sys.modules.get("torch")
    return (torch.cuda.OutOfMemoryError,) if torch is not None else ()



@dataclass(frozen=True)
class RuntimeUsed:
    """What ran a model pass, as the outputs' provenance records it: the runtime, the precision it actually ran
    at, the device, and the file it ran (the ONNX export for an ONNX runtime, the TorchScript file for torch).

    Example:
        >>> RuntimeUsed.of(model, "onnxruntime", "fp32", "cpu").file                   # doctest: +SKIP
        'collagan_lgg_t1n_t1c_t2f.onnx'
    """

    runtime: str
    precision: str
    device: str
    file: str
    sha256: str

    @classmethod
    def of(cls, model: LoadedModel, runtime: str, precision: str, device: Union[str, torch.device]) -> RuntimeUsed:
        if runtime == "torch":
            return cls(runtime, precision, str(device), model.path.name, model.sha256)
        return cls(runtime, precision, "cpu", model.onnx.name, model.onnx_sha256)  # type: ignore[union-attr]


@dataclass
class OnnxRunner:
    """One compiled ONNX model: ``runner(x)`` maps float32 (B, 2N, H, W) to float32 (B, 1, H, W), NumPy in and out.

    ``engines`` run one slice each; with several (one single-threaded engine per thread), the slices of a batch run
    side by side. Why: on an idle 2-core machine two single-threaded engines were 1-3 % faster than one two-threaded
    engine in fp32 and 13 % in bf16, and 20-40 % faster while another process used a core (the threads of one
    engine wait for each other at every layer); a slice's result then does not depend on the batch size either,
    which only sets how often progress and cancel are checked.
    """

    runtime: str
    precision: str
    threads: int
    engines: list[Callable[[np.ndarray], np.ndarray]]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _pool: Optional[ThreadPoolExecutor] = field(default=None, repr=False)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:  # an engine runs one slice at a time: callers on other threads wait their turn
            if len(self.engines) == 1 or x.shape[0] == 1:
                return np.concatenate([self.engines[0](x[i:i + 1]) for i in range(x.shape[0])])
            out: list[Optional[np.ndarray]] = [None] * x.shape[0]
            if self._pool is None:
                # Each engine's first call on this thread, one after the other: the runtimes' Python bindings set
                # up their NumPy interface on first use, and two threads doing that at once can deadlock.
                for engine in self.engines:
                    out[0] = engine(x[0:1])
                self._pool = ThreadPoolExecutor(len(self.engines), thread_name_prefix=f"collagan-{self.runtime}")
            todo = [i for i in range(x.shape[0]) if out[i] is None]

            def run(k: int) -> None:  # engine k takes every len(engines)-th slice; the runtimes release the GIL
                for i in todo[k::len(self.engines)]:
                    out[i] = self.engines[k](x[i:i + 1])

            for done in [self._pool.submit(run, k) for k in range(min(len(self.engines), len(todo)))]:
                done.result()  # re-raises an engine's exception here
            return np.concatenate(out)  # type: ignore[arg-type]

    def describe(self) -> str:
        name = {"onnxruntime": f"ONNX Runtime {package_version('onnxruntime')}",
                "openvino": f"OpenVINO {package_version('openvino')}"}[self.runtime]
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
def compile_onnx(path: str, digest: str, runtime: str, precision: str, threads: int, engines: int
                 ) -> OnnxRunner:
    """The compiled model of the file ``path`` (``digest`` keys the cache: a replaced file is compiled anew):
    ``engines`` engines sharing ``threads`` threads (:class:`OnnxRunner`). Cached per process, the last four;
    ``compile_onnx.cache_clear()`` frees them.

    Example:
        >>> model = load_model(bundled_model_path())                                          # doctest: +SKIP
        >>> runner = compile_onnx(str(model.onnx), model.onnx_sha256, "openvino", "fp32", 2, 2)  # doctest: +SKIP
    """
    per_engine = max(1, threads // engines)
    if runtime == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = per_engine
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        sessions = [onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
                    for _ in range(engines)]
        name = sessions[0].get_inputs()[0].name
        return OnnxRunner(runtime, precision, threads,
                          [functools.partial(_onnxruntime_run, session, name) for session in sessions])
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": per_engine * engines, "NUM_STREAMS": engines,  # one per engine
                              "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    kept = openvino_cache()
    if kept is not None:
        config["CACHE_DIR"] = kept
    compiled = openvino_core().compile_model(path, "CPU", config)
    requests = [compiled.create_infer_request() for _ in range(engines)]
    return OnnxRunner(runtime, precision, threads, [functools.partial(_openvino_run, r) for r in requests])


_OPENVINO_CORE: list = []  # the one Core, once made
_OPENVINO_CORE_LOCK = threading.Lock()


def openvino_core() -> Any:
    """The process's one OpenVINO ``Core`` (OpenVINO recommends one per application): every compiled model comes
    from it, whichever thread asks first.

    Why one: each Core's CPU plugin installs an alternate signal stack of its own and, when freed, restores the
    one it found. Plugins not freed newest first (models dropped from the cache) leave the thread's alternate
    stack pointing at freed memory, and the next handled signal (Ctrl-C, a child process's exit) then kills the
    process with a segmentation fault. One Core means one plugin, freed at exit.

    Example:
        >>> openvino_core() is openvino_core()   # doctest: +SKIP
        True
    """
    with _OPENVINO_CORE_LOCK:
        if not _OPENVINO_CORE:
            import openvino

            _OPENVINO_CORE.append(openvino.Core())
        return _OPENVINO_CORE[0]


def _onnxruntime_run(session: Any, name: str, x: np.ndarray) -> np.ndarray:
    return session.run(None, {name: x})[0]


def _openvino_run(request: Any, x: np.ndarray) -> np.ndarray:
    return np.array(request.infer([x])[0], copy=True)


def onnx_runner(model: LoadedModel, runtime: str, precision: str = "auto", engines: Optional[int] = None
                ) -> OnnxRunner:
    """The cached compiled ONNX model of ``model`` on ``runtime`` (``onnxruntime`` or ``openvino``): ``engines``
    engines (None: one single-threaded engine per thread, the fastest measured) sharing the threads."""
    if model.onnx is None:
        raise ModelError(f"Model '{model.card.name}' has no ONNX export beside {model.path.name}, which the {runtime} "
                         "runtime runs: export it again with training's export, or use --runtime torch.")
    if not installed(runtime):
        raise InputError(f"The {runtime} runtime is not installed: pip install {runtime} (or use --runtime auto).")
    precision = resolve_onnx_precision(runtime, precision)
    try:
        threads = num_threads()
        return compile_onnx(str(model.onnx), model.onnx_sha256, runtime, precision, threads,
                         max(1, min(threads, engines or threads)))
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # onnxruntime/openvino raise their own exception types for a broken graph
        detail = str(exc).strip().splitlines()
        raise ModelError(f"{model.onnx} cannot be loaded by {runtime} ({type(exc).__name__}: "
                         f"{detail[-1] if detail else ''}). Export the model again.") from exc

