"""Training configuration: one flat, documented dataclass read from a recipe (JSON) and overridden by ``--set k=v``.

A recipe names its base (``"base": "base.json"``, the paper's settings) and sets only what differs; a recipe may
list ``stages`` (each from the previous stage's generator, overriding what differs again) and end with the
``average`` of some stages' generators (:mod:`.stages`). Used as a base, a recipe with stages gives its last
stage's settings. Recipes by name: ``configs/<name>.json`` (:func:`recipe_names`).

Example:
    >>> cfg = load_config("tiny", ["steps=5", "lr_g=1e-4"])
    >>> cfg.steps, cfg.g_base
    (5, 4)
    >>> [stage["name"] for stage in read_recipe("lgg").stages]
    ['d', 'd', 'e', 'f', 'g', 'i']
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

#: Loss-weight presets of the paper's methods and ablations (Table 9, EVALUATION.md baselines).
#: Keys set on top of the config; "collagan" uses the config's own (author) weights.
METHODS = {
    "collagan": {},
    "no_ssim": {"w_cyc_ssim": 0.0},
    # MCC replaced by direct L1 (+SSIM) on the first-pass output; adversarial and classification kept.
    "no_mcc": {"w_cyc_l1": 0.0, "w_cyc_ssim": 0.0, "w_direct_l1": 10.0, "w_direct_ssim": 1.0},
    # Table 9 "l1": direct regression from multiple inputs only, no MCC, no SSIM, no adversarial loss.
    "l1": {"w_cyc_l1": 0.0, "w_cyc_ssim": 0.0, "w_direct_l1": 1.0, "w_direct_ssim": 0.0, "w_gan": 0.0,
           "w_g_clsf": 0.0, "w_d_clsf": 0.0, "clsf_warmup_steps": 0},
    # Not in the paper: "l1" with squared error, the loss NMSE (the protocol's first metric) measures.
    "l2": {"w_cyc_l1": 0.0, "w_cyc_ssim": 0.0, "w_direct_l1": 0.0, "w_direct_l2": 1.0, "w_direct_ssim": 0.0,
           "w_gan": 0.0, "w_g_clsf": 0.0, "w_d_clsf": 0.0, "clsf_warmup_steps": 0},
    # pix2pix/StarGAN-style single-input translation with the same G: one input, direct L1 + adversarial.
    "single_input": {"w_cyc_l1": 0.0, "w_cyc_ssim": 0.0, "w_direct_l1": 10.0, "w_direct_ssim": 0.0,
                     "single_input": True},
}


@dataclass
class TrainConfig:
    # --- data ---
    data_dir: str = ""              # LGG root or its complete/ folder; "" = $COLLAGAN_LGG_DIR or <repo>/../shared
    contrasts: List[str] = field(default_factory=lambda: ["t1n", "t1c", "t2f"])
    split_file: str = "training/splits/lgg_split.json"
    split_seed: int = 2019
    n_val: int = 12
    val_cases_required: List[str] = field(default_factory=lambda: ["TCGA-HT-7882"])
    max_cases: int = 0              # >0: use only the first cases of each split (tests)
    min_foreground: float = 0.05    # a slice is used when at least this fraction of it is head
    cache_dir: str = "runs/cache"    # per-case slice stores (built once, reused; stores.case_store)
    loader_workers: int = 2         # DataLoader processes preparing batches ahead of the step (0 = in the trainer)
    crop: int = 0                   # >0: random in-plane crops of this size (multiple of 32)
    flip: bool = True               # random left-right flip (authors' code)
    intensity_scale: float = 0.1    # global intensity scale U(1-s, 1+s) per image (authors' code: 0.1)
    n_select: int = 0               # >0: this many training patients set aside (seeded) to choose checkpoints on
    aug_strip_p: float = 0.0        # per slice: remove an outer shell of the head (skull-stripped look), augment.py
    aug_strip_radius: List[int] = field(default_factory=lambda: [6, 18])  # erosion radius range, pixels
    aug_strip_per_volume: bool = True  # re-scale a stripped slice by its volume's p99 ratio, as the core would
    aug_brain_only_p: float = 0.0  # per slice: its brain-only copy instead (skull-stripped look), augment.py
    aug_joint_gamma_p: float = 0.0  # per slice: one gamma < 1 for all contrasts, target included, augment.py
    aug_joint_gamma_min: float = 0.4  # the smallest gamma (log-uniform in [min, 1])
    aug_appearance_p: float = 0.0   # per input: random gamma / scale / bias field (inputs only), augment.py
    aug_contrast_p: float = 0.0     # per input: tissue contrast stretched or flattened (inputs only), augment.py
    aug_contrast: float = 1.8       # the largest stretch factor (and 1/it the strongest flattening)
    aug_enhance_p: float = 0.0      # per slice with a lesion: enhancement painted inside it (inputs only)
    aug_enhance_contrast: str = "t1c"  # the post-contrast T1 of ``contrasts`` that aug_enhance_p paints
    aug_gamma: float = 0.3          # log-gamma range
    aug_scale: float = 0.15         # global scale range
    aug_bias: float = 0.2           # linear bias-field amplitude
    # --- model ---
    g_base: int = 16                # Table 2: 16..256 channels over 5 levels
    g_levels: int = 5
    g_voxel_prior: bool = False     # U-Net adds to the fixed voxel-regression polynomial (not in the paper)
    g_input_coefficients: bool = False  # per-pixel coefficients on the raw inputs carry their level (model.py)
    g_prior_mix: Optional[List[float]] = None  # with g_voxel_prior: the U-Net's share per target (blend.py)
    init_g: str = ""                # warm start: G weights from this training checkpoint (D, optimizers fresh)
    d_dropout: float = 0.5
    d_sigmoid: bool = True          # Table 3 ends D_gan with a sigmoid
    # --- method / losses (authors' MRI code weights, COLLAGAN.md) ---
    method: str = "collagan"
    w_cyc_l1: float = 10.0
    w_cyc_ssim: float = 1.0
    w_gan: float = 1.0
    w_g_clsf: float = 1.0
    w_d_clsf: float = 1.0
    w_direct_l1: float = 0.0
    w_direct_ssim: float = 0.0
    w_direct_l2: float = 0.0        # squared error on the imputed target (not in the paper: NMSE is its metric)
    lesion_weight: float = 1.0      # direct L1/L2 weight of lesion voxels relative to other head voxels (-seg)
    edge_weight: float = 1.0        # direct L1/L2 weight of head voxels near the head's edge (scalp, skull)
    edge_px: int = 12               # ... within this many pixels of it
    target_coverage_only: bool = False  # no loss where the real target has no data (losses.no_data)
    w_lesion_contrast: float = 0.0  # |C_pred - C_real| per slice with a lesion (EVALUATION.md conspicuity)
    w_identity: float = 0.0         # contrast identity: r(fake, input) above r(real, input), 1 - r(fake, real)
    w_identity_pooled: float = 0.0  # the same, the slices of one target pooled like a volume
    target_weights: List[float] = field(default_factory=list)  # relative odds of each contrast as the target
    head_only_loss: bool = False    # losses see G's output inside the head mask only (not in the paper, see README)
    input_dropout_max_extra: int = 1  # besides the target, null 0..this many more inputs (>=1 input stays)
    input_dropout_p: float = 1.0    # chance that a sample is drawn for extra nulling at all (else all inputs kept)
    single_input: bool = False
    freeze_g: bool = False          # G is not trained: a discriminator learns against a fixed generator (init_g)
    clsf_warmup_steps: int = -1     # classifier-only steps first; -1 = clsf_warmup_epochs epochs
    clsf_warmup_epochs: float = 10.0  # paper §4.3: 10 epochs
    # --- optimisation (paper: Adam lr 1e-5; authors' code: beta1 0.5, x0.99 every 400 steps, L2 0.01 on G) ---
    steps: int = 100000
    batch_size: int = 1
    lr_g: float = 1e-5
    lr_d: float = 1e-5
    beta1: float = 0.5
    beta2: float = 0.999
    weight_decay_g: float = 0.01
    lr_decay_every: int = 400
    lr_decay: float = 0.99
    ema_decay: float = 0.0          # >0: validate and export an exponential moving average of G's weights
    seed: int = 0
    # --- running ---
    threads: int = 0                # torch.set_num_threads; 0 = leave torch's default
    device: str = "auto"
    bf16: Optional[bool] = None     # bf16 autocast; None: on CUDA and on CPUs with native bf16 (else emulated: slow)
    channels_last: bool = False
    log_every: int = 10
    val_every: int = 500
    val_slices: int = 48            # fixed validation slices scored at each validation
    keep_snapshots: bool = False    # keep G's (EMA) weights of every validation as snapshots/g_<step>.pt
    ckpt_every: int = 500
    ckpt_every_s: float = 600.0     # also checkpoint when this many seconds passed since the last one
    out_dir: str = "runs/collagan"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Unknown method '{self.method}'; choose one of {sorted(METHODS)}.")
        if self.crop and self.crop % 32:
            raise ValueError(f"crop={self.crop} must be a multiple of 32 (generator pooling and D strides).")
        if self.aug_enhance_p > 0 and self.aug_enhance_contrast not in self.contrasts:
            raise ValueError(f"aug_enhance_p paints enhancement into {self.aug_enhance_contrast!r}, which is not among "
                             f"the contrasts {self.contrasts}: set aug_enhance_contrast to the post-contrast T1's "
                             "name or aug_enhance_p to 0.")
        if self.target_coverage_only and not self.head_only_loss:
            raise ValueError("target_coverage_only takes the target's missing data out of the head mask, which only "
                             "the head-only losses use: set head_only_loss to true as well.")

    @property
    def outside_head(self) -> str:
        """The exported card's rule: a generator trained inside the head only has an untrained background."""
        return "zero" if self.head_only_loss else "model"

    def with_method(self) -> TrainConfig:
        """This config with the method's preset weights applied."""
        return dataclasses.replace(self, **METHODS[self.method])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def loss_settings(config: dict) -> dict:
    """The settings of a config dict that shape G's loss: every ``w_*`` weight (new ones too) and the voxel
    weighting (head-only, lesion, head edge, the target's coverage). What a model card and an averaged checkpoint
    record of a run."""
    return {k: v for k, v in config.items()
            if k.startswith("w_") or k in ("head_only_loss", "lesion_weight", "edge_weight", "edge_px",
                                           "target_coverage_only")}


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # bare strings: method=l1, out_dir=runs/x


