"""Exporting a run's backbone to the libraries people fine-tune in: ``stopgrad export RUN --format F --out FILE``.

* ``torchvision``: the state dict of the torchvision model (``torchvision:NAME``, ``vit-tiny``,
  ``resnet18-cifar``, ``resnet50``), which loads with ``strict=True`` into the torchvision model
  once its classifier is ``nn.Identity()`` (and the small-image changes the run made are made
  again: :data:`EXPORT_NOTE` and the printed statements say which).
* ``timm``: the state dict of a ``timm:NAME`` backbone, which loads with ``strict=True`` into
  ``timm.create_model(NAME, num_classes=0, ...)`` with the arguments the run built it with.
* ``detectron2``: a ResNet's weights under detectron2's names (``stem.conv1.weight``,
  ``stem.conv1.norm.*``, ``res2.0.conv1.weight``, ``res2.0.shortcut.norm.*``, ...) in the pickle
  file detectron2's checkpointer reads (``{"model": {name: numpy array}, ...}``).

The state dict is written as safetensors (``.safetensors``) or as a ``torch.save`` file of tensors
only (``.pt`` / ``.pth``, which loads with ``weights_only=True``); detectron2 files are ``.pkl``.
An existing ``--out`` is kept unless ``force`` (then it is replaced in one rename).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .config import ConfigError

FORMATS = ("torchvision", "timm", "detectron2")
STATE_SUFFIXES = (".safetensors", ".pt", ".pth")


def _kwargs_text(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _attr_path(path: str) -> str:
    """``classifier.2`` -> ``classifier[2]``: the Python spelling of a module path."""
    return "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in path.split("."))


def _run_backbone(run_dir: Path):
    """(config, backbone with the run's weights, the file they came from)."""
    from .backbones import backbone_for, dataset_channels
    from .runs import (BACKBONE_FILE, CHECKPOINT, check_checkpoint, load_backbone_state, load_checkpoint,
                       load_model_state, read_config)
    cfg = read_config(run_dir)
    net = backbone_for(cfg, dataset_channels(cfg))
    if (run_dir / BACKBONE_FILE).is_file():
        state, source = load_backbone_state(run_dir / BACKBONE_FILE), run_dir / BACKBONE_FILE
    elif (run_dir / CHECKPOINT).is_file():
        checkpoint = load_checkpoint(run_dir, "cpu")
        check_checkpoint(checkpoint, cfg, run_dir / CHECKPOINT)
        state = {k[len("backbone."):]: v for k, v in checkpoint["model"].items() if k.startswith("backbone.")}
        source = run_dir / CHECKPOINT
    else:
        raise ConfigError(f"{run_dir} holds no weights yet ({BACKBONE_FILE} or {CHECKPOINT}); export a run that "
                          "has finished at least one epoch")
    load_model_state(net, state, source)
    return cfg, net, source


def _torchvision_layout(cfg, net, fmt: str) -> tuple[dict, list[str], list[str]]:
    """(state dict with torchvision's key names, Python statements that build a model it loads into, notes)."""
    from .backbones import LibraryBackbone, dataset_channels
    from torchvision.models import ResNet
    if isinstance(net, LibraryBackbone):
        if net.library != "torchvision":
            raise ConfigError(f"backbone {cfg.backbone} is a timm model; export it with --format timm")
        build = (f"model = torchvision.models.{net.arch}({_kwargs_text(net.kwargs)})")
        lines = [build, f"model{_attr_path(net.classifier)} = nn.Identity()",
                 *(f"model.{change}" for change in net.changes)]
        notes = []
        if net.changes:
            notes.append(f"the run used the small-image stem ({', '.join(net.changes)}): make the same changes "
                         "before loading, as above")
        if net.expand_gray:
            notes.append("the run's gray images were repeated to 3 channels: feed it gray images as RGB")
        return dict(net.model.state_dict()), lines, notes
    if isinstance(net, ResNet):  # resnet18-cifar, resnet50: torchvision ResNets with their own stem
        arch = "resnet18" if cfg.backbone == "resnet18-cifar" else "resnet50"
        channels = dataset_channels(cfg)
        lines = [f"model = torchvision.models.{arch}()", "model.fc = nn.Identity()"]
        notes = []
        if cfg.backbone == "resnet18-cifar":
            lines += [f"model.conv1 = nn.Conv2d({channels}, 64, 3, 1, 1, bias=False)", "model.maxpool = nn.Identity()"]
            notes.append("resnet18-cifar has the CIFAR stem (3x3 stride-1 conv1, no max-pool): its conv1 does not fit "
                         "torchvision's 7x7 one, so replace conv1 and maxpool before loading, as above")
        elif channels != 3:
            lines.append(f"model.conv1 = nn.Conv2d({channels}, 64, 7, 2, 3, bias=False)")
            notes.append(f"the run's images have {channels} channel(s): replace conv1 before loading, as above")
        return dict(net.state_dict()), lines, notes
    hint = " or timm" if fmt == "detectron2" else ""
    raise ConfigError(f"backbone {cfg.backbone} is stopgrad's own network, not a torchvision{hint} model: use its "
                      "backbone.safetensors with stopgrad.build_backbone, or train a torchvision: backbone to export")


def _timm_layout(cfg, net) -> tuple[dict, list[str], list[str]]:
    from .backbones import LibraryBackbone
    if not isinstance(net, LibraryBackbone) or net.library != "timm":
        raise ConfigError(f"--format timm exports timm:NAME backbones; {cfg.backbone} is not one "
                          "(use --format torchvision)")
    kwargs = _kwargs_text({"num_classes": 0, **net.kwargs})
    lines = [f"model = timm.create_model({net.arch!r}, {kwargs})"]
    notes = [f"the run built it with {_kwargs_text(net.kwargs)}: pass the same to create_model"] if net.kwargs else []
    return dict(net.model.state_dict()), lines, notes


def detectron2_name(key: str) -> str:
    """A torchvision ResNet key under detectron2's name (its convert-torchvision-to-d2 layout).

    >>> from stopgrad.export import detectron2_name
    >>> detectron2_name("bn1.running_mean"), detectron2_name("layer1.0.bn2.weight")
    ('stem.conv1.norm.running_mean', 'res2.0.conv2.norm.weight')
    >>> detectron2_name("layer3.0.downsample.0.weight"), detectron2_name("layer3.0.downsample.1.bias")
    ('res4.0.shortcut.weight', 'res4.0.shortcut.norm.bias')
    """
    parts = key.split(".")
    if not parts[0].startswith("layer"):
        parts = ["stem", *parts]
    else:
        parts[0] = f"res{int(parts[0][len('layer'):]) + 1}"
    name = ".".join(parts)
    for i in (1, 2, 3):
        name = name.replace(f"bn{i}.", f"conv{i}.norm.")
    return name.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")


def _detectron2_layout(cfg, net) -> tuple[dict, list[str], list[str]]:
    from .backbones import LibraryBackbone
    if isinstance(net, LibraryBackbone) and net.library == "timm":
        state = dict(net.model.state_dict())
    else:
        state = _torchvision_layout(cfg, net, "detectron2")[0]
    stems = {k.split(".")[0] for k in state}
    if not {"conv1", "bn1", "layer1", "layer4"} <= stems or not stems <= {"conv1", "bn1", "layer1", "layer2",
                                                                           "layer3", "layer4"}:
        raise ConfigError(f"--format detectron2 exports ResNets (torchvision's layout: conv1, bn1, layer1-4); "
                          f"backbone {cfg.backbone} is not one")
    out = {detectron2_name(k): v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    bottleneck = "layer1.0.conv3.weight" in state
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in (1, 2, 3, 4))
    depths = {(False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34, (True, (3, 4, 6, 3)): 50,
              (True, (3, 4, 23, 3)): 101, (True, (3, 8, 36, 3)): 152}
    depth = depths.get((bottleneck, blocks))
    if depth is None:
        raise ConfigError(f"backbone {cfg.backbone} has {blocks} blocks per stage, not a depth detectron2 builds "
                          "(18, 34, 50, 101, 152)")
    conv2 = state["layer1.0.conv2.weight"]
    options = [f"MODEL.RESNETS.DEPTH {depth}", "MODEL.RESNETS.STRIDE_IN_1X1 False"]
    if bottleneck:
        width, groups = conv2.shape[0], conv2.shape[0] // conv2.shape[1]
        if groups > 1 or width != 64:
            options += [f"MODEL.RESNETS.NUM_GROUPS {groups}", f"MODEL.RESNETS.WIDTH_PER_GROUP {width // groups}"]
    else:
        options.append("MODEL.RESNETS.RES2_OUT_CHANNELS 64")
    notes = []
    stem = out["stem.conv1.weight"]
    if tuple(stem.shape[1:]) != (3, 7, 7):
        notes.append(f"stem.conv1 is {tuple(stem.shape)} (the run's small-image stem or gray input), not detectron2's "
                     "(64, 3, 7, 7): detectron2 skips it with a shape-mismatch warning and trains its stem from "
                     "scratch; res2-res5 load")
    return out, options, notes


def export_backbone(run_dir: Path | str, fmt: str, out: Path | str, force: bool = False) -> dict:
    """Write a run's backbone for another library; returns what was written and how to load it.

    Args:
        run_dir: the run's ``--out`` folder (its ``backbone.safetensors``, else its last checkpoint).
        fmt: ``"torchvision"``, ``"timm"`` or ``"detectron2"``.
        out: the file: ``.safetensors``, ``.pt`` or ``.pth`` (torchvision, timm), ``.pkl`` (detectron2).
        force: replace an existing ``out``.
    Returns:
        a dict: ``out``, ``format``, ``tensors`` (count), ``load`` (Python statements, or detectron2
        config options) and ``notes``.
    Raises:
        ConfigError: a backbone that does not exist in that library's layout, a bad suffix, an existing ``out``.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from stopgrad.runs import save_backbone, write_config
    >>> from stopgrad.export import export_backbone
    >>> cfg = sg.build_config(overrides={"dataset": "cifar10", "backbone": "torchvision:resnet18"})
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_config(Path(tmp), cfg, device="cpu")
    ...     save_backbone(Path(tmp), sg.build_backbone(cfg.backbone, 3, image_size=32))
    ...     result = export_backbone(tmp, "torchvision", Path(tmp) / "r18.pt")
    ...     state = torch.load(Path(tmp) / "r18.pt", weights_only=True)
    >>> result["load"][:2], len(state), "conv1.weight" in state
    (['model = torchvision.models.resnet18()', 'model.fc = nn.Identity()'], 120, True)
    """
    from .runs import atomic_write
    run_dir, out = Path(run_dir), Path(out)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    suffixes = (".pkl",) if fmt == "detectron2" else STATE_SUFFIXES
    if out.suffix not in suffixes:
        raise ConfigError(f"--out {out} must end in {' or '.join(suffixes)} for --format {fmt}")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file name")
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; choose another --out, or add --force to replace it")
    cfg, net, source = _run_backbone(run_dir)
    layout = {"torchvision": lambda: _torchvision_layout(cfg, net, fmt), "timm": lambda: _timm_layout(cfg, net),
              "detectron2": lambda: _detectron2_layout(cfg, net)}[fmt]
    state, load, notes = layout()
    if fmt == "detectron2":
        record = {"model": {k: v.detach().cpu().numpy() for k, v in state.items()}, "__author__": "stopgrad",
                  "matching_heuristics": True}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                pickle.dump(record, f)
    else:
        tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        if out.suffix == ".safetensors":
            from safetensors.torch import save_file

            def write(tmp: str) -> None:
                save_file(tensors, tmp, metadata={"format": "pt", "load": "; ".join(load)})
        else:
            def write(tmp: str) -> None:
                torch.save(tensors, tmp)
    atomic_write(out, write)
    return {"out": str(out), "format": fmt, "weights": str(source), "tensors": len(state), "load": load,
            "notes": notes}
