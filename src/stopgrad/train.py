"""The training loop: the only one in stopgrad.

Data sets that fit live on the training device as one uint8 tensor and an epoch is a permutation
of indices into it; image folders too large for that stream through decoding workers into the
same path. Every step augments all views of its batch on the device in one call, runs the method
(bfloat16 autocast where the device has native bfloat16, channels-last layout), steps the
optimiser (fused on CUDA, foreach on CPU) and then the momentum copy, in that order, written
once here. Nothing in a step waits for the device: losses and statistics are summed on the
device and read once per epoch.

Each epoch draws its shuffling, augmentation and partners from generators seeded by (seed, epoch),
so a run resumed from an epoch checkpoint repeats the uninterrupted run exactly.
"""
from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import runs
from .config import Config, ConfigError
from .data import RECIPES, augment, load_dataset
from .data.datasets import ImageData
from .data.stream import iter_batches
from .ema import momentum_at
from .evaluate.geometry import plot_spectra
from .evaluate.online import CollapseAlarm, evaluate_run, projection_dim
from .gsg import derangement
from .methods import build_method
from .schedules import lr_at


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for CUDA, but no CUDA device is available; use --device cpu")
    return torch.device(name)


def default_run_dir(cfg: Config) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    data = cfg.dataset.replace("folder:", "folder-").replace("/", "_")[:40]
    return Path("runs") / f"{data}-{cfg.method}-{cfg.stopgrad}-{stamp}"


def epoch_generators(seed: int, epoch: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """(device generator for shuffling/augmentation/random policy, CPU generator for partners)."""
    g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)
    g_cpu = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 500_000)
    return g, g_cpu


