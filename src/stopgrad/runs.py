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

CONFIG_FILE, METRICS_FILE, CHECKPOINT, BACKBONE_FILE = "config.yaml", "metrics.jsonl", "checkpoints/last.pt", "backbone.safetensors"


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
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


def write_config(run_dir: Path, cfg: Config, device: str) -> None:
    record = {"config": cfg.to_dict(), "stopgrad_version": __version__, "git_commit": git_commit(),
              "torch_version": str(torch.__version__), "device": device,
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write(run_dir / CONFIG_FILE, lambda tmp: Path(tmp).write_text(yaml.safe_dump(record, sort_keys=False)))


def read_config(run_dir: Path) -> Config:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); give the --out folder of a run")
    record = yaml.safe_load(path.read_text())
    values = record.get("config") if isinstance(record, dict) else None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} has no 'config' mapping; it was not written by stopgrad")
    check_keys(values, str(path))
    return Config(**values).validate()


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(run_dir / METRICS_FILE, lambda tmp: Path(tmp).write_text(text))


def save_checkpoint(run_dir: Path, state: dict) -> None:
    atomic_write(run_dir / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def load_checkpoint(run_dir: Path, map_location) -> dict:
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no checkpoint ({CHECKPOINT}) to resume from")
    return torch.load(path, map_location=map_location, weights_only=True)


def save_backbone(run_dir: Path, backbone: torch.nn.Module) -> None:
    from safetensors.torch import save_file
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
    atomic_write(run_dir / BACKBONE_FILE, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))


def load_backbone_state(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path))
