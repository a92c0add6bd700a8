"""Exceptions and warnings of CollaGANImputeLib.

Every error says what is wrong and how to fix it, so that the CLI and the Slicer panel can show the
message as it is.
"""

from __future__ import annotations


class CollaGANError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(CollaGANError, ValueError):
    """An input volume, file or folder cannot be used (wrong dimension, empty, NaN, missing, ...)."""


class ModelError(CollaGANError):
    """A model file is not a usable CollaGAN model (not TorchScript, no metadata, too new, mismatch)."""


class OutputError(CollaGANError):
    """The outputs cannot be written (the output folder is a file or not writable, the disk is full, ...);
    nothing was written."""


class NoBundledModelError(ModelError):
    """No trained model is bundled with this installation."""


class NoSampleCaseError(CollaGANError, FileNotFoundError):
    """The bundled sample case is not installed (a partial install, or $COLLAGAN_RESOURCES points elsewhere)."""


class Cancelled(CollaGANError):
    """The user cancelled a running imputation; nothing was written."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster's time limit or cancellation) while the CLI runs: handled like Ctrl-C (the same cleanup;
    nothing of the case in progress is written)."""


class GeometryWarning(UserWarning):
    """Inputs were not on one grid and were resampled onto the reference."""


class InputCheckWarning(UserWarning):
    """The inputs are unlike the model's training data (:mod:`.input_check`): the result is unreliable."""
