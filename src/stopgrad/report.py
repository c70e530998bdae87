"""Reports: ``report.md`` in every run directory, and ``stopgrad compare`` across runs.

A run's report is rewritten whenever something new is known about it: at the end of training
(or when it stops) and after every ``stopgrad eval`` on it, whose results are kept in the run's
``evaluations.jsonl``.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import yaml

from . import runs
from .config import Config, ConfigError
from .evaluate.baselines import read_run_baselines
from .optim import describe as describe_optimizer
from .plots import CURVES, plot_metrics

REPORT_FILE, EVALUATIONS_FILE = "report.md", "evaluations.jsonl"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def _num(v, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def read_evaluations(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / EVALUATIONS_FILE
    if not path.is_file():
        return []
    return runs.read_jsonl(path)


def record_evaluation(run_dir: Path, result: dict) -> None:
    """Append ``result`` (one evaluation, JSON-serialisable) to the run's evaluations and refresh its report."""
    run_dir = Path(run_dir)
    entry = {**result, "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    lines = [json.dumps(e) for e in read_evaluations(run_dir)] + [json.dumps(entry)]
    runs.atomic_write(run_dir / EVALUATIONS_FILE, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    cfg, rows = runs.read_config(run_dir), runs.read_metrics(run_dir)
    if result.get("figure"):  # t-SNE maps and spectra join the run's TensorBoard images
        from .runlog import add_run_image
        add_run_image(run_dir, f"eval/{result['evaluation']}", Path(result["figure"]),
                      rows[-1]["epoch"] if rows else 0, cfg.log)
    write_report(run_dir, cfg, rows)


def run_length(cfg: Config) -> str:
    """The run's length in words: ``"8 epochs"``, or ``"2,000 steps"`` when it is set in steps."""
    return f"{cfg.steps:,} steps" if cfg.steps is not None else f"{cfg.epochs} epochs"


def finished(cfg: Config, last: dict) -> bool:
    """Whether ``last`` (a metrics row) is the run's final epoch."""
    return last.get("step") == cfg.steps if cfg.steps is not None else last["epoch"] == cfg.epochs


def _progress(cfg: Config, last: dict) -> str:
    if cfg.steps is not None:
        return f"{last.get('step', 0)}/{cfg.steps} steps"
    return f"{last['epoch']}/{cfg.epochs}"


def describe_run(cfg: Config) -> str:
    policy = f" with {cfg.stopgrad} stop-gradient" if cfg.method in ("simsiam", "byol", "moco-v3") else ""
    predictor = "" if cfg.predictor else ", no predictor"
    width = f" width {cfg.width}" if cfg.backbone == "small-cnn" else ""
    subset = f" ({cfg.train_subset} training images)" if cfg.train_subset else ""
    return (f"{cfg.method}{policy}{predictor} on {cfg.dataset}{subset}, {cfg.backbone}{width}, {cfg.views} views, "
            f"{run_length(cfg)} of batch {cfg.batch_size}, {describe_optimizer(cfg)} ({cfg.lr_schedule}), "
            f"seed {cfg.seed}")


def _evaluation_line(e: dict) -> str:
    name = e.get("evaluation", "?")
    pixels = e.get("pixels") if isinstance(e.get("pixels"), dict) else None
    if name == "linear":
        beside = f" (pixels: top-1 {_pct(pixels.get('top1'))})" if pixels else ""
        return (f"| linear ({e.get('protocol')}) | top-1 {_pct(e.get('top1'))}, top-5 {_pct(e.get('top5'))}{beside} | "
                f"{e.get('at', '')} |")
    if name == "knn":
        parts = [f"k={k}: top-1 {_pct(v.get('top1'))}" for k, v in e.get("scores", {}).items()]
        if pixels:
            parts.append(f"pixels k={pixels.get('k')}: {_pct(pixels.get('knn_top1'))}, centred "
                         f"{_pct(pixels.get('centred_knn_top1'))}")
        return f"| kNN (T={e.get('temperature')}) | {', '.join(parts)} | {e.get('at', '')} |"
    if name == "transfer":
        return (f"| transfer to {e.get('target')} | {e.get('metric')} {_pct(e.get('score'))} "
                f"(wd {e.get('best_wd'):.3g}) | {e.get('at', '')} |")
    if name == "tsne":
        return f"| t-SNE | ![t-SNE]({Path(e.get('figure', '')).name}) | {e.get('at', '')} |"
    if name == "geometry":
        keys = ("rep_effective_rank", "proj_effective_rank", "proj_collapse_std", "proj_uniformity")
        return f"| geometry | {', '.join(f'{k} {_num(e.get(k), 3)}' for k in keys if k in e)} | {e.get('at', '')} |"
    return f"| {name} | {json.dumps({k: v for k, v in e.items() if k != 'at'})[:200]} | {e.get('at', '')} |"


def _pixel_lines(pixels: dict | None, evaluations: list[dict]) -> list[str]:
    """Rows of the final-metrics table for the pixel baselines (RUN/baselines.json; a linear figure
    may also come from a later `stopgrad eval linear`)."""
    linear = next((e["pixels"]["top1"] for e in reversed(evaluations) if e.get("evaluation") == "linear"
                   and isinstance(e.get("pixels"), dict) and e["pixels"].get("top1") is not None), None)
    if linear is None and pixels:
        linear = pixels.get("linear_top1")
    lines = []
    if pixels:
        lines.append(f"| pixels: kNN top-1, k = {pixels.get('k')} / k = 1 (raw; mean-centred) | "
                     f"{_pct(pixels.get('knn_top1'))} / {_pct(pixels.get('knn1_top1'))}; "
                     f"{_pct(pixels.get('centred_knn_top1'))} / {_pct(pixels.get('centred_knn1_top1'))} |")
    if linear is not None:
        lines.append(f"| pixels: linear top-1 (fast) | {_pct(linear)} |")
    return lines


def report_markdown(run_dir: Path, cfg: Config, rows: list[dict], evaluations: list[dict]) -> str:
    run_dir = Path(run_dir)
    lines = [f"# Run {run_dir.name}", "", describe_run(cfg) + ".", ""]
    if not rows:
        return "\n".join(lines + ["No epoch has finished yet.", ""])
    last = rows[-1]
    evaluated = [r for r in rows if r.get("knn_top1") is not None]
    final = evaluated[-1] if evaluated else {}
    if finished(cfg, last):
        state = "finished"
    elif cfg.steps is None:
        state = f"stopped after epoch {last['epoch']} of {cfg.epochs}"
    else:
        state = f"stopped after epoch {last['epoch']} (step {last.get('step')} of {cfg.steps})"
    alarm = any(r.get("collapse_alarm") for r in rows)
    lines += [f"Status: {state}{'; the collapse alarm was raised' if alarm else ''}. "
              f"Training time {last.get('seconds', 0):.0f} s.", "",
              "## Final metrics", "", f"Evaluated after epoch {final.get('epoch', '–')} on the test images.", "",
              "| metric | value |", "|---|---|",
              f"| kNN top-1, k = {cfg.knn_k} | {_pct(final.get('knn_top1'))} (random init: {_pct(rows[0].get('knn_top1'))}) |",
              f"| kNN top-5, k = {cfg.knn_k} | {_pct(final.get('knn_top5'))} |",
              f"| kNN top-1, k = 1 | {_pct(final.get('knn1_top1'))} |"]
    lines += _pixel_lines(read_run_baselines(run_dir), evaluations)
    for space, title in (("rep", "representation"), ("proj", "projection")):
        if f"{space}_collapse_std" in final:
            lines.append(f"| {title}: collapse std / effective rank / alignment / uniformity | "
                         f"{_num(final.get(f'{space}_collapse_std'))} / {_num(final.get(f'{space}_effective_rank'), 1)} / "
                         f"{_num(final.get(f'{space}_alignment'), 3)} / {_num(final.get(f'{space}_uniformity'), 3)} |")
    if final.get("test_tp_similarity") is not None:
        lines.append(f"| TP / FN / TN similarity (test views, projection) | {_num(final['test_tp_similarity'], 3)} / "
                     f"{_num(final.get('test_fn_similarity'), 3)} / {_num(final.get('test_tn_similarity'), 3)} |")
    if last.get("tp_similarity") is not None:
        lines.append(f"| TP / FN / TN similarity (training batches, last epoch) | {_num(last['tp_similarity'], 3)} / "
                     f"{_num(last.get('fn_similarity'), 3)} / {_num(last.get('tn_similarity'), 3)} |")
    if evaluations:
        lines += ["", "## Evaluations", "", "| evaluation | result | at |", "|---|---|---|"]
        lines += [_evaluation_line(e) for e in evaluations]
    figures = [f"{key}.png" for key in CURVES if (run_dir / f"{key}.png").is_file()]
    if (run_dir / "spectrum.png").is_file():
        figures.append("spectrum.png")
    if figures:
        lines += ["", "## Curves", ""] + [f"![{f[:-4]}]({f})" for f in figures]
    lines += ["", "## Per epoch", "", "| epoch | loss | lr | kNN top-1 | k = 1 | collapse std | TP sim | FN sim | img/s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['epoch']} | {_num(r.get('loss'))} | {_num(r.get('lr'), 5)} | {_pct(r.get('knn_top1'))} | "
                     f"{_pct(r.get('knn1_top1'))} | {_num(r.get('collapse_std'))} | {_num(r.get('tp_similarity'), 3)} | "
                     f"{_num(r.get('fn_similarity'), 3)} | {_num(r.get('images_per_second'), 0)} |")
    lines += ["", "## Config", "", "```yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def write_report(run_dir: Path, cfg: Config, rows: list[dict]) -> Path:
    run_dir = Path(run_dir)
    text = report_markdown(run_dir, cfg, rows, read_evaluations(run_dir))
    runs.atomic_write(run_dir / REPORT_FILE, lambda tmp: Path(tmp).write_text(text))
    return run_dir / REPORT_FILE


# ----------------------------------------------------------------------------------------------- compare
def _label(run_dir: Path, cfg: Config) -> str:
    policy = f"+{cfg.stopgrad}" if cfg.method in ("simsiam", "byol", "moco-v3") else ""
    return f"{run_dir.name} ({cfg.method}{policy}{'' if cfg.predictor else ', no pred.'})"


X_AXES = {"epoch": "epoch", "time": "training minutes"}


def compare(run_dirs: list[Path], out: Path, metrics=("loss", "knn_top1", "collapse_std"), x: str = "epoch") -> str:
    """Overlay ``metrics`` of every run in one PNG at ``out``; return a markdown table.

    ``x``: ``"epoch"``, or ``"time"`` (training minutes: each row's cumulative ``seconds``, evaluation
    excluded). The kNN panels draw the runs' pixel baselines (RUN/baselines.json) as dashed lines.
    """
    if x not in X_AXES:
        raise ConfigError(f"invalid x axis {x!r}; choose one of {', '.join(X_AXES)}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loaded = []
    for d in map(Path, run_dirs):
        cfg, rows = runs.read_config(d), runs.read_metrics(d)
        if not rows:
            raise ConfigError(f"{d} has no metrics yet; give runs that have finished at least one evaluation")
        loaded.append((d, cfg, rows))
    pixels = [b for b in (read_run_baselines(d) for d, _, _ in loaded) if b]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.6), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], metrics):
        for d, cfg, rows in loaded:
            points = [(r["epoch"] if x == "epoch" else r.get("seconds", 0) / 60, r[key]) for r in rows
                      if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=_label(d, cfg))
        pixel_key = {"knn_top1": ("knn_top1", "centred_knn_top1"), "knn1_top1": ("knn1_top1", "centred_knn1_top1")}
        drawn = set()
        for raw_key, style, name in zip(pixel_key.get(key, ()), (":", "--"), ("pixels", "centred pixels")):
            for value in sorted({b[raw_key] for b in pixels if b.get(raw_key) is not None} - drawn):
                ax.axhline(value, color="gray", linestyle=style, linewidth=1, label=f"{name} {100 * value:.1f}%")
                drawn.add(value)
        ax.set_xlabel(X_AXES[x])
        ax.set_title(CURVES.get(key, key))
        ax.grid(alpha=0.3)
    for ax in axes[0]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)

    header = "| run | method | epochs | kNN top-1 (final) | best | k = 1 | collapse std | linear top-1 | train s |"
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for d, cfg, rows in loaded:
        evaluated = [r for r in rows if r.get("knn_top1") is not None]
        final = evaluated[-1] if evaluated else {}
        best = max((r["knn_top1"] for r in evaluated), default=None)
        linear = [e for e in read_evaluations(d) if e.get("evaluation") == "linear"]
        lin = f"{_pct(linear[-1]['top1'])} ({linear[-1]['protocol']})" if linear else "–"
        lines.append(f"| {d.name} | {_label(d, cfg).split('(', 1)[1][:-1]} | {_progress(cfg, rows[-1])} | "
                     f"{_pct(final.get('knn_top1'))} | {_pct(best)} | {_pct(final.get('knn1_top1'))} | "
                     f"{_num(rows[-1].get('collapse_std'))} | {lin} | {rows[-1].get('seconds', 0):.0f} |")
    seen = set()
    for b in pixels:  # one pair of rows per distinct bank, k and T
        key = (b.get("fingerprint"), b.get("k"), b.get("temperature"))
        if key in seen:
            continue
        seen.add(key)
        lin = f"{_pct(b['linear_top1'])} (fast)" if b.get("linear_top1") is not None else "–"
        for name, prefix in (("pixels", ""), ("pixels, mean-centred", "centred_")):
            lines.append(f"| {name} | (k = {b.get('k')}, {b.get('bank')} images) | – | {_pct(b.get(prefix + 'knn_top1'))} | "
                         f"– | {_pct(b.get(prefix + 'knn1_top1'))} | – | {lin if not prefix else '–'} | – |")
    return "\n".join(lines)


__all__ = ["REPORT_FILE", "EVALUATIONS_FILE", "compare", "describe_run", "read_evaluations", "record_evaluation",
           "report_markdown", "write_report", "plot_metrics"]
