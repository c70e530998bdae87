"""Run directories: resolved config, metrics, checkpoints and the final backbone, written safely."""
from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import tempfile
from pathlib import Path

import torch
import yaml

from . import __version__
from .config import Config, ConfigError, check_keys

CONFIG_FILE, METRICS_FILE, BACKBONE_FILE = "config.yaml", "metrics.jsonl", "backbone.safetensors"
CHECKPOINT, PREVIOUS_CHECKPOINT = "checkpoints/last.pt", "checkpoints/previous.pt"
CHECKPOINT_FORMAT = 2


class RunError(RuntimeError):
    """A run cannot go on (disk full, a diverged loss, ...); the message says what was kept and what to do."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory descriptors
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write, durable: bool = False, previous: Path | None = None) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``.

    ``durable`` also flushes the file and the folder to disk (fsync) before and after the rename,
    so that a crash or power loss leaves either the old file or the complete new one. With
    ``previous``, the old ``path`` is renamed there once the new file is complete. A failed write
    (disk full, ...) removes the temporary file and leaves ``path`` as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def check_writable(run_dir: Path) -> None:
    """A one-line error unless files can be created in ``run_dir`` (made if missing)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=run_dir, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"cannot write to the run directory {run_dir} ({exc.strerror or exc}); "
                          "choose another --out") from None


