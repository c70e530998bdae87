"""Backbones: a small CNN for CPUs, a CIFAR ResNet-18, a torchvision ResNet-50, a tiny ViT, and
any torchvision or timm classification model by name (``torchvision:NAME``, ``timm:NAME``).

Every backbone maps (N, C, H, W) images to (N, F) features and has ``feature_dim``. A library
model is wrapped in :class:`LibraryBackbone`, whose ``model`` is the library's own module with its
classifier replaced by ``nn.Identity`` (so its weights load back into the library's model).
"""
from __future__ import annotations

import difflib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

BACKBONES = ("small-cnn", "resnet18-cifar", "resnet50", "vit-tiny")
LIBRARIES = ("torchvision", "timm")  # backbone "LIBRARY:NAME"


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Sequential):
    """Four 3x3 conv-BN-ReLU blocks (widths w, 2w, 4w, 8w), then average pooling to a
    ``pool`` x ``pool`` grid, flattened: ``feature_dim = 8w * pool**2``.

    The first block has stride 2, so a 28x28 image reaches the last block at 4x4. Pooling to 2x2
    rather than 1x1 keeps the coarse layout (where the sleeves, the sole, the handle are) that
    Fashion-MNIST classes differ by; ``small-cnn-grid`` (the default backbone) keeps the whole 4x4
    map (``pool=4``) and standardises it (``feature_bn``), which kNN on 28x28 images rewards most
    (docs/recipes.md, "The CPU recipe sweep").

    Args:
        in_channels: C of the input images.
        width: w, the first block's channels.
        pool: side of the pooled grid.
        strides: the four blocks' strides; ``(1, 2, 2, 2)`` keeps the first block at full resolution
            (same state-dict keys, about the same FLOPs on 28x28: the costly second block runs at 14x14).
        feature_bn: end with a BatchNorm without scale and shift, so the features are centred and
            standardised per dimension rather than non-negative (cosine kNN compares directions).
    Input (N, C, H, W) float images; output (N, feature_dim) features.

    >>> net = sg.SmallCNN(in_channels=3, width=4, pool=1)  # feature_dim = 8 * 4 * 1**2
    >>> net.feature_dim, net(torch.rand(2, 3, 32, 32)).shape
    (32, torch.Size([2, 32]))
    """

    def __init__(self, in_channels: int = 1, width: int = 32, pool: int = 2, strides=(2, 1, 2, 2),
                 feature_bn: bool = False):
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers = _conv_bn_relu(in_channels, widths[0], stride=strides[0])
        for c_in, c_out, stride in zip(widths[:-1], widths[1:], strides[1:]):
            layers += _conv_bn_relu(c_in, c_out, stride)
        tail = [nn.BatchNorm1d(widths[-1] * pool * pool, affine=False)] if feature_bn else []
        super().__init__(*layers, nn.AdaptiveAvgPool2d(pool), nn.Flatten(), *tail)
        self.feature_dim = widths[-1] * pool * pool


def _torchvision_resnet(name: str, in_channels: int, cifar_stem: bool) -> nn.Module:
    net = getattr(models, name)(weights=None)
    if cifar_stem:  # 3x3 stride-1 stem, no max-pool: the standard CIFAR variant
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    net.feature_dim = net.fc.in_features
    net.fc = nn.Identity()  # features, not logits; load with `model.fc = nn.Identity()`
    return net


