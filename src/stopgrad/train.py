"""The training loop: the only one in stopgrad.

Data sets that fit live on the training device as one uint8 tensor and an epoch is a permutation
of indices into it; image folders too large for that stream through decoding workers into the
same path. Every step augments all views of its batch on the device in one call, runs the method
(bfloat16 autocast where the device has native bfloat16, channels-last layout), steps the
optimiser (fused on CUDA, foreach on CPU) and then the momentum copy, in that order, written
once here. Nothing in a step waits for the device: losses and statistics are summed on the
device and read once per epoch.

Each epoch draws its shuffling, augmentation and partners from generators seeded by (seed, epoch)
(and the process's rank, under torchrun), and a checkpoint holds everything else a step depends
on: the model with its momentum copy and buffers, the optimiser, the epoch's order and the
generators' positions when it is written mid-epoch, the statistics summed so far, the RNG states
and the metrics. A run resumed from any checkpoint therefore repeats the uninterrupted run
exactly. Checkpoints are written at the end of every epoch, every ``checkpoint_every`` steps,
and when the run is asked to stop (SIGTERM, SIGINT); never after a non-finite loss.

Under torchrun (:mod:`stopgrad.distributed`) every process trains on its shard of each global
batch of ``batch_size`` images; only the main process writes files, evaluates and logs.
"""
from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed, optim, runs
from .config import Config, ConfigError
from .control import CHECK_EVERY, LossGuard, NonFiniteLoss, StopRequest, describe_terms
from .epochs import (EpochState, checkpoint_state, epoch_generators, local_order, make_views, restore_epoch,
                     resume_checkpoint, start_epoch)
from .data import RECIPES, load_dataset
from .data.datasets import ImageData
from .data.stream import iter_batches
from .ema import momentum_at
from .evaluate.baselines import describe as describe_baselines, read_run_baselines, run_pixel_baselines
from .evaluate.baselines import save_run_baselines
from .evaluate.geometry import plot_spectra
from .runlog import RunLog
from .evaluate.online import CollapseAlarm, evaluate_run, projection_dim
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


# the running group of the config (stopgrad.config.OPTION_GROUPS): its keys, validated by check_options
OPTIONS = ("seed", "device", "threads", "amp", "channels_last", "compile", "sync_bn", "gsg_partners",
           "checkpoint_every", "max_nan_skips", "log")


def check_options(cfg: Config) -> None:
    """Validate the running group of a :class:`~stopgrad.config.Config` (:data:`OPTIONS`); raises ConfigError."""
    if cfg.gsg_partners not in ("local", "global"):
        raise ConfigError(f"invalid gsg_partners {cfg.gsg_partners!r}; choose one of local, global")
    if cfg.log is not None:
        from .runlog import LOG_CHOICES, tensorboard_available
        if cfg.log not in LOG_CHOICES:
            raise ConfigError(f"invalid log {cfg.log!r}; choose one of {', '.join(LOG_CHOICES)}")
        if cfg.log != "jsonl" and not tensorboard_available():
            raise ConfigError(f"--log {cfg.log} needs the tensorboard package: `pip install tensorboard`, "
                              "or use --log jsonl")
    for key in ("channels_last", "sync_bn"):
        if not isinstance(getattr(cfg, key), bool):
            raise ConfigError(f"{key} must be true or false, got {getattr(cfg, key)!r}")
    if cfg.amp not in (None, True, False):
        raise ConfigError(f"amp must be true, false or null (automatic), got {cfg.amp!r}")
    if cfg.checkpoint_every is not None and cfg.checkpoint_every <= 0:
        raise ConfigError(f"checkpoint_every must be a positive number of steps, got {cfg.checkpoint_every}")
    if cfg.max_nan_skips < 0:
        raise ConfigError(f"max_nan_skips must be >= 0, got {cfg.max_nan_skips}")
    if cfg.threads is not None and cfg.threads <= 0:
        raise ConfigError(f"threads must be positive, got {cfg.threads}")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise ConfigError(f"invalid device {cfg.device!r}; choose auto, cpu, cuda or cuda:N")