def write_config(run_dir: Path, cfg: Config, device: str, processes: int = 1) -> None:
    from .optim import scaled_lr
    record = {"config": cfg.to_dict(), "lr_after_scaling": scaled_lr(cfg),  # lr_scaling applied (before the schedule)
              "stopgrad_version": __version__, "git_commit": git_commit(),
              "torch_version": str(torch.__version__), "device": device, "processes": processes,
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write(run_dir / CONFIG_FILE, lambda tmp: Path(tmp).write_text(yaml.safe_dump(record, sort_keys=False)))


def read_config(run_dir: Path) -> Config:
    """The config a run was started with, checked like a user's YAML (one-line :class:`ConfigError`)."""
    from .config import _coerce
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); give the --out folder of a run")
    try:
        record = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"{path} is not readable YAML ({str(exc).strip().splitlines()[0][:120]}); "
                          "it was not written by stopgrad or is damaged") from None
    values = record.get("config") if isinstance(record, dict) else None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} has no 'config' mapping; it was not written by stopgrad")
    check_keys(values, str(path))
    if "optimizer" not in values:  # a run from before the optimiser keys: it trained with plain SGD
        values = {**values, "optimizer": "sgd", "lr_scaling": "none"}
    try:
        return Config(**{k: _coerce(k, v) for k, v in values.items()}).validate()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def auto_resume(run_dir: Path, cfg: Config) -> bool:
    """``--auto-resume``: whether to continue the run in ``run_dir`` (True) or start it there (False).

    A missing or empty folder starts the run; a folder holding a run with this same resolved
    config continues it (from its last checkpoint, or from the beginning if it never wrote one);
    anything else is a one-line :class:`ConfigError`, and nothing in the folder is touched. The
    same command line can therefore be repeated after a failure, as torchrun's ``--max-restarts``
    does with every worker.
    """
    if not run_dir.exists():
        return False
    if not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file; give a folder")
    if not (run_dir / CONFIG_FILE).is_file():
        if any(run_dir.iterdir()):
            raise ConfigError(f"--out {run_dir} is not empty and holds no run ({CONFIG_FILE} is missing); "
                              "give a new or empty folder")
        return False
    saved, given = read_config(run_dir).to_dict(), cfg.to_dict()
    differ = [k for k in given if saved.get(k) != given[k]]
    if differ:
        shown = ", ".join(f"{k} {saved.get(k)!r} there, {given[k]!r} here" for k in differ[:3])
        raise ConfigError(f"{run_dir} holds a different run ({shown}{', ...' if len(differ) > 3 else ''}); "
                          f"continue it with `stopgrad train --resume {run_dir}`, or choose another --out")
    return True


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a .jsonl file, one a line; a line that is not one is a one-line :class:`ConfigError`."""
    rows = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read ({type(exc).__name__}); it is damaged") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}, line {number}, is not a JSON object; the file is damaged: restore it, "
                              "or delete that line")
        rows.append(row)
    return rows


def read_metrics(run_dir: Path) -> list[dict]:
    """The run's metrics rows: metrics.jsonl, or for a run logged to TensorBoard only its checkpoint's copy."""
    path = run_dir / METRICS_FILE
    if path.is_file():
        return read_jsonl(path)
    if has_checkpoint(run_dir):
        try:
            return list(load_checkpoint(run_dir, "cpu").get("metrics", []))
        except ConfigError:
            return []
    return []


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(run_dir / METRICS_FILE, lambda tmp: Path(tmp).write_text(text), durable=True)


def save_checkpoint(run_dir: Path, state: dict) -> None:
    """Write ``state`` as the run's checkpoint, durably; the one it replaces becomes ``previous.pt``.

    The new file is complete on disk before the old one moves, so at every moment one of the two
    is a whole checkpoint. A failure (disk full, ...) raises :class:`RunError` and leaves the old
    checkpoint where it was.
    """
    path, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS_CHECKPOINT
    try:
        atomic_write(path, lambda tmp: _write_checkpoint_file(state, tmp), durable=True, previous=previous)
    except OSError as exc:
        kept = f"the previous checkpoint ({path if path.exists() else previous}) is intact" if (
            path.exists() or previous.exists()) else "no earlier checkpoint exists"
        raise RunError(f"cannot write the checkpoint in {path.parent} ({exc.strerror or exc}); {kept}; "
                       "free some disk space (or fix the folder) and resume with `stopgrad train --resume "
                       f"{run_dir}`") from None


def _write_checkpoint_file(state: dict, path: str) -> None:
    torch.save(state, path)


def _load_file(path: Path, map_location) -> dict:
    """A checkpoint file, loaded without running code: tensors and plain data only (``weights_only``)."""
    import pickle
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        if lines:  # it names a function or class to call: refused, never imported
            raise ConfigError(f"{path} was refused: it holds objects other than tensors and plain data, and "
                              f"loading it could run code ({lines[0][:120]}); use a checkpoint written by "
                              "stopgrad") from None
        raise ConfigError(f"{path} is not a readable checkpoint (corrupt or not a checkpoint)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable checkpoint ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ConfigError(f"{path} is not a stopgrad checkpoint (no model state)")
    return state


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINT).is_file() or (run_dir / PREVIOUS_CHECKPOINT).is_file()


def load_checkpoint(run_dir: Path, map_location, log=None) -> dict:
    """The run's checkpoint: ``last.pt``, or ``previous.pt`` when the last one is missing or unreadable."""
    path, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS_CHECKPOINT
    if not path.is_file() and not previous.is_file():
        raise ConfigError(f"{run_dir} has no checkpoint ({CHECKPOINT}) to resume from")
    try:
        if not path.is_file():
            raise ConfigError(f"{path} is missing")
        return _load_file(path, map_location)
    except ConfigError as exc:
        if not previous.is_file() or "was refused" in str(exc):
            raise
        if log is not None:
            log(f"{exc}; using the previous checkpoint {previous}")
        return _load_file(previous, map_location)


def check_checkpoint(state: dict, cfg: Config, path: Path) -> None:
    """One-line error when the checkpoint was written by a run of another method or backbone."""
    saved = state.get("config") or {}
    for key in ("method", "backbone", "width", "heads"):
        if key in saved and saved[key] != getattr(cfg, key):
            raise ConfigError(f"{path} was written by a run with {key} {saved[key]!r}, this run has "
                              f"{getattr(cfg, key)!r}; resume a run with its own checkpoint")


def load_model_state(model: torch.nn.Module, state: dict, path: Path) -> None:
    """``model.load_state_dict(state)`` with a one-line error when they do not fit."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = [line.strip() for line in str(exc).splitlines() if line.strip()][1:2] or [str(exc)[:120]]
        raise ConfigError(f"{path} does not fit this run's model ({first[0][:160]}); it was written for "
                          "another method, backbone or width") from None


def save_backbone(run_dir: Path, backbone: torch.nn.Module) -> None:
    from safetensors.torch import save_file
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
    atomic_write(run_dir / BACKBONE_FILE, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))


def load_backbone_state(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"{path} is not a readable safetensors file ({exc}); re-export it from the run") from None