def build_backbone(name: str, in_channels: int = 3, width: int = 32, image_size: int | None = None,
                   small_input: bool | None = None, freeze_patch_embed: bool = False) -> nn.Module:
    """The backbone ``name``, with freshly initialised weights (never downloaded ones).

    ``name`` is one of :data:`BACKBONES`, ``"torchvision:NAME"`` (any model of
    ``torchvision.models.list_models(module=torchvision.models)``) or ``"timm:NAME"`` (any of
    ``timm.list_models()``; needs ``pip install "stopgrad[timm]"``). Library models come as a
    :class:`LibraryBackbone`: the classifier replaced by ``nn.Identity``, ``feature_dim`` read
    off a forward pass, gray images repeated to 3 channels for torchvision models (timm models get
    ``in_chans``). ``width`` applies to the small CNNs only.

    Args:
        name: the backbone's name (``stopgrad list`` lists them).
        in_channels: C of the input images.
        width: the small CNN's first-block width.
        image_size: side of the input images; ViTs are built for it (None: 224 for library
            models, 32 for ``vit-tiny``).
        small_input: adapt library models to small images (torchvision ResNets: the CIFAR stem;
            timm ViTs: 4-pixel patches); None: when ``image_size`` <= 64.
        freeze_patch_embed: keep a ViT's random patch projection fixed (MoCo v3).
    Returns:
        an ``nn.Module`` mapping (N, C, H, W) float images to (N, F) features, F = its ``feature_dim``.
    Raises:
        ConfigError: an unknown name (the message says how to list the names), timm missing.

    >>> _ = torch.manual_seed(0)
    >>> net = sg.build_backbone("small-cnn", 1, width=4)  # feature_dim = 8 * 4 * 2**2
    >>> net.feature_dim, net(torch.randn(2, 1, 28, 28)).shape
    (128, torch.Size([2, 128]))
    >>> vit = sg.build_backbone("vit-tiny", 1, image_size=28)  # 7x7 patches: a 4x4 grid
    >>> vit.feature_dim, vit(torch.randn(2, 1, 28, 28)).shape
    (128, torch.Size([2, 128]))
    >>> net = sg.build_backbone("torchvision:resnet18", 1, image_size=32)  # CIFAR stem, gray -> RGB
    >>> net.feature_dim, net.changes
    (512, ['conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)', 'maxpool = nn.Identity()'])
    >>> sg.build_backbone("vit")
    Traceback (most recent call last):
    ...
    stopgrad.config.ConfigError: unknown backbone 'vit'; choose one of small-cnn, ..., torchvision:NAME, timm:NAME
    """
    if ":" in name:
        library, arch = name.split(":", 1)
        check_library_name(library, arch)
        builder = _torchvision_model if library == "torchvision" else _timm_model
        return _finish(builder(arch, in_channels, image_size, small_input), name, in_channels, image_size,
                       freeze_patch_embed)
    if name == "vit-tiny":
        return _finish(_vit_tiny(in_channels, image_size), name, in_channels, image_size, freeze_patch_embed)
    if freeze_patch_embed:
        from .config import ConfigError
        raise ConfigError(f"freeze_patch_embed fixes a ViT's patch projection; backbone {name!r} has none "
                          "(use vit-tiny, torchvision:vit_*, torchvision:swin_* or a timm ViT)")
    if name == "small-cnn":
        return SmallCNN(in_channels, width)
    if name in SMALL_CNN_VARIANTS:
        return SmallCNN(in_channels, width, **SMALL_CNN_VARIANTS[name])
    if name == "resnet18-cifar":
        return _torchvision_resnet("resnet18", in_channels, cifar_stem=True)
    if name == "resnet50":
        return _torchvision_resnet("resnet50", in_channels, cifar_stem=False)
    from .config import ConfigError
    raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}, torchvision:NAME, timm:NAME")


# Other shapes of the small CNN for 28x28 images (docs/recipes.md, "The CPU recipe sweep"):
# SmallCNN's keyword arguments per backbone name.
SMALL_CNN_VARIANTS = {
    "small-cnn-fullres": {"strides": (1, 2, 2, 2)},  # first block at 28x28, then 14, 7, 4
    "small-cnn-fullres-p3": {"strides": (1, 2, 2, 2), "pool": 3},
    "small-cnn-fullres-p1": {"strides": (1, 2, 2, 2), "pool": 1},
    "small-cnn-fullres-bn": {"strides": (1, 2, 2, 2), "feature_bn": True},  # centred, standardised features
    # the default: the last 4x4 map kept whole (no average pooling: the layout of the garment is in the
    # features) and standardised, 8w * 16 = 2048 features at width 16
    "small-cnn-grid": {"pool": 4, "feature_bn": True},
    "small-cnn-fullres-grid": {"strides": (1, 2, 2, 2), "pool": 4, "feature_bn": True},
}
BACKBONES = BACKBONES + tuple(SMALL_CNN_VARIANTS)


