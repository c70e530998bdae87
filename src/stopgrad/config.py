"""Run configuration: one frozen dataclass holding every default, YAML in and out.

Unknown keys and invalid values raise :class:`ConfigError` with a message that names the valid
choices (or the closest valid key).

The keys are flat (YAML ``lr: 0.1``, CLI ``--lr 0.1``) but each belongs to one group, the part of
the library it configures (:data:`OPTION_GROUPS`). A group's keys (``OPTIONS``) and their
validator (``check_options``) are declared in the module that reads them, and
:meth:`Config.validate` runs every group's validator: a new method, backbone or optimiser adds
its keys and checks where its code is. ``stopgrad train --help`` and docs/reference.md list the
keys by group.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from importlib import import_module

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """Invalid configuration; the message names the problem and the fix.

    A ``ValueError``; raised by :func:`build_config` and :meth:`Config.validate`.

    >>> sg.build_config(overrides={"widht": 4})
    Traceback (most recent call last):
    ...
    stopgrad.config.ConfigError: unknown key 'widht' in the overrides; did you mean 'width'?
    >>> issubclass(sg.ConfigError, ValueError)
    True
    """


# group -> (the module of stopgrad that declares its keys, OPTIONS, and validates them, and its title)
OPTION_GROUPS = {
    "method": ("methods.options", "method and loss (each method's docstring says which keys it reads)"),
    "data": ("data.options", "data and augmentation"),
    "model": ("backbones", "model: backbone and heads"),
    "optimisation": ("optim", "optimisation: optimiser, learning rate, schedules, momentum copy"),
    "evaluation": ("evaluate.online", "evaluation during training"),
    "running": ("train", "running: device, speed, processes, checkpoints, logging"),
}


def option_groups() -> dict[str, tuple[str, ...]]:
    """group -> its config keys, in :data:`OPTION_GROUPS` order (the modules are imported on first use).

    >>> from stopgrad.config import option_groups
    >>> list(option_groups())
    ['method', 'data', 'model', 'optimisation', 'evaluation', 'running']
    >>> option_groups()["optimisation"][:4]
    ('epochs', 'steps', 'batch_size', 'optimizer')
    """
    return {name: tuple(_group_module(name).OPTIONS) for name in OPTION_GROUPS}


def _group_module(name: str):
    return import_module(f".{OPTION_GROUPS[name][0]}", __package__)


def _group_check(name: str):
    return _group_module(name).check_options


@dataclass(frozen=True)
class Config:
    """Every setting of a run, with its default (frozen; the comments below say what each is).

    ``Config(...)`` takes the fields as keywords and does not check them; :func:`build_config`
    (defaults, preset YAML, overrides) returns a validated one, and :meth:`validate` checks one.
    ``None`` in ``optimizer``, ``lr``, ``lr_scaling`` and ``weight_decay`` becomes the method's default
    on its backbone, else the method's, else the optimiser's (:func:`stopgrad.optim.resolve_defaults`).
    It holds no tensors: shapes follow from ``views``, ``batch_size``, ``image_size``, ``width`` and ``heads``.

    >>> cfg = sg.Config(method="vicreg", width=4)
    >>> cfg.optimizer, cfg.lr, cfg.lr_scaling, cfg.batch_size  # VICReg's paper recipe: LARS, lr 0.2 x batch / 256
    ('lars', 0.2, 'linear', 128)
    >>> sg.Config().optimizer, sg.Config().lr, sg.Config().weight_decay  # the default run: BYOL on small-cnn-grid
    ('sgd', 0.4, 0.0005)
    >>> sg.Config(backbone="small-cnn").lr  # BYOL on the earlier default backbone
    0.2
    >>> cfg.replace(epochs=1).epochs, cfg.epochs  # a changed copy
    (1, 14)
    >>> sg.Config(batch_size=1).validate()
    Traceback (most recent call last):
    ...
    stopgrad.config.ConfigError: batch_size must be at least 2: every image needs a partner image in its batch (got 1)
    """
    # what to train
    method: str = "byol"
    stopgrad: str = "guided"
    predictor: bool = True
    views: int = 2
    # contrastive methods (see each method's docstring for which keys it reads)
    temperature: float = 0.2  # InfoNCE / NT-Xent temperature
    num_negatives: int | None = None  # K: queue / memory-bank / sampled negatives; None: the method's default
    eqco_alpha: float | None = None  # EqCo margin m = T log(alpha / K); None: the method's default, 0: off
    bank_momentum: float = 0.5  # InstDisc memory-bank update
    directclr_dim: int = 64  # DirectCLR: leading representation dimensions in the loss
    fnc_mode: str = "elimination"  # FNC: elimination | attraction
    fnc_top_k: int = 1  # FNC: false negatives cancelled per anchor
    triplet_rank: int = 2  # truncated triplet: rank of the "deputy" negative
    triplet_smoothed: bool = False  # truncated triplet: mean of ranks 2..2k+1 instead
    triplet_margin: float = 0.2
    # prototype and redundancy-reduction methods
    bt_lambda: float = 5e-3  # Barlow Twins: weight of the off-diagonal (redundancy) term
    vicreg_weights: tuple[float, float, float] = (25.0, 25.0, 1.0)  # VICReg: invariance, variance, covariance
    twist_classes: int = 128  # TWIST: classes C of the twin distributions
    spcl_prototypes: int = 10  # SPCL: k-means prototypes P (spcl_targets labels: at least the classes)
    spcl_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # SPCL: contrastive, metric, prototype; 0: off
    spcl_targets: str = "kmeans"  # SPCL: kmeans | labels (the ground-truth classes as prototypes)
    spcl_anchor_fraction: float = 0.25  # SPCL: share of a batch drawn from its anchor prototype
    spcl_symmetric_ce: tuple[float, float] | None = None  # SPCL: (alpha, beta) of symmetric CE; None: plain CE
    # data
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    image_size: int | None = None  # output side of the views; default: the data set's
    augment: str = "fashion-mnist"
    train_subset: int | None = None
    stream: bool | None = None  # image folders: read from disk per batch; None: when over 2 GiB decoded
    # model
    backbone: str = "small-cnn-grid"  # a name of `stopgrad list`, torchvision:NAME or timm:NAME
    width: int = 16  # the small CNNs only
    heads: str = "small"
    small_input: bool | None = None  # library models adapted to small images (docs/reference.md); None: side <= 64
    freeze_patch_embed: bool = False  # a ViT's random patch projection kept fixed (MoCo v3)
    # optimisation
    epochs: int = 14
    steps: int | None = None  # total training steps instead of whole epochs (the last epoch cut short)
    batch_size: int = 128
    optimizer: str | None = None  # sgd | lars | adamw; None: the method's (sgd, vicreg: lars)
    lr: float | None = None  # base lr; None: the method's or the optimiser's (optim.OPTIMIZER_DEFAULTS)
    lr_scaling: str | None = None  # none | linear (lr x batch_size / 256); None: the optimiser's
    lr_schedule: str = "cosine"  # cosine | constant
    warmup_epochs: float = 0.0
    sgd_momentum: float = 0.9  # momentum of SGD and LARS
    weight_decay: float | None = None  # None: the method's or the optimiser's; LARS/AdamW: none on biases and norms
    lars_eta: float = 0.001  # LARS trust coefficient
    adamw_betas: tuple[float, float] = (0.9, 0.999)  # AdamW (beta1, beta2)
    ema_momentum: float = 0.99
    ema_schedule: str = "constant"  # constant | cosine (BYOL's increase to 1)
    # speed (none of these changes the maths beyond rounding)
    amp: bool | None = None  # bfloat16 autocast, fp32 weights; None: where bfloat16 is native (CUDA, recent CPUs)
    channels_last: bool = True  # NHWC activations (faster convolutions on CUDA and CPU)
    compile: bool = False  # torch.compile the model
    workers: int | None = None  # decoding processes for streamed image folders; default min(8, CPUs)
    # evaluation during training
    eval_every: int = 2  # epochs between evaluations (the last epoch is always evaluated)
    knn_k: int = 200  # kNN also reports k = 1, from the same neighbour search
    knn_temperature: float = 0.1
    eval_geometry: bool = True  # collapse std, effective rank, alignment/uniformity, TP/FN similarity on test images
    collapse_threshold: float = 0.2  # collapse alarm: sqrt(D) x the projection's collapse std (healthy ~1) under this
    collapse_patience: int = 3  # ... for this many consecutive evaluations raises the alarm
    stop_on_collapse: bool = False  # the alarm stops the run (its last checkpoint is kept)
    pixel_baselines: bool = True  # kNN on the raw and mean-centred pixels before training (cached per data set)
    # many processes (torchrun)
    sync_bn: bool = False  # BatchNorm statistics over the global batch
    gsg_partners: str = "local"  # GSG partners within each process's batch, or "global" (the whole batch)
    # running
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # CPU threads; default: torch's choice
    checkpoint_every: int | None = None  # steps between mid-epoch checkpoints (also at every epoch's end)
    log: str | None = None  # both | jsonl | tensorboard; None: both when TensorBoard is installed
    max_nan_skips: int = 0  # non-finite losses skipped (no update) before the run stops
    strict_data: bool = False  # an unreadable image is an error instead of being skipped

    def __post_init__(self) -> None:
        for f in fields(self):  # YAML gives lists: keep one spelling, the tuple
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        from .optim import resolve_defaults
        resolved = resolve_defaults(self.method, self.optimizer, self.backbone, lr=self.lr, lr_scaling=self.lr_scaling,
                                    weight_decay=self.weight_decay)
        for key, value in resolved.items():
            object.__setattr__(self, key, value)

    def validate(self) -> "Config":
        """Check every key (each group by its own validator, :data:`OPTION_GROUPS`); returns ``self``."""
        for name in OPTION_GROUPS:
            _group_check(name)(self)
        return self

    # ------------------------------------------------------------------ YAML
    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)


FIELDS = {f.name: f for f in fields(Config)}


def check_keys(data: dict, source: str) -> None:
    for key in data:
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(FIELDS)}"
            raise ConfigError(f"unknown key {key!r} in {source}; {hint}")


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def _fits(value, annotation: str) -> bool:
    """Whether ``value`` (as YAML or a caller gives it) has the type a field's annotation names."""
    for option in (part.strip() for part in annotation.split("|")):
        if option == "None" and value is None:
            return True
        if option.startswith("tuple["):
            items = [t.strip() for t in option[len("tuple["):-1].split(",")]
            if isinstance(value, (tuple, list)) and len(value) == len(items) and all(
                    _fits(v, t) for v, t in zip(value, items)):
                return True
        elif option in _SCALARS:
            kind = _SCALARS[option]
            if kind is bool:
                if isinstance(value, bool):
                    return True
            elif kind is float:
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    return True
            elif isinstance(value, kind) and not isinstance(value, bool):
                return True
    return False