#: The recipes (and the card words, ``card_*.json``) shipped with training.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: Keys of a recipe file that are not settings.
RECIPE_KEYS = ("_comment", "base", "stages", "average", "blend")


@dataclass
class Recipe:
    """A recipe file with its base chain resolved: its ``settings``, its ``stages`` (each ``{"name": ..., setting:
    value}``, ``"continue": true`` to go on with the previous stage's run), the stages to ``average`` and the U-Net's
    share per target where the result is then blended with the voxel regression (``blend``, :mod:`.blend`)."""

    path: Path
    settings: dict
    stages: List[dict] = field(default_factory=list)
    average: List[str] = field(default_factory=list)
    blend: Dict[str, float] = field(default_factory=dict)

    def stage_settings(self, stage: dict) -> dict:
        return {**self.settings, **{k: v for k, v in stage.items() if k not in ("name", "continue")}}

    @property
    def final(self) -> dict:
        """The settings of the last stage (the recipe's own when it has none)."""
        return self.stage_settings(self.stages[-1]) if self.stages else dict(self.settings)


def recipe_names() -> List[str]:
    """The recipes shipped in :data:`CONFIG_DIR` (card words and the base left out)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json") if not p.stem.startswith("card_") and p.stem != "base")


def recipe_file(name: str) -> Path:
    """The file of recipe ``name`` (a shipped recipe's name, or a JSON file's path)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.suffix != ".json" and (CONFIG_DIR / f"{name}.json").is_file():
        return CONFIG_DIR / f"{name}.json"
    raise ValueError(f"No recipe or config file '{name}': give one of {recipe_names()} or a JSON file's path.")


