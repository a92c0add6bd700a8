"""Export a trained generator as a CollaGANImpute TorchScript model with a full model card, and the same weights as
ONNX beside it (``model.onnx`` next to ``model.pt``, the same card in its metadata: the CPU runtimes run it without
torch), and check that both files give the eager model's output.

Example:
    python -m training.collagan_train.main export --checkpoint runs/lgg_cpu/best.pt --out runs/lgg_cpu/model.pt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
from pathlib import Path
from typing import Optional

import torch
from CollaGANImputeLib.atomic import write_text_atomic
from CollaGANImputeLib.contract import (
    DEFAULT_PIXEL_SPACING,
    ModelCard,
    load_model,
    onnx_path_for,
    read_card,
    save_model,
    save_onnx,
)

from .checkpoints import generator_from_checkpoint
from .config import TrainConfig, loss_settings
from .model import count_parameters
from .run_records import last_validation, run_folder, split_used, warm_start_lineage, weight_mean_of

LICENCE = "CC BY-NC-SA 4.0 (inherited from the TCGA-LGG curated set; research use only)"
DATA = ("TCGA-LGG (TCIA) as curated by Buda et al. 2019 / Mazurowski et al. 2017 (kaggle_3m 'LGG segmentation'), "
        "BraTS-named NIfTI: t1n, t1c, t2f")


#: Allowed |ONNX Runtime - eager| relative to the output's largest magnitude (at least 1): its instance norm
#: loses digits on near-constant channels (2e-3 for a generator trained 3 steps; 2e-5 for the bundled one).
ONNX_RTOL = 1e-3


def check_export(eager: torch.nn.Module, path: Path, x: torch.Tensor, atol: float = 5e-5) -> float:
    """Max |exported - eager| on ``x`` of the TorchScript file (raises above ``atol``: fp32 sums in another order
    give a few 1e-5) and, where one lies beside it and ONNX Runtime is installed, of its ONNX export (raises
    above :data:`ONNX_RTOL` of the output's scale)."""
    loaded = load_model(path)
    eager.eval()
    with torch.no_grad():
        expected = eager(x)
        diffs = {path: float((loaded.module(x) - expected).abs().max())}
    limits = {path: atol}
    if loaded.onnx is not None:
        try:
            import onnxruntime
        except ImportError:
            onnxruntime = None
        if onnxruntime is not None:
            session = onnxruntime.InferenceSession(str(loaded.onnx), providers=["CPUExecutionProvider"])
            y = session.run(None, {"x": x.numpy()})[0]
            diffs[loaded.onnx] = float((torch.from_numpy(y) - expected).abs().max())
            limits[loaded.onnx] = ONNX_RTOL * max(1.0, float(expected.abs().max()))
    for file, diff in diffs.items():
        if not diff <= limits[file]:
            raise RuntimeError(f"Exported model {file} differs from the eager model by {diff:.3g} "
                               f"(> {limits[file]:.3g}).")
    return diffs[path]


def training_input_profile(cfg: TrainConfig) -> dict:
    """The training data profile for the card's input check (``CollaGANImputeLib.input_check``), from the
    split's training cases; cached under ``cfg.cache_dir`` (a minute for 52 cases on 2 cores); {} without data.

    Why: the card carries what the training scans looked like, so that inference can warn about inputs unlike them.
    """
    from CollaGANImputeLib import __version__
    from CollaGANImputeLib.case_files import training_profile_from_folders
    from CollaGANImputeLib.input_check import PROFILE_VERSION

    from .cases import load_or_make_split, locate_lgg, repo_path

    folder = locate_lgg(cfg.data_dir)
    if folder is None:
        print("warning: no training data found: the card gets no input profile (no input check at inference)")
        return {}
    cases = load_or_make_split(cfg, folder)["train"]
    key = hashlib.sha1(json.dumps([sorted(cases), list(cfg.contrasts), PROFILE_VERSION, __version__,
                                   str(folder.resolve())]).encode()).hexdigest()[:16]
    cache = repo_path(cfg.cache_dir) / f"profile-{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    profile = training_profile_from_folders([folder / c for c in cases], cfg.contrasts,
                                            source=f"{len(cases)} training cases of {cfg.split_file}")
    write_text_atomic(cache, json.dumps(profile))
    return profile


def _optimized(g: torch.nn.Module) -> torch.nn.Module:
    """The core's exact export-time rewrite of the CCNR units (faster inference, same contract), when the
    installed core has it; the plain generator otherwise."""
    try:
        from CollaGANImputeLib.ccnr_export import optimize_for_inference
    except ImportError:
        return g
    return optimize_for_inference(g)