def make_optimizer(params, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    """The run's optimiser (SGD, LARS or AdamW: :func:`stopgrad.optim.make_optimizer`)."""
    return optim.make_optimizer(params, cfg, device)


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
    model: torch.nn.Module  # the method itself: its state is what checkpoints hold
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    forward: torch.nn.Module  # the model, wrapped for DDP and/or compiled
    amp: bool
    channels_last: bool
    context: distributed.Context = distributed.Context()

    @property
    def total_steps(self) -> int:
        """Training steps of the whole run: ``cfg.steps``, else ``cfg.epochs`` whole epochs."""
        return self.cfg.steps if self.cfg.steps is not None else self.cfg.epochs * self.steps_per_epoch

    @property
    def epochs(self) -> int:
        """Epochs of the run: ``cfg.epochs``, or as many as ``cfg.steps`` needs (the last one shorter)."""
        return -(-self.total_steps // self.steps_per_epoch)

    def epoch_steps(self, epoch: int) -> int:
        """Steps of epoch ``epoch`` (1-based): a whole epoch but for a shorter last one under ``cfg.steps``."""
        return min(self.steps_per_epoch, self.total_steps - (epoch - 1) * self.steps_per_epoch)

    @property
    def local_batch(self) -> int:
        """Images per step in this process: the global ``batch_size`` over the processes."""
        return self.cfg.batch_size // self.context.world

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
    context = distributed.init(device.type)
    if context.distributed:
        if device.type == "cuda":
            device = torch.device("cuda", context.local_rank)
            torch.cuda.set_device(device)
        if cfg.batch_size % context.world or cfg.batch_size // context.world < 2:
            raise ConfigError(f"batch_size {cfg.batch_size} must split into {context.world} equal shards of at "
                              f"least 2 images (the global batch is shared by the {context.world} processes)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = data or load_dataset(cfg.dataset, cfg.data_dir, cfg.image_size, stream=cfg.stream,
                                strict=cfg.strict_data)
    train_x, train_y = training_images(cfg, data)
    steps = len(train_x) // cfg.batch_size
    if steps == 0:
        raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {len(train_x)} training images; lower --batch-size")
    amp, channels_last = use_amp(cfg, device), cfg.channels_last
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels once
    model = new_model(cfg, data.channels, len(train_x), device)
    if cfg.sync_bn and context.distributed:
        model = distributed.convert_sync_batchnorm(model, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]  # the momentum copy is frozen
    optimizer = make_optimizer(trainable, cfg, device)
    forward = model
    if context.distributed:
        from torch.nn.parallel import DistributedDataParallel
        # buffers (BatchNorm statistics, queues, memory banks) are kept consistent by the methods
        # themselves; broadcasting them every step would cost a memory bank's size per step
        forward = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                          broadcast_buffers=False)
    if cfg.compile:
        forward = torch.compile(forward)
    return Setup(cfg, device, data, train_x.to(device), train_y.to(device), model, optimizer, steps, forward, amp,
                 channels_last, context)


def train_step(s: Setup, views: torch.Tensor, partners: torch.Tensor, g: torch.Generator | None,
               lr: float, momentum: float, indices: torch.Tensor | None = None,
               labels: torch.Tensor | None = None, guard: LossGuard | None = None, step: int = 0
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step on ready views; returns the (detached) loss and statistics, on the device.

    With a ``guard``, a step whose loss is not finite is skipped (no update; ``guard.skipped``
    counts it) while the guard allows, else :class:`~stopgrad.control.NonFiniteLoss` is raised.

    ``indices`` are the batch's positions in the training set (for methods with a memory bank),
    ``labels`` its labels (for the statistics only).
    """
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.amp):
        loss, stats = s.forward(views, partners, g, indices, labels)
    s.optimizer.zero_grad(set_to_none=True)
    if guard is not None and guard.step_is_bad(loss):
        if guard.over_budget():
            raise NonFiniteLoss(f"the loss is not a number at step {step} ({describe_terms(loss, stats)}), "
                                f"{guard.skipped} non-finite steps with --max-nan-skips {guard.max_skips}")
        return loss.detach(), stats
    loss.backward()
    s.optimizer.step()
    s.model.update_momentum(momentum)
    return loss.detach(), stats


def run_epoch(s: Setup, state: EpochState, steps: int, on_step=None, guard: LossGuard | None = None,
              checkpoint=None, stop: StopRequest | None = None) -> bool:
    """Train ``state``'s epoch from step ``state.done`` to ``steps``; False when stopped by ``stop``.

    ``checkpoint(state)`` is called every ``checkpoint_every`` steps and when stopping. Host
    reads (stop requests, deferred NaN checks) happen every step on one CPU process, else every
    :data:`stopgrad.control.CHECK_EVERY` steps, always at the same step on every process.
    """
    cfg, b = s.cfg, s.local_batch
    recipe, mean, std = RECIPES[cfg.augment], s.data.mean, s.data.std
    warmup = int(cfg.warmup_epochs * s.steps_per_epoch)
    mine = local_order(s, state.order, steps)
    batches = iter_batches(s.train_x, mine[state.done * b:], b, s.device, workers=cfg.workers)
    every = 1 if (s.device.type == "cpu" and not s.context.distributed) else CHECK_EVERY
    s.model.train()
    t0 = time.perf_counter()
    for i, batch in zip(range(state.done, steps), batches):
        step = (state.epoch - 1) * s.steps_per_epoch + i
        state.lr = lr_at(step, s.total_steps, optim.scaled_lr(cfg), cfg.lr_schedule, warmup)
        views = make_views(batch, cfg.views, recipe, mean, std, cfg.image_size, state.g, s.channels_last)
        indices = mine[i * b:(i + 1) * b]
        skipped = guard.skipped if guard is not None else 0
        loss, stats = train_step(s, views, state.partners[i], state.g, state.lr,
                                 momentum_at(step, s.total_steps, cfg.ema_momentum, cfg.ema_schedule),
                                 indices, s.train_y[indices], guard, step)
        if guard is None or guard.skipped == skipped:  # a skipped step adds nothing to the epoch's means
            state.add(loss, stats)
        state.done = i + 1
        if on_step is not None:
            on_step()
        save_now = bool(cfg.checkpoint_every) and (step + 1) % cfg.checkpoint_every == 0 and i + 1 < steps
        if save_now or (i + 1) % every == 0 or i + 1 == steps:
            if guard is not None and guard.deferred_bad():
                raise NonFiniteLoss(f"the loss became non-finite between steps {step + 1 - every} and {step} "
                                    f"(now: {describe_terms(loss, stats)})")
            stopping = distributed.any_process(stop is not None and stop.requested)
            if (save_now or stopping) and checkpoint is not None:
                state.seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                checkpoint(state)
            if stopping:
                return False
    state.seconds += time.perf_counter() - t0
    return True


def train_epoch(s: Setup, epoch: int, on_step=None, steps: int | None = None) -> dict[str, float]:
    """One whole epoch of training; returns the means of the loss and the method's statistics.

    A statistic that is NaN for a batch (e.g. FN similarity of a batch with no two images of a
    class) is averaged over the other batches. ``steps`` stops after that many steps
    (benchmarks time the training loop this way).
    """
    steps = s.steps_per_epoch if steps is None else min(steps, s.steps_per_epoch)
    state = start_epoch(s, epoch, steps)
    run_epoch(s, state, steps, on_step)
    return state.means()


def _log(message: str, quiet: bool, error: bool = False) -> None:
    if not quiet:
        import sys

        from tqdm import tqdm
        tqdm.write(message, file=sys.stderr if error else sys.stdout)


def _evaluate(s: Setup, run_dir: Path, row: dict, log: RunLog) -> None:
    """Evaluate into ``row`` (timed), and draw the current embedding spectrum."""
    t0 = time.perf_counter()
    metrics = s.evaluate(keep_spectra=True)
    spectra = metrics.pop("spectra", None)
    row.update(metrics)
    row["eval_seconds"] = round(time.perf_counter() - t0, 3)
    if spectra:
        png = plot_spectra(spectra, run_dir / "spectrum.png", f"embedding spectrum after epoch {row['epoch']}")
        log.image("eval/spectrum", png, row["epoch"])


def _pixel_baselines(s: Setup, run_dir: Path, quiet: bool) -> dict | None:
    """With ``pixel_baselines``: the kNN pixel baselines of the run's bank (cached per data set; the
    linear probe's figure too when the cache holds it), logged and kept in RUN/baselines.json."""
    if not s.cfg.pixel_baselines:
        return None
    pixels = run_pixel_baselines(s.cfg, s.data, s.train_x, s.train_y)
    if pixels is None:
        _log("pixels: not computed for images streamed from disk", quiet)
        return None
    save_run_baselines(run_dir, pixels)
    _log(f"pixels: {describe_baselines(pixels)}", quiet)
    return pixels


def _bar_text(latest: dict, lr: float) -> str:
    """The progress bar's postfix: the last epoch's loss, the current lr, the latest kNN top-1."""
    parts = [] if latest["loss"] is None else [f"loss {latest['loss']:.3f}"]
    parts.append(f"lr {lr:.3g}")
    if latest["knn"] is not None:
        parts.append(f"kNN {latest['knn']:.4f}")
    return ", ".join(parts)


def has_momentum_copy(model: torch.nn.Module) -> bool:
    """Whether the method keeps a momentum (EMA) copy: BYOL's target, MoCo's and SiMo's key encoder."""
    return getattr(model, "target", None) is not None or getattr(model, "key_encoder", None) is not None


def _epoch_line(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}: loss {row['loss']:.4f}", f"collapse std {row['collapse_std']:.4f}"]
    if row.get("knn_top1") is not None:
        parts.append(f"kNN top-1 {row['knn_top1']:.4f} (k=1: {row['knn1_top1']:.4f})")
    if row.get("tp_similarity") is not None and row.get("fn_similarity") is not None:
        parts.append(f"TP/FN similarity {row['tp_similarity']:.3f}/{row['fn_similarity']:.3f}")
    parts.append(f"{row['images_per_second']:.0f} img/s")
    return ", ".join(parts)


class Stopped(Exception):
    """The run stopped on request (SIGTERM, SIGINT) after writing a checkpoint."""

    def __init__(self, signal_name: str, message: str):
        super().__init__(message)
        self.signal_name = signal_name


def train(cfg: Config, run_dir: Path | None = None, *, resume: bool = False, stop_after: int | None = None,
          quiet: bool = False, progress: bool | None = None, data: ImageData | None = None) -> dict:
    """Train (or resume) a run; returns a summary with the final kNN top-1 and the run directory.

    ``stop_after`` ends the session after that epoch (the run can be resumed); ``progress=None``
    shows a progress bar only on a terminal. With ``stop_on_collapse`` the collapse alarm ends the
    run early (``result["stopped"] == "collapse"``), its last checkpoint kept. SIGTERM or SIGINT
    end it after the current step with a checkpoint (:class:`Stopped`); a non-finite loss ends it
    without one (:class:`~stopgrad.control.NonFiniteLoss`, the last good checkpoint untouched).
    """
    from tqdm import tqdm

    from .report import write_report

    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    if not resume and (run_dir / runs.CONFIG_FILE).exists():
        raise ConfigError(f"{run_dir} already holds a run; continue it with `stopgrad train --resume {run_dir}` "
                          "or choose another --out")
    if resume and not runs.has_checkpoint(run_dir):  # stopped before its first checkpoint: start it again
        _log(f"{run_dir} has no checkpoint yet: the run starts from the beginning", quiet)
        resume = False
    s = build(cfg, data)
    main = s.context.main
    if main and not resume:
        runs.check_writable(run_dir)
    quiet = quiet or not main
    if s.data.skipped:
        _log(f"skipped {len(s.data.skipped)} unreadable image(s), the first: {s.data.skipped[0]} "
             "(--strict-data makes this an error)", quiet, error=True)
    for note in s.data.notes:
        _log(note, quiet, error=True)
    alarm = None
    if cfg.eval_geometry and cfg.collapse_threshold > 0:
        size = cfg.image_size or s.data.image_size
        alarm = CollapseAlarm(cfg.collapse_threshold, cfg.collapse_patience,
                              projection_dim(s.model, s.data.channels, size, s.device))
    rows: list[dict] = []
    start_epoch_done, seconds, in_epoch = 0, 0.0, None
    pixels = None  # the pixel baselines (evaluate.baselines), when computed
    if resume:
        rows, start_epoch_done, seconds, in_epoch = resume_checkpoint(s, run_dir, lambda m: _log(m, quiet, error=True))
        pixels = read_run_baselines(run_dir)
        log = RunLog(run_dir, cfg.log, resume_epoch=start_epoch_done, enabled=main)
        if main and log.jsonl:
            runs.write_metrics(run_dir, rows)  # drop lines from an epoch that never reached its checkpoint
        for r in rows[1:]:  # the alarm's state as it was
            if alarm is not None and r.get("knn_top1") is not None:
                alarm.update(r["epoch"], r)
    else:
        rows = [{"epoch": 0, "step": 0, "loss": None,
                 "lr": lr_at(0, s.total_steps, optim.scaled_lr(cfg), cfg.lr_schedule),
                 "collapse_std": None, "seconds": 0.0}]
        log = RunLog(run_dir, cfg.log, enabled=main)
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            runs.write_config(run_dir, cfg, str(s.device), s.context.world)
            _log(f"optimizer: {optim.describe(cfg)}, {cfg.lr_schedule} schedule"
                 + (f" after {cfg.warmup_epochs:g} warm-up epochs" if cfg.warmup_epochs else ""), quiet)
            _evaluate(s, run_dir, rows[0], log)
            log.rows(rows)
            _log(f"epoch 0 (random init): kNN top-1 {rows[0]['knn_top1']:.4f} (k=1: {rows[0]['knn1_top1']:.4f})",
                 quiet)
            pixels = _pixel_baselines(s, run_dir, quiet)
        distributed.barrier()

    done_steps = start_epoch_done * s.steps_per_epoch + (in_epoch["done"] if in_epoch else 0)
    bar = tqdm(total=s.total_steps, initial=done_steps, unit="step", dynamic_ncols=True,
               disable=(not progress or not main) if progress is not None else (None if main else True), leave=False)
    latest = {"loss": None, "knn": rows[-1].get("knn_top1") if rows else None}
    if rows and rows[-1].get("loss") is not None:
        latest["loss"] = rows[-1]["loss"]

    def on_step(state: EpochState) -> None:
        bar.update()
        if state.done % 20 == 1:  # the postfix costs some time: not every step
            bar.set_postfix_str(_bar_text(latest, state.lr), refresh=False)
    epochs = s.epochs
    last_epoch = epochs if stop_after is None else min(epochs, stop_after)
    guard = LossGuard(s.device, cfg.max_nan_skips)
    stopped = None

    saved: list[str] = []  # what the last checkpoint holds, for messages

    def save(state: EpochState | None, epoch_done: int, total_seconds: float) -> None:
        """``total_seconds``: training time of the finished epochs (the epoch in progress keeps its own)."""
        ckpt = checkpoint_state(s, rows, epoch_done, total_seconds, state)  # collective: every process
        if main:
            runs.save_checkpoint(run_dir, ckpt)
        saved.append(f"epoch {epoch_done}" if state is None else f"epoch {state.epoch}, step {state.done}")

    try:
        with StopRequest() as stop:
            for epoch in range(start_epoch_done + 1, last_epoch + 1):
                if s.device.type == "cuda":
                    torch.cuda.synchronize()
                if in_epoch is not None and in_epoch["epoch"] == epoch:
                    state = restore_epoch(s, in_epoch, s.epoch_steps(epoch))
                else:
                    state = start_epoch(s, epoch, s.epoch_steps(epoch))
                in_epoch = None
                bar.set_description(f"epoch {epoch}/{epochs}", refresh=False)
                steps = s.epoch_steps(epoch)
                finished = run_epoch(s, state, steps, lambda st=state: on_step(st), guard,
                                     lambda st, e=epoch: save(st, e - 1, seconds), stop)
                if not finished:
                    where = f"epoch {epoch}, step {state.done} of {steps}"
                    raise Stopped(stop.signal_name, f"stopped by {stop.signal_name} at {where}; the checkpoint is "
                                                    f"written: continue with `stopgrad train --resume {run_dir}`")
                stats = state.means()
                if stats.get("loss") is not None and not math.isfinite(stats["loss"]):
                    raise NonFiniteLoss(f"the loss of epoch {epoch} is not a number ({stats['loss']})")
                seconds += state.seconds
                step = (epoch - 1) * s.steps_per_epoch + steps
                row = {"epoch": epoch, "step": step, **stats, "knn_top1": None,
                       "collapse_std": stats.get("collapse_std"), "seconds": round(seconds, 3),
                       "images_per_second": round(steps * cfg.batch_size / max(state.seconds, 1e-9), 1)}
                if has_momentum_copy(s.model):
                    row["ema_momentum"] = momentum_at(step - 1, s.total_steps, cfg.ema_momentum,
                                                      cfg.ema_schedule)
                if guard.skipped:
                    row["skipped_steps"] = guard.skipped
                alarm_raised = False
                if epoch % cfg.eval_every == 0 or epoch == epochs:
                    if main:
                        _evaluate(s, run_dir, row, log)
                        if alarm is not None and alarm.update(epoch, row):
                            row["collapse_alarm"] = alarm_raised = True
                    distributed.barrier()
                    alarm_raised = distributed.broadcast_object(alarm_raised)
                rows.append(row)
                save(None, epoch, seconds)  # checkpoint first, then the metrics that refer to it
                if main:
                    log.rows(rows)
                latest["loss"] = row["loss"]
                latest["knn"] = row["knn_top1"] if row.get("knn_top1") is not None else latest["knn"]
                _log(_epoch_line(row, epochs), quiet)
                if alarm_raised:
                    message = alarm.message() if alarm is not None else "collapse alarm"
                    if cfg.stop_on_collapse and epoch < epochs:
                        stopped = "collapse"
                        _log(f"{message}; stopping (stop_on_collapse) with the checkpoint of epoch {epoch} "
                             f"kept in {run_dir / runs.CHECKPOINT}", quiet, error=True)
                        break
                    _log(message, quiet, error=True)
    except NonFiniteLoss as exc:
        kept = (f"the last good checkpoint ({saved[-1] if saved else f'epoch {start_epoch_done}'}) in "
                f"{run_dir / runs.CHECKPOINT} is untouched" if saved or resume else "no checkpoint was written")
        raise NonFiniteLoss(f"{exc}; the run stopped and {kept}; lower --lr, check the data, or let a few bad "
                            "steps be skipped with --max-nan-skips N") from None
    finally:
        bar.close()
        if rows and main:
            from .plots import plot_metrics
            for png in plot_metrics(rows, run_dir):
                log.image(f"curves/{png.stem}", png, rows[-1]["epoch"])
            write_report(run_dir, cfg, rows)
        log.close()
    finished = rows[-1]["epoch"] == s.epochs
    if finished and main:
        runs.save_backbone(run_dir, s.model.backbone)
        write_report(run_dir, cfg, rows)
    evaluated = [r for r in rows if r.get("knn_top1") is not None]
    return {"run_dir": str(run_dir), "finished": finished, "epoch": rows[-1]["epoch"],
            "knn_top1": evaluated[-1]["knn_top1"] if evaluated else None,
            "knn_top1_init": rows[0].get("knn_top1"), "seconds": seconds, "stopped": stopped,
            "collapse_alarm": any(r.get("collapse_alarm") for r in rows), "metrics": rows, "main": main,
            "pixels": pixels}


# what other modules take from here (the loop's pieces live in .epochs)
__all__ = ["Setup", "Stopped", "build", "epoch_generators", "make_views", "new_model", "pick_device", "train",
           "train_epoch", "train_step", "training_images"]
