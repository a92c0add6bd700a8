"""The ONNX export of a model: beside the TorchScript file (``model.onnx`` next to ``model.pt``), its card in the
ONNX file's ``metadata_props``. The CPU runtimes (:mod:`.runtime`) run it, so that imputing on a CPU needs no
torch; the TorchScript file stays the reference and runs on CUDA.

Example:
    >>> onnx_path_for("Resources/Models/model.pt").name
    'model.onnx'
    >>> save_onnx(generator, load_model("model.pt").card, "model.onnx", torch.rand(2, 6, 256, 256))  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import atomic_path
from .card import METADATA_FILE, ModelCard, PathLike, sha256_of
from .errors import ModelError

if TYPE_CHECKING:  # torch is needed to export only
    import torch

#: The key of the card in an ONNX file's ``metadata_props``.
ONNX_METADATA_KEY = METADATA_FILE
ONNX_OPSET = 17


def onnx_path_for(path: PathLike) -> Path:
    """Where the ONNX export of the TorchScript model ``path`` lies: beside it, suffix ``.onnx``."""
    return Path(path).with_suffix(".onnx")


def save_onnx(model: torch.nn.Module, card: ModelCard, path: PathLike, example_input: torch.Tensor) -> str:
    """Export the eager ``model`` to ONNX (opset :data:`ONNX_OPSET`, any batch size) with ``card`` in its
    ``metadata_props``, atomically; returns the file's SHA-256. Batch, height and width are free.

    Give the card of the TorchScript file of the same weights (``load_model(pt).card``): loading checks that both
    files carry the same card. ``example_input`` needs a batch of two or more, so that a unit that treats a single
    slice apart (:class:`.ccnr_export.FastCCNR`) is traced on its batch form.

    Example:
        >>> card = load_model("model.pt").card                                          # doctest: +SKIP
        >>> save_onnx(generator, card, "model.onnx", torch.rand(2, 6, 256, 256))        # doctest: +SKIP
    """
    import onnx
    import torch

    if example_input.shape[0] < 2:
        raise ModelError("save_onnx needs an example batch of at least two slices (the batch form is exported).")

    with atomic_path(Path(path), suffix=".onnx") as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation note
        # The TorchScript-based exporter writes opset 17 as asked (the dynamo one moves to 18) in a second.
        torch.onnx.export(model.eval(), (example_input,), str(tmp), input_names=["x"], output_names=["y"],
                          opset_version=ONNX_OPSET, dynamo=False,
                          dynamic_axes={axis: {0: "batch", 2: "height", 3: "width"} for axis in ("x", "y")})
        proto = onnx.load(str(tmp))
        _set_card(proto, card)
        onnx.save(proto, str(tmp))
    return sha256_of(path)


def copy_onnx_with_card(source: PathLike, out: PathLike, card: ModelCard) -> str:
    """Write ``out`` (atomically; it may be ``source``): the ONNX file ``source`` with ``card`` in its metadata in
    place of its own, the graph and weights as they are; returns its SHA-256.

    Example:
        >>> copy_onnx_with_card("draft.onnx", "model.onnx", read_card("model.pt"))       # doctest: +SKIP
    """
    import onnx

    proto = onnx.load(str(source))
    _set_card(proto, card)
    with atomic_path(Path(out), suffix=".onnx") as tmp:
        onnx.save(proto, str(tmp))
    return sha256_of(out)


def _set_card(proto, card: ModelCard) -> None:
    """Put ``card`` in the ONNX model ``proto``'s metadata, replacing a card already there."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != ONNX_METADATA_KEY]
    del proto.metadata_props[:]
    for key, value in [*kept, (ONNX_METADATA_KEY, card.to_json())]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def onnx_card_text(path: Path) -> str:
    """The card JSON in an ONNX file's metadata, read with ``onnx`` where installed, else ONNX Runtime."""
    try:
        import onnx
    except ImportError:
        onnx = None
    try:
        if onnx is not None:
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        else:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            props = dict(session.get_modelmeta().custom_metadata_map)
    except ImportError as exc:
        raise ModelError(f"{path} is an ONNX model: reading it needs onnxruntime (pip install "
                         "'collagan-impute[cpu]').") from exc
    except Exception as exc:  # protobuf DecodeError, onnxruntime's Fail/InvalidGraph
        raise ModelError(f"{path} is not an ONNX model file ({type(exc).__name__}). Give the .onnx file written "
                         "by training's export beside the .pt model.") from exc
    if ONNX_METADATA_KEY not in props:
        raise ModelError(f"{path} is an ONNX file but not a CollaGAN model: its metadata has no {METADATA_FILE}. "
                         "Export it with CollaGANImputeLib.contract.save_onnx.")
    return props[ONNX_METADATA_KEY]


def onnx_readable() -> bool:
    """Whether an ONNX file's card can be read here (``onnx`` or ``onnxruntime`` installed)."""
    import importlib.util

    return any(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))

