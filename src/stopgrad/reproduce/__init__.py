"""Paper reproductions: ``stopgrad reproduce NAME --budget {smoke,cpu,gpu} [--seeds N] --out DIR``.

An experiment is one module in this package, named in :data:`EXPERIMENTS`, that defines

* ``TITLE`` — one line: what it reproduces;
* ``PAPER`` — the paper (and table or figure) it checks;
* ``BUDGETS`` — ``{"smoke": ..., "cpu": ..., "gpu": ...}``, one line each saying what the budget runs.
  ``smoke`` finishes in about a minute on 2 CPU cores (tests and CI run it), ``cpu`` in an hour or
  less on the same machine, ``gpu`` is the paper-scale setting on one CUDA device; an experiment
  may add ``gpu-quick``, a few minutes on one CUDA device (``benchmarks/gpu_check.sh`` runs it);
* ``DEFAULT_SEEDS`` — the number of seeds when ``--seeds`` is not given (``SEEDS_BY_BUDGET``, optional:
  ``{budget: seeds}`` where a budget has its own default);
* ``run(budget, seeds, out_dir, log) -> Report`` — runs every configuration for every seed in
  ``seeds`` (a list of ints), writes its figures (PNG) into ``out_dir`` and returns a
  :class:`Report`. ``log`` takes one line of progress;
* optionally ``names(budget) -> list[str]``, the names of its configurations: such an experiment
  also runs a part of them (``--only``: ``run(..., only=[...])``, see :func:`select`), and its
  table holds that part.

:func:`run_experiment` does the rest, identically for every experiment: it checks the output
folder, records the provenance (command, versions, device, machine, wall time) and writes
``results.json`` (raw numbers of every configuration and seed) and ``results.md`` (the exact
command, the experiment's markdown table with mean ± std over seeds and the paper's numbers, its
notes and figures). Both are written atomically; ``results.json`` exists from the start with
``"status": "running"`` so that an interrupted run's folder still says whose it is.

Helpers for experiment modules: :func:`mean_std`, :func:`format_mean_std`, :func:`markdown_table`,
:func:`run_jobs` (independent configurations in worker processes), :func:`device_for`.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import __version__
from ..config import ConfigError

# name -> module inside stopgrad.reproduce, imported only when listed or run
EXPERIMENTS: dict[str, str] = {
    "gsg-table1": "gsg_table1",
    "gsg-guiding": "gsg_guiding",
    "gsg-no-predictor": "gsg_no_predictor",
    "gsg-batch-size": "gsg_batch_size",
    "gsg-equal-compute": "gsg_equal_compute",
    "eqco-toy": "eqco_toy",
    "eqco-k": "eqco_k",
    "spcl-ablation": "spcl_ablation",
    "shootout": "shootout",
    "shootout-recipes": "shootout_recipes",
}
BUDGETS = ("smoke", "cpu", "gpu-quick", "gpu")
RESULTS_JSON, RESULTS_MD = "results.json", "results.md"

Log = Callable[[str], None]


@dataclass
class Report:
    """What an experiment's ``run`` returns; :func:`run_experiment` writes it out.

    Attributes:
        configurations: one dict per configuration: its settings and, per seed, the raw numbers
            (JSON-serialisable; the layout is the experiment's, documented in its module).
        table: markdown: the results table(s), mean ± std over seeds, the paper's numbers beside ours.
        settings: the settings this budget ran with (steps, sizes, ...), for ``results.json``.
        device: where it ran, in words (e.g. ``"cpu (2 worker processes x 1 thread)"``).
        figures: file names of the PNGs written into ``out_dir``.
        notes: markdown paragraphs printed under the table (choices, deviations from the paper).
    """
    configurations: list[dict]
    table: str
    settings: dict = field(default_factory=dict)
    device: str = "cpu"
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def experiment_module(name: str):
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)} "
                          f"(`stopgrad reproduce --list`)")
    return import_module(f"{__name__}.{EXPERIMENTS[name]}")


def list_experiments() -> list[dict]:
    """Name, title, paper, default seeds and budget descriptions of every registered experiment."""
    out = []
    for name in EXPERIMENTS:
        mod = experiment_module(name)
        out.append({"name": name, "title": mod.TITLE, "paper": mod.PAPER, "default_seeds": mod.DEFAULT_SEEDS,
                    "budgets": dict(mod.BUDGETS)})
    return out


def check_out_dir(out_dir: Path, name: str, budget: str) -> None:
    """A new or empty folder, or one holding this experiment's results of the same budget (re-run)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; give a folder")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    record = None
    path = out_dir / RESULTS_JSON
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = None
    if not isinstance(record, dict) or "experiment" not in record:
        raise ConfigError(f"--out {out_dir} is not empty and holds no `stopgrad reproduce` results; "
                          f"give a new or empty folder")
    if record["experiment"] != name:
        raise ConfigError(f"--out {out_dir} holds results of experiment {record['experiment']!r}; "
                          f"give another folder for {name!r}")
    if record.get("budget") != budget:
        raise ConfigError(f"--out {out_dir} holds {name} results of budget {record.get('budget')!r}; "
                          f"give another folder for budget {budget!r}")


def _write_text(path: Path, text: str) -> None:
    """Atomically, readable as an ordinary file would be (mkstemp's files are private)."""
    from ..runs import atomic_write

    def write(tmp: str) -> None:
        Path(tmp).write_text(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    atomic_write(path, write)


def _write_json(path: Path, record: dict) -> None:
    _write_text(path, json.dumps(record, indent=1) + "\n")


def _machine() -> dict:
    import torch
    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "gpu": gpu}


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m} min {s} s" if h else f"{m} min {s} s" if m else f"{s} s"