def make_views(images: torch.Tensor, n_views: int, recipe, mean, std, size, g,
               channels_last: bool = False) -> torch.Tensor:
    """(V, B, C, S, S) augmented views of a (B, C, H, W) uint8 batch, in one augmentation call.

    With ``channels_last`` the views are laid out so that ``views.flatten(0, 1)`` is NHWC.
    """
    views = augment(images, recipe, mean, std, size, g, views=n_views)
    if channels_last:
        views = views.contiguous(memory_format=torch.channels_last)
    return views.unflatten(0, (n_views, images.shape[0]))


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matmuls and convolutions natively (not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # absent in older torch: False
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def use_amp(cfg: Config, device: torch.device) -> bool:
    """bfloat16 autocast for this config on this device; ``amp: null`` means wherever bfloat16 is native."""
    return native_bfloat16(device) if cfg.amp is None else cfg.amp


def make_optimizer(params, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    """SGD with momentum; one fused kernel on CUDA, multi-tensor (foreach) kernels on CPU."""
    impl = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay, **impl)


def training_images(cfg: Config, data: ImageData) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's training images and labels: all of them, or ``train_subset`` chosen with the seed.

    They are also the kNN bank, so evaluation after training selects them the same way.
    """
    if cfg.train_subset is None:
        return data.train_x, data.train_y
    if cfg.train_subset > len(data.train_x):
        raise ConfigError(f"train_subset {cfg.train_subset} exceeds the {len(data.train_x)} training images")
    keep = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.train_subset]
    return data.train_x[keep], data.train_y[keep]


@dataclass
class Setup:
    """Everything a run trains with, built from its config."""
    cfg: Config
    device: torch.device
    data: ImageData
    train_x: torch.Tensor  # uint8 on the device, or a FolderImages streamed from disk
    train_y: torch.Tensor  # labels, on the device (the statistics read them; no loss does)
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    forward: torch.nn.Module  # the model, or its compiled form
    amp: bool
    channels_last: bool

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch

    def evaluate(self, keep_spectra: bool = False) -> dict:
        """kNN and (with ``eval_geometry``) geometry of the current model; the run's training images are the bank."""
        return evaluate_run(self.model, self.cfg, self.data, self.train_x, self.train_y, keep_spectra)


def new_model(cfg: Config, in_channels: int, num_images: int, device: torch.device) -> torch.nn.Module:
    """The run's method, initialised from ``cfg.seed``, on ``device``."""
    torch.manual_seed(cfg.seed)
    model = build_method(cfg, in_channels).to(device)
    if hasattr(model, "set_num_images"):  # a per-image memory bank (instdisc) is sized by the training set
        model.set_num_images(num_images)
    return model


def build(cfg: Config, data: ImageData | None = None) -> Setup:
    cfg.validate()
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = data or load_dataset(cfg.dataset, cfg.data_dir, cfg.image_size, stream=cfg.stream)
    train_x, train_y = training_images(cfg, data)
    steps = len(train_x) // cfg.batch_size
    if steps == 0:
        raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {len(train_x)} training images; lower --batch-size")
    amp, channels_last = use_amp(cfg, device), cfg.channels_last
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels once
    model = new_model(cfg, data.channels, len(train_x), device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]  # the momentum copy is frozen
    optimizer = make_optimizer(trainable, cfg, device)
    forward = torch.compile(model) if cfg.compile else model
    return Setup(cfg, device, data, train_x.to(device), train_y.to(device), model, optimizer, steps, forward, amp,
                 channels_last)


def train_step(s: Setup, views: torch.Tensor, partners: torch.Tensor, g: torch.Generator | None,
               lr: float, momentum: float, indices: torch.Tensor | None = None,
               labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step on ready views; returns the (detached) loss and statistics, on the device.

    ``indices`` are the batch's positions in the training set (for methods with a memory bank),
    ``labels`` its labels (for the statistics only).
    """
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.amp):
        loss, stats = s.forward(views, partners, g, indices, labels)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    s.optimizer.step()
    s.model.update_momentum(momentum)
    return loss.detach(), stats


@dataclass
class EpochContext:
    """What a method's ``begin_epoch(ctx, order) -> (order, stats)`` hook reads (SPCL: embed and
    cluster the training set, then build the epoch's batches). Its random draws come from
    ``generator``, the epoch's device generator, or from seeds of (``seed``, ``epoch``)."""
    epoch: int
    seed: int
    images: torch.Tensor  # the training images: uint8 (N, C, H, W) on the device, or a streamed FolderImages
    labels: torch.Tensor  # (N,) on the device
    batch_size: int
    steps: int  # the epoch's batches: the returned order needs steps * batch_size entries
    generator: torch.Generator
    device: torch.device
    amp: bool
    workers: int | None
    make_view: Callable[[torch.Tensor], torch.Tensor]  # uint8 (B, C, H, W) -> one augmented view (B, C, S, S)

    def batches(self, size: int):
        """uint8 batches of ``size`` training images on the device, in training-set order (the last shorter)."""
        return iter_batches(self.images, torch.arange(len(self.images), device=self.device), size, self.device,
                            drop_last=False, workers=self.workers)


def epoch_partners(s: Setup, g_cpu: torch.Generator, steps: int) -> torch.Tensor:
    """(steps, B) partner indices of every step of an epoch, drawn on the host, copied to the device once."""
    partners = torch.stack([derangement(s.cfg.batch_size, g_cpu) for _ in range(steps)])
    partners = partners.pin_memory() if s.device.type == "cuda" else partners
    return partners.to(s.device, non_blocking=True)


def train_epoch(s: Setup, epoch: int, on_step=None, steps: int | None = None) -> dict[str, float]:
    """One epoch of training; returns the means of the loss and the method's statistics (one host sync).

    A statistic that is NaN for a batch (e.g. FN similarity of a batch with no two images of a
    class) is averaged over the other batches.

    ``steps`` stops after that many steps (benchmarks time the training loop this way).
    """
    cfg = s.cfg
    steps = s.steps_per_epoch if steps is None else min(steps, s.steps_per_epoch)
    g, g_cpu = epoch_generators(cfg.seed, epoch, s.device)
    recipe, mean, std = RECIPES[cfg.augment], s.data.mean, s.data.std
    order = torch.randperm(len(s.train_x), generator=g, device=s.device)
    epoch_stats: dict[str, float] = {}
    if hasattr(s.model, "begin_epoch"):  # e.g. SPCL: re-cluster, then batches built around prototypes
        ctx = EpochContext(epoch, cfg.seed, s.train_x, s.train_y, cfg.batch_size, steps, g, s.device, s.amp,
                           cfg.workers, lambda x: make_views(x, 1, recipe, mean, std, cfg.image_size, g,
                                                             s.channels_last)[0])
        order, epoch_stats = s.model.begin_epoch(ctx, order)
    partners = epoch_partners(s, g_cpu, steps)
    warmup = int(cfg.warmup_epochs * s.steps_per_epoch)
    totals: dict[str, torch.Tensor] = {}  # loss and the method's statistics, summed on the device
    counts: dict[str, torch.Tensor] = {}  # batches where each was defined (not NaN)
    batches = iter_batches(s.train_x, order[:steps * cfg.batch_size], cfg.batch_size, s.device,
                           workers=cfg.workers)
    s.model.train()
    for i, batch in enumerate(batches):
        step = (epoch - 1) * s.steps_per_epoch + i
        lr = lr_at(step, s.total_steps, cfg.lr, cfg.lr_schedule, warmup)
        views = make_views(batch, cfg.views, recipe, mean, std, cfg.image_size, g, s.channels_last)
        indices = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        loss, stats = train_step(s, views, partners[i], g, lr,
                                 momentum_at(step, s.total_steps, cfg.ema_momentum, cfg.ema_schedule), indices,
                                 s.train_y[indices])
        for key, value in {"loss": loss, **stats}.items():
            value = value.detach().float()
            defined = ~value.isnan()
            value = value.nan_to_num(0.0)
            totals[key] = totals[key] + value if key in totals else value
            counts[key] = counts[key] + defined if key in counts else defined.float()
        if on_step is not None:
            on_step()
    names = list(totals)
    means = (torch.stack([totals[k] for k in names]) / torch.stack([counts[k] for k in names])).tolist()  # one sync
    return {**{k: None if math.isnan(v) else v for k, v in zip(names, means)}, "lr": lr, **epoch_stats}


def _log(message: str, quiet: bool, error: bool = False) -> None:
    if not quiet:
        import sys

        from tqdm import tqdm
        tqdm.write(message, file=sys.stderr if error else sys.stdout)


def _evaluate(s: Setup, run_dir: Path, row: dict) -> None:
    """Evaluate into ``row`` (timed), and draw the current embedding spectrum."""
    t0 = time.perf_counter()
    metrics = s.evaluate(keep_spectra=True)
    spectra = metrics.pop("spectra", None)
    row.update(metrics)
    row["eval_seconds"] = round(time.perf_counter() - t0, 3)
    if spectra:
        plot_spectra(spectra, run_dir / "spectrum.png", f"embedding spectrum after epoch {row['epoch']}")


def _epoch_line(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}: loss {row['loss']:.4f}", f"collapse std {row['collapse_std']:.4f}"]
    if row.get("knn_top1") is not None:
        parts.append(f"kNN top-1 {row['knn_top1']:.4f} (k=1: {row['knn1_top1']:.4f})")
    if row.get("tp_similarity") is not None and row.get("fn_similarity") is not None:
        parts.append(f"TP/FN similarity {row['tp_similarity']:.3f}/{row['fn_similarity']:.3f}")
    parts.append(f"{row['images_per_second']:.0f} img/s")
    return ", ".join(parts)


def train(cfg: Config, run_dir: Path | None = None, *, resume: bool = False, stop_after: int | None = None,
          quiet: bool = False, progress: bool | None = None, data: ImageData | None = None) -> dict:
    """Train (or resume) a run; returns a summary with the final kNN top-1 and the run directory.

    ``stop_after`` ends the session after that epoch (the run can be resumed); ``progress=None``
    shows a progress bar only on a terminal. With ``stop_on_collapse`` the collapse alarm ends the
    run early (``result["stopped"] == "collapse"``), its last checkpoint kept.
    """
    from tqdm import tqdm

    from .report import write_report

    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    if not resume and (run_dir / runs.CONFIG_FILE).exists():
        raise ConfigError(f"{run_dir} already holds a run; continue it with `stopgrad train --resume {run_dir}` "
                          "or choose another --out")
    s = build(cfg, data)
    alarm = None
    if cfg.eval_geometry and cfg.collapse_threshold > 0:
        size = cfg.image_size or s.data.image_size
        alarm = CollapseAlarm(cfg.collapse_threshold, cfg.collapse_patience,
                              projection_dim(s.model, s.data.channels, size, s.device))
    rows: list[dict] = []
    start_epoch, seconds = 0, 0.0
    if resume:
        state = runs.load_checkpoint(run_dir, s.device)
        s.model.load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
        for group in s.optimizer.param_groups:  # the kernel choice belongs to this device, not the saved one
            group.update(fused=s.optimizer.defaults["fused"], foreach=s.optimizer.defaults["foreach"])
        start_epoch, seconds = state["epoch"], state["seconds"]
        rows = [r for r in runs.read_metrics(run_dir) if r["epoch"] <= start_epoch]
        runs.write_metrics(run_dir, rows)  # drop lines from an epoch that never reached its checkpoint
        for r in rows[1:]:  # the alarm's state as it was
            if alarm is not None and r.get("knn_top1") is not None:
                alarm.update(r["epoch"], r)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.write_config(run_dir, cfg, str(s.device))
        rows = [{"epoch": 0, "step": 0, "loss": None, "lr": lr_at(0, s.total_steps, cfg.lr, cfg.lr_schedule),
                 "collapse_std": None, "seconds": 0.0}]
        _evaluate(s, run_dir, rows[0])
        runs.write_metrics(run_dir, rows)
        _log(f"epoch 0 (random init): kNN top-1 {rows[0]['knn_top1']:.4f} (k=1: {rows[0]['knn1_top1']:.4f})", quiet)

    bar = tqdm(total=s.total_steps, initial=start_epoch * s.steps_per_epoch, unit="step", dynamic_ncols=True,
               disable=(not progress) if progress is not None else None, leave=False)
    last_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    stopped = None
    try:
        for epoch in range(start_epoch + 1, last_epoch + 1):
            if s.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            stats = train_epoch(s, epoch, on_step=bar.update)
            epoch_seconds = time.perf_counter() - t0
            seconds += epoch_seconds
            row = {"epoch": epoch, "step": epoch * s.steps_per_epoch, **stats, "knn_top1": None,
                   "collapse_std": stats["collapse_std"], "seconds": round(seconds, 3),
                   "images_per_second": round(s.steps_per_epoch * cfg.batch_size / epoch_seconds, 1)}
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                _evaluate(s, run_dir, row)
                if alarm is not None and alarm.update(epoch, row):
                    row["collapse_alarm"] = True
            rows.append(row)
            # checkpoint first, then the metrics that refer to it
            runs.save_checkpoint(run_dir, {"model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
                                           "epoch": epoch, "step": row["step"], "seconds": seconds})
            runs.write_metrics(run_dir, rows)
            bar.set_postfix(loss=f"{row['loss']:.3f}", knn=row["knn_top1"])
            _log(_epoch_line(row, cfg.epochs), quiet)
            if row.get("collapse_alarm"):
                if cfg.stop_on_collapse and epoch < cfg.epochs:
                    stopped = "collapse"
                    _log(f"{alarm.message()}; stopping (stop_on_collapse) with the checkpoint of epoch {epoch} "
                         f"kept in {run_dir / runs.CHECKPOINT}", quiet, error=True)
                    break
                _log(alarm.message(), quiet, error=True)
    finally:
        bar.close()
        if rows:
            from .plots import plot_metrics
            plot_metrics(rows, run_dir)
    finished = rows[-1]["epoch"] == cfg.epochs
    if finished:
        runs.save_backbone(run_dir, s.model.backbone)
    write_report(run_dir, cfg, rows)
    evaluated = [r for r in rows if r.get("knn_top1") is not None]
    return {"run_dir": str(run_dir), "finished": finished, "epoch": rows[-1]["epoch"],
            "knn_top1": evaluated[-1]["knn_top1"], "knn_top1_init": rows[0]["knn_top1"], "seconds": seconds,
            "stopped": stopped, "collapse_alarm": any(r.get("collapse_alarm") for r in rows), "metrics": rows}