def read_recipe(name: str) -> Recipe:
    """The recipe ``name`` with its base chain resolved (a base's path is relative to the file naming it)."""
    path = recipe_file(name)
    data = json.loads(path.read_text())
    base = read_recipe(str(path.parent / data["base"])).final if "base" in data else {}
    settings = {**base, **{k: v for k, v in data.items() if k not in RECIPE_KEYS}}
    return Recipe(path, settings, list(data.get("stages", [])), list(data.get("average", [])),
                  dict(data.get("blend", {})))


def recipe_overlay(name: str) -> dict:
    """The settings recipe ``name`` itself sets (its base's left out): what it changes on top of another config."""
    data = json.loads(recipe_file(name).read_text())
    return {k: v for k, v in data.items() if k not in RECIPE_KEYS}


def make_config(settings: dict, overrides: Sequence[str] = ()) -> TrainConfig:
    """A config from ``settings`` and ``key=value`` overrides (values parsed as JSON); unknown keys refused."""
    data = dict(settings)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Override '{item}' is not key=value (e.g. --set steps=1000).")
        key, value = item.split("=", 1)
        data[key.strip()] = _parse_value(value)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"Unknown config keys {unknown}; known keys: {sorted(known)}.")
    return TrainConfig(**data)


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A recipe's (or config file's) settings, its last stage's if it has stages, with ``key=value`` overrides."""
    return make_config(read_recipe(path).final if path else {}, overrides)
