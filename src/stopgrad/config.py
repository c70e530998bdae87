"""Run configuration: one frozen dataclass holding every default, YAML in and out.

Unknown keys and invalid values raise :class:`ConfigError` with a message that names the valid
choices (or the closest valid key).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from .backbones import BACKBONES
from .data.augment import RECIPES
from .gsg import POLICIES
from .heads import HEAD_PRESETS
from .methods import METHODS

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


# learning rates of methods that diverge at the default 0.2 with plain SGD: VICReg's covariance term
# grows with the fourth power of the unnormalised embedding's scale (its authors use LARS)
METHOD_LR = {"vicreg": 0.05}


@dataclass(frozen=True)
class Config:
    """Every setting of a run, with its default (frozen; the comments below say what each is).

    ``Config(...)`` takes the fields as keywords and does not check them; :func:`build_config`
    (defaults, preset YAML, overrides) returns a validated one, and :meth:`validate` checks one.
    ``lr=None`` becomes the method's default learning rate. It holds no tensors: shapes follow
    from ``views``, ``batch_size``, ``image_size``, ``width`` and ``heads``.

    >>> cfg = sg.Config(method="vicreg", width=4)
    >>> cfg.lr, cfg.batch_size, cfg.views  # VICReg's own default learning rate
    (0.05, 128, 2)
    >>> cfg.replace(epochs=1).epochs, cfg.epochs  # a changed copy
    (1, 8)
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
    backbone: str = "small-cnn"
    width: int = 16  # small-cnn only
    heads: str = "small"
    # optimisation
    epochs: int = 8
    batch_size: int = 128
    lr: float | None = None  # None: 0.2, or the method's own default (METHOD_LR)
    lr_schedule: str = "cosine"  # cosine | constant
    warmup_epochs: float = 0.0
    sgd_momentum: float = 0.9
    weight_decay: float = 5e-4
    ema_momentum: float = 0.99
    ema_schedule: str = "constant"  # constant | cosine (BYOL's increase to 1)
    # speed (none of these changes the maths beyond rounding)
    amp: bool | None = None  # bfloat16 autocast, fp32 weights; None: where bfloat16 is native (CUDA, recent CPUs)
    channels_last: bool = True  # NHWC activations (faster convolutions on CUDA and CPU)
    compile: bool = False  # torch.compile the model
    workers: int | None = None  # decoding processes for streamed image folders; default min(8, CPUs)
    # evaluation during training
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    knn_k: int = 200  # kNN also reports k = 1, from the same neighbour search
    knn_temperature: float = 0.1
    eval_geometry: bool = True  # collapse std, effective rank, alignment/uniformity, TP/FN similarity on test images
    collapse_threshold: float = 0.2  # collapse alarm: sqrt(D) x the projection's collapse std (healthy ~1) under this
    collapse_patience: int = 3  # ... for this many consecutive evaluations raises the alarm
    stop_on_collapse: bool = False  # the alarm stops the run (its last checkpoint is kept)
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
        if self.lr is None:
            object.__setattr__(self, "lr", METHOD_LR.get(self.method, 0.2))

    def validate(self) -> "Config":
        def choice(key: str, options) -> None:
            if getattr(self, key) not in options:
                raise ConfigError(f"invalid {key} {getattr(self, key)!r}; choose one of {', '.join(map(str, options))}")

        choice("method", METHODS)
        choice("stopgrad", POLICIES)
        choice("views", (2, 4))
        choice("backbone", BACKBONES)
        choice("heads", tuple(HEAD_PRESETS))
        choice("augment", tuple(RECIPES))
        choice("lr_schedule", ("cosine", "constant"))
        choice("ema_schedule", ("constant", "cosine"))
        choice("fnc_mode", ("elimination", "attraction"))
        choice("gsg_partners", ("local", "global"))
        if self.log is not None:
            from .runlog import LOG_CHOICES, tensorboard_available
            choice("log", LOG_CHOICES)
            if self.log != "jsonl" and not tensorboard_available():
                raise ConfigError(f"--log {self.log} needs the tensorboard package: `pip install tensorboard`, "
                                  "or use --log jsonl")
        for key in ("temperature", "bank_momentum", "triplet_margin"):
            if not getattr(self, key) >= 0 or (key == "temperature" and self.temperature == 0):
                raise ConfigError(f"{key} must be {'positive' if key == 'temperature' else '>= 0'}, "
                                  f"got {getattr(self, key)}")
        if self.bank_momentum >= 1:
            raise ConfigError(f"bank_momentum must be in [0, 1), got {self.bank_momentum}")
        for key in ("directclr_dim", "fnc_top_k", "triplet_rank"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        self._validate_prototype_keys()
        if self.num_negatives is not None and self.num_negatives <= 0:
            raise ConfigError(f"num_negatives must be positive, got {self.num_negatives}")
        if self.eqco_alpha is not None and self.eqco_alpha < 0:
            raise ConfigError(f"eqco_alpha must be > 0 (or 0 to turn EqCo off), got {self.eqco_alpha}")
        known = ("fashion-mnist", "cifar10", "cifar100", "digits")
        if self.dataset not in known and not (self.dataset.startswith("folder:") and len(self.dataset) > 7):
            raise ConfigError(f"invalid dataset {self.dataset!r}; choose one of {', '.join(known)}, folder:PATH")
        for key in ("epochs", "batch_size", "width", "eval_every", "knn_k", "collapse_patience"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        for key in ("lr", "knn_temperature"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        for key in ("channels_last", "eval_geometry", "stop_on_collapse", "sync_bn", "strict_data"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be true or false, got {getattr(self, key)!r}")
        if not self.collapse_threshold >= 0:
            raise ConfigError(f"collapse_threshold must be >= 0 (0 turns the alarm off), got {self.collapse_threshold}")
        for key in ("amp", "stream"):
            if getattr(self, key) not in (None, True, False):
                raise ConfigError(f"{key} must be true, false or null (automatic), got {getattr(self, key)!r}")
        if self.checkpoint_every is not None and self.checkpoint_every <= 0:
            raise ConfigError(f"checkpoint_every must be a positive number of steps, got {self.checkpoint_every}")
        if self.max_nan_skips < 0:
            raise ConfigError(f"max_nan_skips must be >= 0, got {self.max_nan_skips}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        for key in ("train_subset", "image_size", "threads"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ConfigError("weight_decay and warmup_epochs must be >= 0")
        if not 0 <= self.ema_momentum <= 1 or not 0 <= self.sgd_momentum < 1:
            raise ConfigError("ema_momentum must be in [0, 1] and sgd_momentum in [0, 1)")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be at least 2: every image needs a partner image in its batch "
                              f"(got {self.batch_size})")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"invalid device {self.device!r}; choose auto, cpu, cuda or cuda:N")
        return self

    def _validate_prototype_keys(self) -> None:
        def numbers(value, n: int) -> bool:
            return isinstance(value, tuple) and len(value) == n and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf for v in value)

        if self.spcl_targets not in ("kmeans", "labels"):
            raise ConfigError(f"invalid spcl_targets {self.spcl_targets!r}; choose one of kmeans, labels")
        if not self.bt_lambda >= 0:
            raise ConfigError(f"bt_lambda must be >= 0, got {self.bt_lambda}")
        for key, n, names in (("vicreg_weights", 3, "invariance, variance, covariance"),
                              ("spcl_weights", 3, "contrastive, metric, prototype"),
                              ("spcl_symmetric_ce", 2, "alpha, beta")):
            value = getattr(self, key)
            if key == "spcl_symmetric_ce" and value is None:
                continue
            if not numbers(value, n):
                raise ConfigError(f"{key} must be {n} numbers >= 0 ({names}), got {value!r}")
            if key != "vicreg_weights" and not any(value):
                raise ConfigError(f"{key} are all 0: give at least one positive weight ({names})")
        for key, low in (("twist_classes", 2), ("spcl_prototypes", 2)):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < low:
                raise ConfigError(f"{key} must be a whole number >= {low}, got {getattr(self, key)!r}")
        if not 0 < self.spcl_anchor_fraction < 1:
            raise ConfigError(f"spcl_anchor_fraction must be in (0, 1), got {self.spcl_anchor_fraction}")

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


def _coerce(key: str, value):
    """YAML gives ints for floats like `lr: 1`; make types match the field's default."""
    default = FIELDS[key].default
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
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
