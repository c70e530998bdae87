"""Where a run's numbers go: ``metrics.jsonl`` and TensorBoard event files (``--log``).

``--log both`` (the default when the ``tensorboard`` package is installed, which it is by
default), ``jsonl`` or ``tensorboard``. The events live in ``RUN/tensorboard/`` (open them with
``tensorboard --logdir runs``): one point per epoch for every number of the epoch's metrics row,
grouped as ``train/`` (the loss and its terms, lr, the target momentum, collapse std, TP / FN
similarity of the training batches, the method's statistics), ``eval/`` (kNN, geometry of the
test images) and ``time/``; and images: the run's curves when training ends, the embedding
spectrum at each evaluation, and t-SNE maps from ``stopgrad eval tsne``.

Written by torch's ``SummaryWriter``; a resumed run drops the events after its checkpoint's epoch
(``purge_step``) so that no epoch appears twice.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from . import runs

LOG_CHOICES = ("both", "jsonl", "tensorboard")
EVENTS_DIR = "tensorboard"
_SKIP = {"epoch", "step"}
_EVAL_PREFIXES = ("knn", "rep_", "proj_", "test_")
_TIME = {"seconds", "images_per_second", "eval_seconds"}


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def resolve(mode: str | None) -> str:
    """The ``log`` setting in effect: ``None`` is ``both`` when TensorBoard is installed, else ``jsonl``."""
    if mode is None:
        return "both" if tensorboard_available() else "jsonl"
    return mode


def tag(key: str) -> str:
    """The TensorBoard tag of a metrics key."""
    if key in _TIME:
        return f"time/{key}"
    if key.startswith(_EVAL_PREFIXES):
        return f"eval/{key}"
    return f"train/{key}"


class RunLog:
    """The run's sinks; only the main process opens one (the others pass ``enabled=False``)."""

    def __init__(self, run_dir: Path, mode: str | None, resume_epoch: int | None = None, enabled: bool = True):
        mode = resolve(mode)
        self.run_dir = Path(run_dir)
        self.jsonl = enabled and mode in ("both", "jsonl")
        self.writer = None
        if enabled and mode in ("both", "tensorboard"):
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.run_dir / EVENTS_DIR),
                                        purge_step=None if resume_epoch is None else resume_epoch + 1)

    def rows(self, rows: list[dict]) -> None:
        """Record the metrics so far: rewrite metrics.jsonl, add the last row's numbers to TensorBoard."""
        if self.jsonl:
            runs.write_metrics(self.run_dir, rows)
        if self.writer is not None and rows:
            row = rows[-1]
            for key, value in row.items():
                if key not in _SKIP and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(tag(key), value, row["epoch"])
            self.writer.flush()

    def image(self, name: str, png: Path, step: int) -> None:
        if self.writer is not None and Path(png).is_file():
            add_png(self.writer, name, png, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def add_png(writer, name: str, png: Path, step: int) -> None:
    import numpy as np
    from PIL import Image
    with Image.open(png) as im:
        pixels = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
    writer.add_image(name, pixels, step, dataformats="HWC")
    writer.flush()


def add_run_image(run_dir: Path, name: str, png: Path, step: int, mode: str | None) -> None:
    """Append one image to an existing run's events (``stopgrad eval``), when the run logs to TensorBoard."""
    if resolve(mode) not in ("both", "tensorboard") or not tensorboard_available():
        return
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(Path(run_dir) / EVENTS_DIR))
    try:
        add_png(writer, name, png, step)
    finally:
        writer.close()
