"""Evaluating a saved run: ``stopgrad eval NAME --run DIR``, and the same from Python.

:func:`evaluate_saved` loads a run directory (its config, data set and weights: the final
``backbone.safetensors``, or the last checkpoint of an unfinished run), runs one evaluator and,
unless ``save=False``, appends the result to the run's ``evaluations.jsonl`` and refreshes its
``report.md``.

    >>> from stopgrad.evaluate.saved import evaluate_saved
    >>> evaluate_saved("linear", "runs/my-run", protocol="fast")  # doctest: +SKIP
    {'evaluation': 'linear', 'protocol': 'fast', 'top1': 0.86, 'top5': 0.99, ...}
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import Config, ConfigError
from ..data.augment import RECIPES
from ..data.datasets import ImageData, load_dataset

EVALUATIONS = ("knn", "linear", "transfer", "tsne", "geometry")


@dataclass
class LoadedRun:
    cfg: Config
    data: ImageData
    train_x: torch.Tensor  # the run's training images (the kNN bank, the probes' training set)
    train_y: torch.Tensor
    model: nn.Module  # the whole method when its checkpoint is there, else just the backbone
    backbone: nn.Module
    weights: str  # which file the weights came from

    @property
    def size(self) -> int:
        return self.cfg.image_size or self.data.image_size


def load_run(run_dir: Path, device: str | None = None, whole_model: bool = False) -> LoadedRun:
    """Config, data and weights of a run; ``whole_model`` also loads the heads (from the checkpoint)."""
    from ..backbones import backbone_for
    from ..runs import (BACKBONE_FILE, CHECKPOINT, check_checkpoint, load_backbone_state, load_checkpoint,
                        load_model_state, read_config)
    from ..train import new_model, pick_device, training_images

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    dev = pick_device(device or cfg.device)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.image_size, stream=cfg.stream, strict=cfg.strict_data)
    train_x, train_y = training_images(cfg, data)
    has_backbone, has_checkpoint = (run_dir / BACKBONE_FILE).is_file(), (run_dir / CHECKPOINT).is_file()
    if not has_backbone and not has_checkpoint:
        raise ConfigError(f"{run_dir} holds no weights yet ({BACKBONE_FILE} or {CHECKPOINT}); "
                          "evaluate a run that has finished at least one epoch")
    if whole_model and has_checkpoint:
        model = new_model(cfg, data.channels, len(train_x), dev)
        state = load_checkpoint(run_dir, dev)
        check_checkpoint(state, cfg, run_dir / CHECKPOINT)
        load_model_state(model, state["model"], run_dir / CHECKPOINT)
        return LoadedRun(cfg, data, train_x, train_y, model, model.backbone, CHECKPOINT)
    backbone = backbone_for(cfg, data.channels)
    if has_backbone:
        state, source = load_backbone_state(run_dir / BACKBONE_FILE), BACKBONE_FILE
    else:
        checkpoint = load_checkpoint(run_dir, "cpu")
        check_checkpoint(checkpoint, cfg, run_dir / CHECKPOINT)
        state = {k[len("backbone."):]: v for k, v in checkpoint["model"].items() if k.startswith("backbone.")}
        source = CHECKPOINT
    load_model_state(backbone, state, run_dir / source)
    backbone.to(dev)
    return LoadedRun(cfg, data, train_x, train_y, backbone, backbone, source)


# the options of the evaluations whose options are all read here (linear and transfer pass theirs on
# to their evaluator, whose signature rejects an unknown one)
_OPTIONS = {"knn": {"ks", "temperature", "pixels"}, "tsne": {"samples", "out"}, "geometry": {"pairs", "out"}}


def _pixels(run: LoadedRun, k: int, temperature: float, linear: bool = False, wd: float = 1.0, log=None) -> dict | None:
    """The pixel baselines beside an evaluation (:mod:`.baselines`, cached): kNN with this k and T, or the
    fast linear probe with this weight decay; None for images streamed from disk."""
    from .baselines import pixel_baselines
    if not isinstance(run.train_x, torch.Tensor) or not isinstance(run.data.test_x, torch.Tensor):
        return None
    if log is not None and linear:
        log("pixels: the fast linear probe on the pixels (cached per data set after the first time)")
    b = pixel_baselines(run.train_x.cpu(), run.train_y.cpu(), run.data.test_x, run.data.test_y, k, temperature,
                        linear=linear, name=run.data.name, wd=wd)
    if linear:
        return {"protocol": "fast", "top1": b["linear_top1"], "top5": b["linear_top5"], "wd": wd}
    return {"k": k, "temperature": temperature, **{key: b[key] for key in
                                                   ("knn_top1", "knn1_top1", "centred_knn_top1", "centred_knn1_top1")}}


def evaluate_saved(name: str, run_dir: Path, device: str | None = None, save: bool = True, log=None,
                   **options) -> dict:
    """Run evaluation ``name`` (one of :data:`EVALUATIONS`) on a saved run; returns its result.

    Options per evaluation: knn ``ks`` (default (1, 200)), ``temperature``; linear ``protocol``
    ("fast" / "paper") and that protocol's settings; knn and linear ``pixels`` (default True: the
    result's ``pixels`` holds the pixel baselines, :func:`stopgrad.pixel_baselines`, with the same
    largest k and T, or the same fast probe; not for the paper protocol); transfer ``target`` (required), ``data_dir``,
    ``metric``, ``val_fraction``; tsne ``samples``, ``out`` (PNG path, default DIR/tsne.png);
    geometry ``pairs``.

    Args:
        name: ``"knn"``, ``"linear"``, ``"transfer"``, ``"tsne"`` or ``"geometry"``.
        run_dir: the run's ``--out`` folder; its config names the data set, whose (N, C, H, W)
            images are fed to the weights there.
        device: where to evaluate (default: the run's ``device``).
        save: append the result to ``evaluations.jsonl`` and refresh ``report.md``.
    Returns:
        a dict: ``evaluation``, ``weights`` (the file read) and the evaluator's result.

    A run directory as training leaves it (here: its config and an untrained width-4 backbone):

    >>> import tempfile
    >>> from pathlib import Path
    >>> from stopgrad.runs import save_backbone, write_config
    >>> _ = torch.manual_seed(0)
    >>> cfg = sg.build_config(overrides={"dataset": "digits", "width": 4})
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_config(Path(tmp), cfg, device="cpu")
    ...     save_backbone(Path(tmp), sg.build_backbone(cfg.backbone, 1, cfg.width))
    ...     result = sg.evaluate_saved("knn", tmp, device="cpu", save=False, ks=(1, 20))
    >>> result["evaluation"], result["weights"], result["bank"], result["queries"], sorted(result["scores"])
    ('knn', 'backbone.safetensors', 1437, 360, ['1', '20'])
    >>> sg.evaluate_saved("umap", "runs/my-run")
    Traceback (most recent call last):
    ...
    stopgrad.config.ConfigError: unknown evaluation 'umap'; choose one of knn, linear, transfer, tsne, geometry
    """
    from ..report import record_evaluation

    if name not in EVALUATIONS:
        raise ConfigError(f"unknown evaluation {name!r}; choose one of {', '.join(EVALUATIONS)}")
    unknown = sorted(set(options) - _OPTIONS.get(name, set(options)))
    if unknown:
        raise ConfigError(f"{name} takes no option {', '.join(unknown)}; its options: {', '.join(sorted(_OPTIONS[name]))}")
    run_dir = Path(run_dir)
    run = load_run(run_dir, device, whole_model=(name == "geometry"))
    d, size = run.data, run.size
    result: dict = {"evaluation": name, "weights": run.weights}
    if name == "knn":
        from .knn import knn_evaluate
        ks = tuple(sorted(set(options.get("ks", (1, 200)))))
        t = options.get("temperature", 0.1)
        if not ks or min(ks) < 1 or not t > 0:
            raise ConfigError("kNN needs every k >= 1 and a positive --temperature")
        scores = knn_evaluate(run.backbone, run.train_x, run.train_y, d.test_x, d.test_y, d.mean, d.std,
                              run.cfg.image_size, ks, t)
        result.update(temperature=t, bank=len(run.train_x), queries=len(d.test_x),
                      scores={str(k): v for k, v in scores.items()})
        if options.get("pixels", True):
            result["pixels"] = _pixels(run, max(ks), t)
    elif name == "linear":
        from .linear import PROTOCOLS, linear_probe
        protocol = options.pop("protocol", "fast")
        with_pixels = options.pop("pixels", True) and protocol == "fast"
        if protocol not in PROTOCOLS:
            raise ConfigError(f"unknown linear protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if protocol == "paper":
            options.setdefault("log", log)
            if not isinstance(run.train_x, torch.Tensor):
                raise ConfigError("--protocol paper needs the training images in memory; run it on a data set "
                                  "that is not streamed (--no-stream at training time)")
        result.update(linear_probe(run.backbone, run.train_x, run.train_y, d.test_x, d.test_y, d.mean, d.std,
                                   run.cfg.image_size, protocol, **options))
        if with_pixels:
            result["pixels"] = _pixels(run, run.cfg.knn_k, run.cfg.knn_temperature, linear=True,
                                       wd=options.get("wd", 1.0), log=log)
    elif name == "transfer":
        from .transfer import load_target, transfer
        target = options.pop("target", None)
        if not target:
            raise ConfigError("give the target data set: --target {digits,fashion-mnist,cifar10,cifar100,folder:PATH}")
        data = load_target(target, options.pop("data_dir", None), size)
        result.update(transfer(run.backbone, data, d.mean, d.std, size, d.channels, log=log, **options))
    elif name == "tsne":
        from .tsne import tsne_plot
        out = Path(options.get("out") or run_dir / "tsne.png")
        out.parent.mkdir(parents=True, exist_ok=True)
        n = options.get("samples", 2000)
        tsne_plot(run.backbone, d.test_x, d.test_y, d.mean, d.std, out, run.cfg.image_size, n=n,
                  title=f"t-SNE, {run.cfg.method} ({run_dir.name})",
                  class_names=list(d.classes) if d.classes else None)
        result.update(figure=str(out), samples=min(n, len(d.test_x)))
    else:  # geometry
        from .geometry import geometry, plot_spectra
        metrics = geometry(run.model, d.test_x, d.test_y, d.mean, d.std, RECIPES[run.cfg.augment],
                           run.cfg.image_size, pairs=options.get("pairs", 2048), keep_spectra=True)
        spectra = metrics.pop("spectra")
        figure = plot_spectra(spectra, Path(options.get("out") or run_dir / "spectrum.png"))
        result.update(metrics, figure=str(figure))
    if save:
        record_evaluation(run_dir, {k: v for k, v in result.items() if k != "sweep"})
    return result
