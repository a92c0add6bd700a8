"""Where a cohort run's network starts (``finetune --from``): a bundled model's training checkpoint, a training
checkpoint, or a model file (its merged inference units split back into the training layout), grown to the
cohort's contrasts.

A contrast the source lacks gets a new input channel and a new target plane in the first convolution (model.py:
input = N contrasts, then N one-hot target planes) and a new per-pixel coefficient: the input channel and
coefficient start at zero, so the known imputations start exactly where the source model is; the target plane
starts as the mean of the known targets' planes (an "average target" to move away from, rather than no target at
all). The discriminator's classifier grows the same way.

Example:
    >>> checkpoint, state = source_checkpoint("collagan-lgg-t1n-t1c-t2f")             # doctest: +SKIP
    >>> weights = expand_generator(state["G"], state["config"]["contrasts"],
    ...                            ["t1n", "t1c", "t2w", "t2f"])                        # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
from CollaGANImputeLib.contract import load_model
from CollaGANImputeLib.errors import InputError

from .cases import REPO_ROOT
from .config import TrainConfig, read_recipe
from .run_records import training_state

#: Bundled model name -> the training checkpoint of its network (the U-Net weights of the bundled file, which blends
#: them with a voxel regression fitted on its own training data: a new cohort fine-tunes the network alone).
BUNDLED_CHECKPOINTS = {"collagan-lgg-t1n-t1c-t2f": "training/checkpoints/lgg_v6_mean_g.pt"}
#: Bundled model name -> a discriminator trained against its (fixed) generator, where the adversarial or
#: classification loss is switched on (recipe lgg_discriminator).
BUNDLED_DISCRIMINATORS = {"collagan-lgg-t1n-t1c-t2f": "training/checkpoints/lgg_v6_d.pt"}
#: The first convolutions of the generator read the (2N)-channel model input.
FIRST_CONVS = ("encoders.0.0.conv1.weight", "encoders.0.0.conv3.weight")


def expand_generator(weights: Dict[str, torch.Tensor], old: Sequence[str], new: Sequence[str]
                     ) -> Dict[str, torch.Tensor]:
    """A generator state dict for contrasts ``new`` from one for ``old``: the layers that read the contrast
    layout are re-indexed (known contrasts keep their weights, new ones get zero input weights and the mean target
    plane); every other layer is copied.

    Example:
        >>> from training.collagan_train.model import Generator
        >>> g = Generator(3, base=4, levels=3, input_coefficients=True)
        >>> big = expand_generator(g.state_dict(), ["t1n", "t1c", "t2f"], ["t1n", "t1c", "t2w", "t2f"])
        >>> Generator(4, base=4, levels=3, input_coefficients=True).load_state_dict(big)
        <All keys matched successfully>
    """
    if any(key.startswith("prior.") for key in weights):
        raise InputError("A generator with a voxel-regression prior cannot take new contrasts; fine-tune from a "
                         "model without one.")
    n_old, n_new = len(old), len(new)
    kept = [(old.index(c), new.index(c)) for c in new if c in old]
    added = [new.index(c) for c in new if c not in old]
    out = dict(weights)
    for key in FIRST_CONVS:
        w = weights[key]
        grown = w.new_zeros((w.shape[0], 2 * n_new, *w.shape[2:]))
        for i, j in kept:
            grown[:, j] = w[:, i]
            grown[:, n_new + j] = w[:, n_old + i]
        for j in added:
            grown[:, n_new + j] = w[:, n_old:].mean(dim=1)
        out[key] = grown
    for key in ("coef.weight", "coef.bias"):
        if key in weights:
            w = weights[key]
            grown = w.new_zeros((n_new, *w.shape[1:]))
            for i, j in kept:
                grown[j] = w[i]
            out[key] = grown
    return out


def expand_discriminator(weights: Dict[str, torch.Tensor], old: Sequence[str], new: Sequence[str]
                         ) -> Dict[str, torch.Tensor]:
    """A discriminator state dict for contrasts ``new`` from one for ``old``: the classifier's rows re-indexed
    (an added contrast starts from the mean row); the contrast-blind layers copied.

    Example:
        >>> from training.collagan_train.model import Discriminator
        >>> four = ["t1n", "t1c", "t2w", "t2f"]
        >>> big = expand_discriminator(Discriminator(3).state_dict(), ["t1n", "t1c", "t2f"], four)
        >>> Discriminator(4).load_state_dict(big)
        <All keys matched successfully>
    """
    out = dict(weights)
    for key in ("clsf_head.weight", "clsf_head.bias"):
        w = weights[key]
        out[key] = torch.stack([w[old.index(c)] if c in old else w.mean(dim=0) for c in new])
    return out


def starting_discriminator(source: str, cfg: TrainConfig, old: Sequence[str]) -> Optional[Dict[str, torch.Tensor]]:
    """The shipped discriminator of ``source`` for ``cfg``'s contrasts, where ``cfg`` trains one (else None).

    Example:
        >>> starting_discriminator("collagan-lgg-t1n-t1c-t2f", cfg, ["t1n", "t1c", "t2f"])  # doctest: +SKIP
    """
    if not (cfg.w_gan > 0 or cfg.w_g_clsf > 0 or cfg.w_d_clsf > 0) or source not in BUNDLED_DISCRIMINATORS:
        return None
    state = torch.load(REPO_ROOT / BUNDLED_DISCRIMINATORS[source], map_location="cpu", weights_only=False)
    return expand_discriminator(state["D"], old, cfg.contrasts)


def source_checkpoint(source: str) -> Tuple[str, dict]:
    """(the checkpoint's path as given or bundled, a training state with ``G`` and ``config``) of ``--from``: a
    bundled model's name, a training checkpoint file (``OUT/run/best.pt``) or a model file (``OUT/model.pt``).

    Example:
        >>> path, state = source_checkpoint("runs/openms/model.pt")   # doctest: +SKIP
        >>> path, state["config"]["contrasts"]                       # doctest: +SKIP
        ('runs/openms/model.pt', ['t1n', 't1c', 't2w', 't2f'])
    """
    if source in BUNDLED_CHECKPOINTS:
        path = BUNDLED_CHECKPOINTS[source]
        return path, torch.load(REPO_ROOT / path, map_location="cpu", weights_only=False)
    file = Path(source).expanduser()
    if not file.is_file():
        raise InputError(f"--from {source}: no such bundled model or file; give one of "
                         f"{sorted(BUNDLED_CHECKPOINTS)}, a model file (model.pt) or a training checkpoint.")
    state = training_state(file)  # None for a TorchScript archive (a model file)
    if state is not None and "G" in state and "config" in state:
        return str(file), state
    return str(file), model_file_state(file)


def model_file_state(path: Path) -> dict:
    """A training state from a model file: the generator's weights (the merged inference units split back into
    the training layout; of a model blended with a voxel regression, the network alone) and, for settings the file
    does not record, the lgg recipe's last stage.

    Example:
        >>> sorted(model_file_state(Path("runs/openms/model.pt")))   # doctest: +SKIP
        ['G', 'config']
    """
    try:
        model = load_model(path)
    except Exception as exc:
        raise InputError(f"--from {path}: neither a model file nor a training checkpoint ({exc}).") from None
    arch = model.card.architecture
    blended = "unet_share" in arch  # a network blended with a polynomial: fine-tuning takes the network alone
    if not {"base_channels", "levels"} <= set(arch) or (arch.get("voxel_prior") and not blended):
        raise InputError(f"--from {path}: {model.card.name} is not a CollaGAN generator this can train further "
                         "(no U-Net architecture on its card, or a voxel-regression prior).")
    weights = {k: v for k, v in unmerge_units(model.module.state_dict()).items()
               if not (blended and (k == "mix" or k.startswith("prior.")))}
    config = {**read_recipe("lgg").final, "contrasts": list(model.card.contrasts), "g_base": arch["base_channels"],
              "g_levels": arch["levels"], "g_input_coefficients": bool(arch.get("input_coefficients")),
              "head_only_loss": model.card.outside_head == "zero"}
    return {"G": weights, "config": config}


def unmerge_units(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Generator weights in the training layout from an exported model's: each CCNR unit the export merged into one
    3x3 convolution (its 1x1 branch the first half of the channels, centre tap) or kept as two, with its norm as
    ``norm_weight``/``norm_bias`` (``CollaGANImputeLib.acceleration.fast_ccnr``), split back.

    Example:
        >>> weights = unmerge_units(load_model("model.pt").module.state_dict())   # doctest: +SKIP
        >>> Generator(3, base=64, levels=5, input_coefficients=True).load_state_dict(weights)  # doctest: +SKIP
    """
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        unit, _, name = key.rpartition(".")
        if name in ("norm_weight", "norm_bias"):
            out[f"{unit}.norm.{name[5:]}"] = value
            continue
        owner = unit.rpartition(".")[0]
        if unit.endswith(".conv") and f"{owner}.norm_weight" in state:
            half = value.shape[0] // 2
            if name == "weight":
                out[f"{owner}.conv1.weight"] = value[:half, :, 1:2, 1:2].clone()
                out[f"{owner}.conv3.weight"] = value[half:].clone()
            else:
                out[f"{owner}.conv1.bias"], out[f"{owner}.conv3.bias"] = value[:half].clone(), value[half:].clone()
            continue
        out[key] = value
    return out