# the model group of the config (stopgrad.config.OPTION_GROUPS): its keys, validated by check_options
OPTIONS = ("backbone", "width", "heads", "small_input", "freeze_patch_embed")


def check_options(cfg) -> None:
    """Validate the model group of a :class:`~stopgrad.config.Config` (:data:`OPTIONS`); raises ConfigError."""
    from .config import ConfigError
    from .heads import HEAD_PRESETS

    name = cfg.backbone
    if not isinstance(name, str) or not name:
        raise ConfigError(f"backbone must be a name, got {name!r}; `stopgrad list` lists them")
    if ":" in name:
        check_library_name(*name.split(":", 1))
    elif name not in BACKBONES:
        raise ConfigError(f"invalid backbone {name!r}; choose one of {', '.join(BACKBONES)}, torchvision:NAME, "
                          "timm:NAME")
    if cfg.heads not in HEAD_PRESETS:
        raise ConfigError(f"invalid heads {cfg.heads!r}; choose one of {', '.join(HEAD_PRESETS)}")
    if cfg.width <= 0:
        raise ConfigError(f"width must be positive, got {cfg.width}")
    if cfg.small_input not in (None, True, False):
        raise ConfigError(f"small_input must be true, false or null (automatic), got {cfg.small_input!r}")
    if not isinstance(cfg.freeze_patch_embed, bool):
        raise ConfigError(f"freeze_patch_embed must be true or false, got {cfg.freeze_patch_embed!r}")
    if cfg.freeze_patch_embed and ":" not in name and name != "vit-tiny":
        raise ConfigError(f"freeze_patch_embed fixes a ViT's patch projection; backbone {name!r} has none "
                          "(use vit-tiny, torchvision:vit_*, torchvision:swin_* or a timm ViT)")


# ----------------------------------------------------------------------------- backbones from libraries
TIMM_INSTALL = 'pip install "stopgrad[timm]"'
LIST_COMMANDS = {
    "torchvision": 'python -c "import torchvision; print(torchvision.models.list_models(module=torchvision.models))"',
    "timm": 'python -c "import timm; print(timm.list_models())"',
}
SMALL_SIDE = 64  # small_input None: on for images of this side or smaller
# vit-tiny: a 4x4 grid of patches (patch side ceil(image / 4)), DeiT-Tiny's layout scaled down for CPUs
VIT_TINY = {"num_layers": 4, "num_heads": 4, "hidden_dim": 128, "mlp_dim": 256}
TIMM_SMALL_PATCH = 4  # timm ViTs with small_input: 4-pixel patches (7x7 tokens at 28 px, 8x8 at 32 px)


class LibraryBackbone(nn.Module):
    """A torchvision or timm model as a backbone: ``model`` is the library's module, unchanged but
    for its classifier (``nn.Identity``) and the ``changes`` listed, so ``model.state_dict()``
    loads into the library's model built with ``kwargs``.

    ``forward`` repeats 1-channel images to 3 (``expand_gray``, torchvision models: the model
    keeps its RGB stem and its key names) and resizes images whose side is not ``input_size``
    (a ViT built for a fixed side; None: any side), then flattens the model's output.

    Attributes: ``library`` ("torchvision" or "timm"), ``arch`` (the constructor's name),
    ``kwargs`` (its non-default arguments), ``classifier`` (the attribute path replaced by
    ``nn.Identity``), ``changes`` (other replaced modules, as Python statements on the model),
    ``feature_dim``.

    >>> net = sg.build_backbone("torchvision:resnet18", 3, image_size=224)
    >>> type(net.model).__name__, net.classifier, net.changes, net.feature_dim
    ('ResNet', 'fc', [], 512)
    """

    def __init__(self, model: nn.Module, library: str, arch: str, kwargs: dict, classifier: str,
                 changes: list[str], expand_gray: bool = False, input_size: int | None = None):
        super().__init__()
        self.model = model
        self.library, self.arch, self.kwargs, self.classifier = library, arch, dict(kwargs), classifier
        self.changes, self.expand_gray, self.input_size = list(changes), expand_gray, input_size
        self.feature_dim = 0  # set by build_backbone from a forward pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.expand_gray and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.model(x).flatten(1)