def select(names: Sequence[str], only: Sequence[str] | None) -> list[str]:
    """The names that ``only`` selects: a name itself, or every name it begins up to a dash
    (``byol`` selects ``byol-symmetric`` and ``byol-guided``). Every entry must select something.

    >>> select(["byol-symmetric", "byol-guided", "simclr"], ["byol"])
    ['byol-symmetric', 'byol-guided']
    """
    if not only:
        return list(names)
    def hit(n: str, p: str) -> bool:
        return n == p or n.startswith(p + "-")
    unknown = [p for p in only if not any(hit(n, p) for n in names)]
    if unknown:
        raise ConfigError(f"--only {','.join(unknown)} selects no configuration; choose among {', '.join(names)}")
    return [n for n in names if any(hit(n, p) for p in only)]


def run_experiment(name: str, budget: str, seeds: int | None, out_dir: Path, command: str,
                   log: Log = print, only: Sequence[str] | None = None) -> dict:
    """Check the arguments, run the experiment, write ``results.json`` and ``results.md``.

    Args:
        name: a key of :data:`EXPERIMENTS`.
        budget: one of :data:`BUDGETS`.
        seeds: number of seeds (seeds 0..N-1); None: the experiment's default.
        out_dir: output folder (new, empty, or holding this experiment's results of this budget).
        command: the exact command line, recorded in both files.
        only: run only these configurations (:func:`select`; experiments that define ``names``).
    Returns:
        the ``results.json`` record.
    """
    import torch

    mod = experiment_module(name)
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    if budget not in mod.BUDGETS:
        raise ConfigError(f"{name} has no budget {budget!r}; choose one of {', '.join(mod.BUDGETS)}")
    default_seeds = getattr(mod, "SEEDS_BY_BUDGET", {}).get(budget, mod.DEFAULT_SEEDS)
    n_seeds = default_seeds if seeds is None else seeds
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ConfigError(f"--seeds must be a positive whole number, got {seeds!r}")
    if budget.startswith("gpu") and not torch.cuda.is_available():
        raise ConfigError(f"--budget {budget} needs a CUDA device and none is available; use --budget cpu")
    if only:
        if not hasattr(mod, "names"):
            runs_part = ", ".join(n for n in EXPERIMENTS if hasattr(experiment_module(n), "names"))
            raise ConfigError(f"{name} runs all its configurations together; --only works for {runs_part}")
        select(mod.names(budget), only)
    out_dir = Path(out_dir)
    check_out_dir(out_dir, name, budget)

    record: dict[str, Any] = {
        "experiment": name, "title": mod.TITLE, "paper": mod.PAPER, "status": "running",
        "budget": budget, "budget_description": mod.BUDGETS[budget], "seeds": list(range(n_seeds)),
        "command": command, "stopgrad_version": __version__, "torch_version": str(torch.__version__),
        "git_commit": None, "device": None, "machine": _machine(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **({"only": list(only)} if only else {}),
    }
    from ..runs import git_commit
    record["git_commit"] = git_commit()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (RESULTS_MD,):  # a re-run must not leave the previous table beside a running record
        (out_dir / stale).unlink(missing_ok=True)
    _write_json(out_dir / RESULTS_JSON, record)

    log(f"{name}: budget {budget} ({mod.BUDGETS[budget]}), seeds 0..{n_seeds - 1}, output {out_dir}")
    start = time.perf_counter()
    try:
        report = (mod.run(budget, list(range(n_seeds)), out_dir, log, only=list(only)) if only
                  else mod.run(budget, list(range(n_seeds)), out_dir, log))
    except BaseException as exc:
        record.update(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                      error=f"{type(exc).__name__}: {exc}", wall_seconds=round(time.perf_counter() - start, 1))
        _write_json(out_dir / RESULTS_JSON, record)
        raise
    wall = time.perf_counter() - start
    record.update(status="complete", device=report.device, settings=report.settings,
                  finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  wall_seconds=round(wall, 1), figures=list(report.figures), notes=list(report.notes),
                  configurations=report.configurations)
    _write_json(out_dir / RESULTS_JSON, record)
    _write_text(out_dir / RESULTS_MD, results_markdown(record, report.table))
    return record


def results_markdown(record: dict, table: str) -> str:
    lines = [f"# {record['experiment']}: {record['title']}", "",
             f"Command: `{record['command']}`", "",
             f"Paper: {record['paper']}. Budget `{record['budget']}`: {record['budget_description']}. "
             f"Seeds: {len(record['seeds'])}. "
             + (f"Only the configurations {', '.join(record['only'])}. " if record.get("only") else "")
             + f"stopgrad {record['stopgrad_version']}"
             + (f" ({record['git_commit'][:10]})" if record.get("git_commit") else "")
             + f", torch {record['torch_version']}, device: {record['device']}; "
             f"CPU: {record['machine']['cpu']} ({record['machine']['cpu_count']} cores). "
             f"Wall time {format_duration(record['wall_seconds'])}.", "",
             table.rstrip(), ""]
    for note in record.get("notes", []):
        lines += [note.rstrip(), ""]
    for fig in record.get("figures", []):
        lines += [f"![{fig}]({fig})", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# helpers for experiment modules


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def format_mean_std(values: Sequence[float], digits: int = 2) -> str:
    """``"1.23 ± 0.04"`` over seeds (a std that would round to zero keeps one significant digit:
    ``"1.23 ± 0.004"``); just the mean for one seed."""
    mean, std = mean_std(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    d = digits
    while std > 0 and round(std, d) == 0 and d < digits + 4:
        d += 1
    return f"{mean:.{digits}f} ± {std:.{d}f}"


def format_paired(a: Sequence[float], b: Sequence[float], scale: float = 1.0) -> str:
    """``"+0.12 ± 0.05"``: the mean of ``scale * (a - b)`` over paired seeds ± its standard error;
    just the mean for one pair, "–" for none."""
    d = [scale * (x - y) for x, y in zip(a, b)]
    if not d:
        return "–"
    mean, std = mean_std(d)
    return f"{mean:+.2f}" if len(d) < 2 else f"{mean:+.2f} ± {std / math.sqrt(len(d)):.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(out)


def device_for(budget: str) -> str:
    """``gpu`` and ``gpu-quick`` run on CUDA (checked by :func:`run_experiment`), the other budgets on the CPU."""
    return "cuda" if budget.startswith("gpu") else "cpu"


def usable_cores() -> int:
    """The CPU cores this process may run on (``taskset`` and container limits), not the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_workers() -> tuple[int, int]:
    """(worker processes, threads each) for many small independent CPU jobs: one per usable core, up to 8."""
    cores = usable_cores()
    workers = max(1, min(cores, 8))
    return workers, max(1, cores // workers)


def _exit_with_parent(parent: int) -> None:
    """A worker's initialiser: end the worker as soon as the process that started it is gone.

    A ``stopgrad reproduce`` killed from outside (``kill``, a closed terminal, a job scheduler) would
    otherwise leave its workers training their runs to the end on the cores it was given.
    """
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="stopgrad-exit-with-parent", daemon=True).start()


def run_jobs(fn: Callable[[dict], dict], jobs: Sequence[dict], workers: int, log: Log,
             describe: Callable[[dict, dict], str] = lambda job, result: "",
             fresh_processes: bool = False) -> list[dict]:
    """Run ``fn(job)`` for every job; return the results in the order of ``jobs``.

    ``workers`` > 1 runs them in that many spawned processes (``fn`` must be a module-level
    function; jobs and results picklable), the most expensive first (``job["cost"]``, default 1).
    Each finished job is logged as ``[i/n] describe(job, result)``. Results must not depend on
    the worker that ran them: seed every job from its own settings. ``fresh_processes``: every job
    in a new process (measurements of a process's peak memory), even with one worker.
    """
    n = len(jobs)
    results: list[dict | None] = [None] * n
    started = time.perf_counter()

    def done(i: int, result: dict, count: int) -> None:
        results[i] = result
        log(f"[{count}/{n}] {describe(jobs[i], result)} ({format_duration(time.perf_counter() - started)} elapsed)")

    if (workers <= 1 or n <= 1) and not fresh_processes:
        for count, (i, job) in enumerate(enumerate(jobs), 1):
            done(i, fn(job), count)
        return results  # type: ignore[return-value]

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    order = sorted(range(n), key=lambda i: -float(jobs[i].get("cost", 1)))
    pool = ProcessPoolExecutor(max_workers=max(1, min(workers, n)), mp_context=multiprocessing.get_context("spawn"),
                               max_tasks_per_child=1 if fresh_processes else None,
                               initializer=_exit_with_parent, initargs=(os.getpid(),))
    try:
        futures = {pool.submit(fn, jobs[i]): i for i in order}
        for count, fut in enumerate(as_completed(futures), 1):
            done(futures[fut], fut.result(), count)
    except BaseException:
        # stopped (Ctrl-C, a failed job): the runs in progress stop too, instead of training on to their end;
        # what finished is on disk (written atomically) and the same command continues from it
        running = list((pool._processes or {}).values())  # this pool's workers only (3.14: terminate_workers)
        pool.shutdown(wait=False, cancel_futures=True)
        for process in running:
            process.terminate()
        raise
    pool.shutdown()
    return results  # type: ignore[return-value]
