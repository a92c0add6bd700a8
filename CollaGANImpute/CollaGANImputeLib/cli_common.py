"""What every ``collagan-impute`` command shares: exit codes, loading --model, the progress bar and the argument
types (a bad value is a usage error, exit 2, before anything is loaded).

Example:
    >>> _positive("4")
    4
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from .errors import InputError

if TYPE_CHECKING:
    from .card import LoadedModel

EXIT_OK, EXIT_FAILURE, EXIT_INPUT, EXIT_MODEL, EXIT_NO_MODEL, EXIT_CANCELLED = 0, 1, 2, 3, 4, 130
EXIT_TERMINATED = 128 + 15  # SIGTERM, as a shell reports a process it terminated
RUNTIME_CHOICES = ("auto", "torch", "onnxruntime", "openvino")  # runtime.RUNTIMES, without importing it for --help
RUNTIME_HELP = ("what runs the model: auto = torch on CUDA, on the CPU the fastest installed runtime (measured once "
                "per machine); torch, onnxruntime or openvino (the model's ONNX export, no torch needed)")
REGISTER_HELP = ("rigidly co-register the inputs to the reference first (mutual information; for a patient who "
                 "moved between scans; about 10 s per input); the sidecar records each transform")


def _load(model: Optional[str]) -> LoadedModel:
    """--model is a file path or a bundled model's name; absent means the default bundled model."""
    from .contract import load_model
    from .models import default_model
    from .resources import bundled_models

    if model is None:
        return default_model()
    for bundled in bundled_models():
        if bundled.name == model:
            return bundled.load()
    return load_model(model)


def _announce_runtime(model: LoadedModel, args: argparse.Namespace) -> None:
    """Say which runtime will run the model (``auto`` measures the CPU's candidates once, then remembers)."""
    from .runtime_choice import describe_runtime

    print(describe_runtime(model, args.runtime, args.device, args.precision), file=sys.stderr)


class _Progress:
    """tqdm bar fed by the core's (done, total) callback."""

    def __init__(self, description: str) -> None:
        self.bar = None
        self.description = description

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.description, unit="slice", file=sys.stderr)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _parse_inputs(pairs: Sequence[str]) -> dict[str, Path]:
    inputs = {}
    for pair in pairs:
        contrast, sep, path = pair.partition("=")
        if not sep or not contrast or not path:
            raise InputError(f"--input expects CONTRAST=PATH (e.g. t1n=case-t1n.nii.gz), got '{pair}'.")
        if contrast in inputs:
            raise InputError(f"--input {contrast} is given twice ({inputs[contrast]} and {path}); give each contrast "
                             "once.")
        inputs[contrast] = Path(path)
    return inputs


def _device(value: str) -> str:
    """argparse type of --device: refused as a usage error (exit 2) before anything is loaded."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"'{value}' is not a device: use auto, cpu, cuda or cuda:N")
    return value


def _whole_number(minimum: int, refusal: str) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``, else a usage error ``'<value>' <refusal>``."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = minimum - 1
        if number < minimum:
            raise argparse.ArgumentTypeError(f"'{value}' {refusal}")
        return number

    return parse


_positive = _whole_number(1, "is not a positive whole number")  # --threads, --batch-size
_non_negative_int = _whole_number(0, "is not a whole number of seconds (0 or more)")  # --idle-timeout