def _describe(annotation: str) -> str:
    words = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a string",
             "None": "null"}
    options = [p.strip() for p in annotation.split("|")]
    return " or ".join(words.get(o, f"{o.count(',') + 1} numbers" if o.startswith("tuple[") else o)
                       for o in options)


def _coerce(key: str, value):
    """Check that ``value`` has the field's type (one-line :class:`ConfigError` otherwise) and make it
    match the field's default: YAML gives ints for floats like `lr: 1`."""
    annotation = FIELDS[key].type if isinstance(FIELDS[key].type, str) else getattr(FIELDS[key].type, "__name__", "")
    # (a list for a tuple key is checked, with a message that names its parts, by the key's group)
    listed = isinstance(value, (list, tuple)) and "tuple[" in annotation
    if annotation and not listed and not _fits(value, annotation):
        raise ConfigError(f"{key} must be {_describe(annotation)}, got {value!r}")
    default = FIELDS[key].default
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list):
        return tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
    return value


def resolve_preset(name_or_path: str) -> Path:
    """A YAML path, or a preset name under the packaged configs/ (``fashion-mnist/byol-gsg``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = PRESET_DIR / (name_or_path if name_or_path.endswith(".yaml") else name_or_path + ".yaml")
    if packaged.is_file():
        return packaged
    raise ConfigError(f"config {name_or_path} not found; give a YAML path or a preset from `stopgrad list`")


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"{path} is not a readable YAML text file ({type(exc).__name__}); give a config file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    check_keys(data, str(path))
    return {k: _coerce(k, v) for k, v in data.items()}


def build_config(preset: str | None = None, overrides: dict | None = None) -> Config:
    """Defaults, then the preset file, then explicit overrides; validated.

    Args:
        preset: a YAML path, or a packaged preset such as ``"digits/quick"`` (``stopgrad list``).
        overrides: field -> value, applied last.
    Returns:
        a validated :class:`Config`.
    Raises:
        ConfigError: an unknown key, an invalid value or a missing preset.

    >>> cfg = sg.build_config("digits/quick", overrides={"width": 4})
    >>> cfg.method, cfg.dataset, cfg.width, cfg.epochs, cfg.batch_size
    ('byol', 'digits', 4, 10, 64)
    >>> sg.build_config(overrides={"method": "simclr"}).temperature
    0.2
    """
    values: dict = {}
    if preset is not None:
        values.update(load_yaml(resolve_preset(preset)))
    overrides = overrides or {}
    check_keys(overrides, "the overrides")
    values.update({k: _coerce(k, v) for k, v in overrides.items()})
    return Config(**values).validate()


def presets() -> list[str]:
    return sorted(str(p.relative_to(PRESET_DIR).with_suffix("")) for p in PRESET_DIR.rglob("*.yaml"))


def save_yaml(data: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