def input_side(cfg) -> int:
    """The side of the images a run's backbone sees: ``image_size``, else the data set's."""
    from .data.datasets import FOLDER_SIDE, SHAPES
    if cfg.image_size:
        return cfg.image_size
    return SHAPES[cfg.dataset][1] if cfg.dataset in SHAPES else FOLDER_SIDE


def dataset_channels(cfg) -> int:
    """C of a run's images, from its data set's name (image folders are read as RGB)."""
    from .data.datasets import SHAPES
    return SHAPES[cfg.dataset][0] if cfg.dataset in SHAPES else 3


def backbone_for(cfg, in_channels: int) -> nn.Module:
    """The backbone of a :class:`~stopgrad.config.Config`: ``build_backbone`` with its model keys and input side."""
    return build_backbone(cfg.backbone, in_channels, cfg.width, image_size=input_side(cfg),
                          small_input=cfg.small_input, freeze_patch_embed=cfg.freeze_patch_embed)


def _import_timm():
    try:
        import timm
    except ImportError:
        from .config import ConfigError
        raise ConfigError(f"timm backbones need the timm package: {TIMM_INSTALL}") from None
    return timm


def _torchvision_names() -> list[str]:
    return models.list_models(module=models)


def check_library_name(library: str, arch: str) -> None:
    """One-line ConfigError unless ``arch`` is a model of ``library`` (torchvision or timm)."""
    from .config import ConfigError
    if library not in LIBRARIES:
        raise ConfigError(f"unknown backbone library {library!r} in {library}:{arch}; use torchvision:NAME or "
                          "timm:NAME")
    names = _torchvision_names() if library == "torchvision" else None
    if library == "timm":
        timm = _import_timm()
        if arch and timm.is_model(arch):
            return
        names = timm.list_models()
    elif arch in names:
        return
    close = difflib.get_close_matches(arch, names, n=1)
    hint = f"did you mean {library}:{close[0]}? " if close else ""
    raise ConfigError(f"unknown {library} model {arch!r}; {hint}list the names with `{LIST_COMMANDS[library]}`")


def _set_module(net: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, module)


def _strip_classifier(net: nn.Module, num_classes: int = 1000) -> str:
    """Replace the classification layer (the last Linear / 1x1 Conv of ``fc``, ``classifier``,
    ``heads`` or ``head``) by ``nn.Identity``; returns its attribute path."""
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(net, attr, None)
        if not isinstance(head, nn.Module):
            continue
        layers = [n for n, m in head.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
                  and (getattr(m, "out_features", None) or getattr(m, "out_channels", None)) == num_classes]
        if layers:
            path = f"{attr}.{layers[-1]}" if layers[-1] else attr
            _set_module(net, path, nn.Identity())
            return path
    from .config import ConfigError
    raise ConfigError(f"cannot find the classifier of {type(net).__name__} (no fc, classifier, heads or head "
                      "layer); use another backbone")


def _vit_patch(arch: str) -> int:
    return int(arch.rsplit("_", 1)[-1])  # vit_b_16 -> 16