def write_onnx(model: torch.nn.Module, pt: Path, n_contrasts: int) -> Path:
    """Write the ONNX export of ``model`` beside the TorchScript file ``pt`` with its card; returns its path.

    Example:
        >>> write_onnx(fast_generator, Path("runs/v7/model.pt"), 3)   # doctest: +SKIP
        PosixPath('runs/v7/model.onnx')
    """
    x = torch.rand(2, 2 * n_contrasts, 256, 256)
    x[:, n_contrasts:] = 0
    x[:, n_contrasts] = 1
    card = read_card(pt)  # the TorchScript file's card (with its weights' hash): both files carry it
    path = onnx_path_for(pt)
    save_onnx(model, card, path, x)
    return path


def prior_words(cfg: TrainConfig) -> str:
    """How the generator's voxel-regression polynomial enters its output, for the card."""
    if not cfg.g_prior_mix:
        return ", added to a fixed voxel-regression polynomial"
    shares = ", ".join(f"{c} {m:.2f}" for c, m in zip(cfg.contrasts, cfg.g_prior_mix))
    return (", blended per target with a fixed voxel-regression polynomial (the U-Net's share of the image: "
            f"{shares}; the rest is the polynomial)")


def export_checkpoint(checkpoint: str, out: str, name: Optional[str] = None, metrics: Optional[dict] = None,
                      description: str = "", optimize: bool = True, input_profile: Optional[dict] = None,
                      about: Optional[dict] = None, training_overrides: Optional[dict] = None,
                      onnx: bool = True) -> Path:
    """Write ``out`` from ``checkpoint`` (G weights + config) through ``CollaGANImputeLib.save_model``.

    ``about``: the card's words for users, keys ``intended_use``, ``domain``, ``limitations`` (a list) and
    ``description`` (e.g. ``training/collagan_train/configs/card_lgg.json``, see :func:`load_about`).

    ``training_overrides``: entries of the card's ``training`` record to replace or add (e.g. ``data`` and ``split``
    of a model fine-tuned on another cohort).

    ``input_profile``: the training data profile for the card (None: computed from the split's training cases,
    :func:`training_input_profile`; {}: none); its median pixel spacing becomes the card's ``pixel_spacing``.

    With ``optimize`` the CCNR units are rewritten by ``CollaGANImputeLib.ccnr_export.optimize_for_inference``
    (same function, ~1e-6 apart in fp32); the files are checked against the original eager generator either way.
    With ``onnx`` the same module is also written as ONNX beside ``out`` (:func:`write_onnx`).
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    g, cfg = generator_from_checkpoint(state)
    run_dir = run_folder(Path(checkpoint).resolve())
    commands = (run_dir / "commands.txt").read_text().splitlines() if (run_dir / "commands.txt").is_file() else []
    split_file = Path(__file__).resolve().parents[2] / cfg.split_file
    split = json.loads(split_file.read_text()) if split_file.is_file() else {}
    profile = training_input_profile(cfg) if input_profile is None else input_profile
    card = ModelCard(
        name=name or f"collagan-{cfg.method}-{'-'.join(cfg.contrasts)}",
        contrasts=list(cfg.contrasts),
        in_plane_size=(256, 256),
        pixel_spacing=tuple(profile.get("pixel_spacing") or DEFAULT_PIXEL_SPACING),
        input_profile=profile,
        architecture={"generator": "CCNR U-Net (CollaGAN CVPR 2019 Table 2)" + (
                          " plus per-pixel coefficients on the inputs" if cfg.g_input_coefficients else "") + (
                          prior_words(cfg) if cfg.g_voxel_prior else ""),
                      "base_channels": cfg.g_base, "levels": cfg.g_levels, "parameters": count_parameters(g),
                      "voxel_prior": cfg.g_voxel_prior, "input_coefficients": cfg.g_input_coefficients,
                      **({"unet_share": dict(zip(cfg.contrasts, cfg.g_prior_mix))} if cfg.g_prior_mix else {}),
                      "input": f"(B, {2 * len(cfg.contrasts)}, H, W): contrasts + one-hot target planes",
                      "any_size": f"H, W divisible by {2 ** (cfg.g_levels - 1)}"},
        training={"data": DATA, "split": f"{cfg.split_file}: {len(split.get('train', []))} train / "
                                          f"{len(split.get('val', []))} validation patients",
                  "method": cfg.method, "steps": state["step"], "epochs": state.get("epoch"),
                  "batch_size": cfg.batch_size, "crop": cfg.crop,
                  "losses": loss_settings(cfg.to_dict()),
                  "augmentation": {k: v for k, v in cfg.to_dict().items()  # every aug_* setting, new ones too
                                   if k.startswith("aug_") or k in ("flip", "intensity_scale", "input_dropout_p")},
                  "checkpoint_choice": (f"on {cfg.n_select} training patients set aside (never trained on): "
                                        + ", ".join(split_used(run_dir).get("select", []))
                                        if cfg.n_select else "validation slices"),
                  "optimizer": f"Adam lr_g {cfg.lr_g} lr_d {cfg.lr_d} betas ({cfg.beta1}, {cfg.beta2}), "
                               f"x{cfg.lr_decay}/{cfg.lr_decay_every} steps, G weight decay {cfg.weight_decay_g}",
                  "input_dropout_max_extra": cfg.input_dropout_max_extra, "single_input": cfg.single_input,
                  "command": commands, "cost": (f"{state['train_seconds'] / 3600:.2f} h of training steps on "
                                                f"{platform.processor() or platform.machine()} "
                                                f"({state.get('world', 1)} process(es))"
                                                if "train_seconds" in state else "not recorded in the checkpoint"),
                  "checkpoint": Path(checkpoint).name, "warm_start": warm_start_lineage(cfg),
                  **({"weight_mean_of": weight_mean_of(state["averaged_from"]),
                      "recipe_of": "the last generator of weight_mean_of (steps, losses, augmentation above)"}
                     if "averaged_from" in state else {}),
                  **({"blend": state["blended_from"]} if "blended_from" in state else {}),
                  **(training_overrides or {})},
        outside_head=cfg.outside_head,
        licence=LICENCE,
        metrics=metrics if metrics is not None else last_validation(run_dir),
        description=description or (about or {}).get("description") or (
            "CollaGAN generator imputing one MR contrast from the others; research use only, not for diagnosis. "
            "Outputs are synthetic."),
        intended_use=(about or {}).get("intended_use", ""),
        domain=(about or {}).get("domain", ""),
        limitations=list((about or {}).get("limitations", [])),
    )
    path = Path(out)
    exported = _optimized(g) if optimize else g
    save_model(exported, card, path)
    if onnx:
        write_onnx(exported, path, len(cfg.contrasts))
    elif onnx_path_for(path).is_file():
        onnx_path_for(path).unlink()  # an export of other weights must not stay beside this one
    x = torch.rand(2, 2 * len(cfg.contrasts), 64, 64)
    x[:, len(cfg.contrasts):] = 0
    x[:, len(cfg.contrasts)] = 1
    check_export(g, path, x)
    return path


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint as a CollaGANImpute TorchScript model (and ONNX beside)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name")
    p.add_argument("--metrics", help="JSON file of metrics for the card (e.g. evaluate's summary.json)")
    p.add_argument("--description", default="", help="model card description (default: a generic one)")
    p.add_argument("--no-optimize", dest="optimize", action="store_false",
                   help="export the plain generator, without the core's fast-CCNR rewrite")
    p.add_argument("--no-onnx", dest="onnx", action="store_false",
                   help="write no ONNX file beside the TorchScript one (the CPU runtimes then need torch)")
    p.add_argument("--no-input-profile", dest="input_profile", action="store_const", const={}, default=None,
                   help="no training data profile in the card (inference then skips its input check)")
    p.add_argument("--about", help="JSON file with the card's intended_use, domain, limitations, description")
    p.add_argument("--version", help="the model version named in the --about words where they say {version}")
    p.set_defaults(func=lambda a: print(export_checkpoint(
        a.checkpoint, a.out, a.name, json.loads(Path(a.metrics).read_text()) if a.metrics else None,
        a.description, a.optimize, a.input_profile, load_about(a.about, a.version) if a.about else None,
        onnx=a.onnx)))


def load_about(path: str, version: Optional[str] = None) -> dict:
    """The card's words for users from a JSON file, ``{version}`` in its texts replaced by ``version`` (one file
    serves every version of a model whose words only differ in it).

    Example:
        >>> about = load_about("training/collagan_train/configs/card_lgg.json", "v6")  # doctest: +SKIP
    """
    text = Path(path).read_text()
    if "{version}" in text and not version:
        raise SystemExit(f"{path} names the model version as {{version}}: pass --version (e.g. --version v6).")
    about = json.loads(text)

    def fill(value):
        if isinstance(value, str):
            return value.replace("{version}", version or "")
        return [fill(v) for v in value] if isinstance(value, list) else value

    return {key: fill(value) for key, value in about.items()}


def _main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)