def _torchvision_model(arch: str, in_channels: int, image_size: int | None, small_input: bool | None):
    from .config import ConfigError
    if in_channels not in (1, 3):
        raise ConfigError(f"torchvision backbones take 1- or 3-channel images, these have {in_channels}")
    small = (image_size is not None and image_size <= SMALL_SIDE) if small_input is None else small_input
    kwargs, extra, input_size = {}, {}, None
    if arch in ("googlenet", "inception_v3"):  # no auxiliary classifiers: they are not part of the encoder
        kwargs["aux_logits"], extra["init_weights"] = False, True
    if arch.startswith("vit_"):  # torchvision ViTs take image_size (the builder fixes the patch)
        patch = _vit_patch(arch)
        input_size = math.ceil((image_size or 224) / patch) * patch
        if input_size != 224:
            kwargs["image_size"] = input_size
    net = models.get_model(arch, weights=None, **kwargs, **extra)
    changes = []
    if small and isinstance(net, models.ResNet):  # the CIFAR stem: 3x3 stride-1 conv, no max-pool
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        changes = [f"conv1 = nn.Conv2d(3, {net.conv1.out_channels}, 3, 1, 1, bias=False)", "maxpool = nn.Identity()"]
    classifier = _strip_classifier(net)
    return LibraryBackbone(net, "torchvision", arch, kwargs, classifier, changes, expand_gray=in_channels == 1,
                           input_size=input_size)


def _vit_tiny(in_channels: int, image_size: int | None) -> LibraryBackbone:
    from torchvision.models.vision_transformer import VisionTransformer
    patch = math.ceil((image_size or 32) / 4)
    kwargs = {"image_size": 4 * patch, "patch_size": patch, **VIT_TINY}
    net = VisionTransformer(**kwargs)
    classifier = _strip_classifier(net)
    return LibraryBackbone(net, "torchvision", "vision_transformer.VisionTransformer", kwargs, classifier, [],
                           expand_gray=in_channels == 1, input_size=4 * patch)


def _timm_model(arch: str, in_channels: int, image_size: int | None, small_input: bool | None):
    timm = _import_timm()
    small = (image_size is not None and image_size <= SMALL_SIDE) if small_input is None else small_input
    kwargs = {"in_chans": in_channels} if in_channels != 3 else {}
    net = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    embed, input_size = getattr(net, "patch_embed", None), None
    patch = getattr(embed, "patch_size", None)
    native = getattr(embed, "img_size", None)
    if patch is not None and native is not None:  # a ViT-style model, built for one image size
        patch = TIMM_SMALL_PATCH if small else patch[0]
        side = math.ceil((image_size or native[0]) / patch) * patch
        size_kwargs = {"img_size": side, **({"patch_size": patch} if patch != embed.patch_size[0] else {})}
        input_size = native[0]
        if side != native[0] or "patch_size" in size_kwargs:
            try:
                net = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs, **size_kwargs)
                kwargs.update(size_kwargs)
                input_size = side
            except TypeError:  # the model takes no size: images are resized to its own
                pass
    return LibraryBackbone(net, "timm", arch, kwargs, "", [], input_size=input_size)


def patch_embedding(backbone: nn.Module) -> nn.Module | None:
    """A ViT's patch projection (torchvision ``conv_proj`` / Swin's first conv, timm ``patch_embed``), or None."""
    net = backbone.model if isinstance(backbone, LibraryBackbone) else backbone
    if isinstance(net, models.VisionTransformer):
        return net.conv_proj
    if isinstance(net, models.SwinTransformer):
        return net.features[0][0]
    embed = getattr(net, "patch_embed", None)
    return embed if isinstance(embed, nn.Module) else None


def _finish(net: LibraryBackbone, name: str, in_channels: int, image_size: int | None,
            freeze_patch_embed: bool) -> LibraryBackbone:
    """``feature_dim`` from one forward pass (eval mode, no gradient, no random numbers drawn), and
    the frozen patch projection."""
    from .config import ConfigError
    side = image_size or net.input_size or 224
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, in_channels, side, side))
    except Exception as exc:  # a library's own message, e.g. an input too small for its downsampling
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ConfigError(f"backbone {name} does not run on {in_channels}x{side}x{side} images ({detail}); "
                          "choose another --image-size or backbone") from None
    finally:
        net.train(was_training)
    net.feature_dim = out.shape[1]
    if freeze_patch_embed:
        embed = patch_embedding(net)
        if embed is None:
            raise ConfigError(f"freeze_patch_embed fixes a ViT's patch projection; backbone {name} has none "
                              "(use vit-tiny, torchvision:vit_*, torchvision:swin_* or a timm ViT)")
        for p in embed.parameters():
            p.requires_grad_(False)
    return net
