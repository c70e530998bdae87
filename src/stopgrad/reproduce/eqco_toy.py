"""EqCo paper, Table 5: InfoNCE and EqCo as mutual-information estimators on correlated Gaussians.

The setting (paper §3, "A Toy Evaluation of EqCo", following Poole et al. 2019):
x ∈ R^20 ~ N(0, I), y = ρx + √(1−ρ²)ε with ε ~ N(0, I), so I(x; y) = −(20/2)·log(1−ρ²).
Two MLPs (20 → 256, ReLU → 32) embed x and y; the critic is their inner product
f(x, y) = g(x)·h(y). Adam (lr 5e-4) trains them for 5,000 steps on fresh samples with K negatives
per query, to minimise InfoNCE (margin 0) or EqCo (margin m = log(α/K), α = 512). After training,
the bound is estimated on 1,000 fresh batches and averaged: InfoNCE log K − L, EqCo
log K + m − L = log α − L.

Choices the paper leaves open or that we make differently, each a setting below:

* **Critic.** The toy section names no normalisation and no temperature, and follows Poole et
  al., whose separable critic is the raw inner product g(x)ᵀh(y). We use that critic (temperature
  1). :func:`stopgrad.losses.info_nce` L2-normalises its inputs, so :func:`inner_product_info_nce`
  lifts the embeddings onto a sphere of radius R (R² ≥ every squared norm in the batch, detached):
  q' = [q, √(R²−|q|²), 0], k' = [k, 0, √(R²−|k|²)]. Then |q'| = |k'| = R and q'·k' = q·k, so
  info_nce with temperature 1/R² and margin eqco_margin(1/R², α, K) = log(α/K)/R² gives exactly
  the logits q·k − m of the unnormalised critic, gradients included.
* **Embedding width** 32 (not stated in the paper; the separable critic of Poole et al.'s demo).
* **α = 512.** The value is illegible in the paper's text; the table fixes it: the InfoNCE and
  EqCo entries at K = 512 are identical in all five rows, which holds exactly when α = K = 512
  (margin 0). Our EqCo run at K = α *is* the InfoNCE run (same seed, same data, margin 0).
* **Negatives** (``"in-batch"``, as in the paper): each step draws K+1 fresh pairs and every query
  is contrasted with the other K positives (:func:`stopgrad.losses.info_nce_in_batch`). The check
  ``"shared"`` draws 2K pairs: K queries with their positives, and the y's of the other K as the
  negatives of every query (:func:`stopgrad.losses.info_nce` with shared (K, D) negatives, as in
  MoCo); EqCo's Remarks 2 says the difference should not matter. The cpu budget runs it at K = 64.
* **Bound.** log K − L as the paper writes it (the strict InfoNCE bound with K+1 candidates is
  log(K+1) − L, higher by at most log(65/64) = 0.016 nats here).
* **Seeds.** Seed s fixes the MLPs' initialisation and the data streams; InfoNCE and EqCo at the
  same (seed, K) see the same initialisation and the same samples (common random numbers).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..losses import eqco_margin, info_nce, info_nce_in_batch
from . import Report, cpu_workers, device_for, format_mean_std, markdown_table, mean_std, run_jobs

TITLE = "InfoNCE vs EqCo as mutual-information estimators on correlated Gaussians (EqCo Table 5)"
PAPER = "Zhu et al., EqCo: Equivalent Rules for Self-supervised Contrastive Learning, Table 5"
DEFAULT_SEEDS = 3

DIM, HIDDEN, EMBED, LR, ALPHA = 20, 256, 32, 5e-4, 512
FULL = dict(mis=(2.0, 4.0, 6.0, 8.0, 10.0), ks=(64, 128, 256, 512), steps=5000, eval_batches=1000,
            check_mis=(2.0, 6.0, 10.0), check_k=64, curve_every=100)
SETTINGS = {
    "smoke": dict(mis=(6.0,), ks=(16, 64), steps=150, eval_batches=20, check_mis=(6.0,), check_k=16,
                  curve_every=50),
    "cpu": FULL,
    "gpu": FULL,
}
BUDGETS = {
    "smoke": "one true MI (6), K in {16, 64}, 150 steps, 20 evaluation batches: a pipeline check, not a result",
    "cpu": "the full table: true MI 2-10, K 64-512, 5,000 steps, 1,000 evaluation batches, "
           "plus shared negatives at K = 64 as a check (8 minutes on 2 idle cores)",
    "gpu": "the same as cpu, on one CUDA device",
}
METHODS = {"infonce": "InfoNCE", "eqco": f"EqCo (α = {ALPHA})"}
# Table 5 of the paper: true MI -> method -> estimates at K = 64, 128, 256, 512
PAPER_KS = (64, 128, 256, 512)
PAPER_TABLE = {
    2.0: {"infonce": (1.7, 1.8, 1.9, 1.9), "eqco": (1.9, 1.9, 1.9, 1.9)},
    4.0: {"infonce": (2.9, 3.2, 3.4, 3.6), "eqco": (3.8, 3.7, 3.6, 3.6)},
    6.0: {"infonce": (3.6, 4.1, 4.5, 4.9), "eqco": (5.1, 5.0, 4.9, 4.9)},
    8.0: {"infonce": (3.9, 4.6, 5.1, 5.6), "eqco": (5.8, 5.7, 5.7, 5.6)},
    10.0: {"infonce": (4.1, 4.7, 5.4, 6.0), "eqco": (6.1, 6.0, 6.0, 6.0)},
}


def paper_value(mi: float, k: int, method: str) -> float | None:
    row = PAPER_TABLE.get(float(mi), {}).get(method)
    return row[PAPER_KS.index(k)] if row is not None and k in PAPER_KS else None


# ---------------------------------------------------------------------------------------------
# data


def mi_to_rho(mi: float, dim: int = DIM) -> float:
    """The correlation ρ for which I(x; y) = mi nats with x, y ∈ R^dim."""
    return math.sqrt(1.0 - math.exp(-2.0 * mi / dim))


def rho_to_mi(rho: float, dim: int = DIM) -> float:
    """I(x; y) = −(dim/2)·log(1 − ρ²)."""
    return -0.5 * dim * math.log(1.0 - rho ** 2)


def correlated_gaussian(n: int, rho: float, dim: int = DIM, generator: torch.Generator | None = None,
                        device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """n pairs: x ~ N(0, I), y = ρx + √(1−ρ²)ε."""
    x = torch.randn(n, dim, generator=generator, device=device)
    eps = torch.randn(n, dim, generator=generator, device=device)
    return x, rho * x + math.sqrt(1.0 - rho ** 2) * eps


# ---------------------------------------------------------------------------------------------
# loss


def _lift(v: torch.Tensor, r2: torch.Tensor, slot: int) -> torch.Tensor:
    extra = (r2 - v.pow(2).sum(-1, keepdim=True)).clamp_min(0).sqrt()
    zero = torch.zeros_like(extra)
    return torch.cat((v, extra, zero) if slot == 0 else (v, zero, extra), dim=-1)


def inner_product_info_nce(q: torch.Tensor, k_pos: torch.Tensor, k_neg: torch.Tensor | None = None,
                           alpha: float | None = None) -> torch.Tensor:
    """InfoNCE (EqCo with ``alpha``) for the critic f = q·k: no normalisation, temperature 1.

    L = −log( e^{q·k⁺ − m} / (e^{q·k⁺ − m} + Σ_i e^{q·k_i}) ), m = log(alpha/K) (0 without alpha),
    computed by :func:`stopgrad.losses.info_nce` (or ``info_nce_in_batch``) on embeddings lifted
    to a common sphere (see the module docstring), with the margin from
    :func:`stopgrad.losses.eqco_margin`.

    Args:
        q: (B, D) queries; k_pos: (B, D) positives.
        k_neg: (K, D) negatives shared by all queries, (B, K, D) per query, or None: in-batch, the
            other B − 1 positives (K = B − 1).
    """
    tensors = (q, k_pos) if k_neg is None else (q, k_pos, k_neg)
    with torch.no_grad():
        r2 = torch.stack([t.pow(2).sum(-1).max() for t in tensors]).max() * 1.01 + 1e-6
    temperature = 1.0 / r2  # a 0-dim tensor: no device synchronisation
    k = len(q) - 1 if k_neg is None else k_neg.shape[-2]
    margin = eqco_margin(temperature, alpha, k) if alpha is not None else 0.0
    if k_neg is None:
        return info_nce_in_batch(_lift(q, r2, 0), _lift(k_pos, r2, 1), temperature, margin)
    return info_nce(_lift(q, r2, 0), _lift(k_pos, r2, 1), _lift(k_neg, r2, 1), temperature, margin)


def bound_offset(k: int, alpha: float | None) -> float:
    """log K + m/τ: the estimate is this minus the loss (log α − L for EqCo)."""
    return math.log(k) + (math.log(alpha / k) if alpha is not None else 0.0)


# ---------------------------------------------------------------------------------------------
# one configuration


def _mlp(dim: int, hidden: int, embed: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, embed))


def _stream_seed(seed: int, k: int, stream: int) -> int:
    return (seed * 100_000 + k) * 10 + stream


def train_config(job: dict) -> dict:
    """Train the two MLPs of one (true MI, K, method, seed, negatives) and estimate the bound.

    ``job`` holds mi, k, alpha (None: InfoNCE), seed, negatives ("shared" / "in-batch"), steps,
    eval_batches, curve_every, lr, dim, hidden, embed, device, threads (None: leave torch's).
    Returns the job's keys plus estimate (mean of the evaluation batches), estimate_batch_std,
    curve (training estimate averaged over every ``curve_every`` steps), seconds.
    """
    import time

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    k, alpha, dim = job["k"], job["alpha"], job["dim"]
    rho = mi_to_rho(job["mi"], dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(job["seed"])
        g = _mlp(dim, job["hidden"], job["embed"]).to(device)
        h = _mlp(dim, job["hidden"], job["embed"]).to(device)
    opt = torch.optim.Adam([*g.parameters(), *h.parameters()], lr=job["lr"])
    in_batch = job["negatives"] == "in-batch"
    if not in_batch and job["negatives"] != "shared":
        raise ValueError(f"negatives must be 'shared' or 'in-batch', got {job['negatives']!r}")
    offset = bound_offset(k, alpha)

    def loss_on(gen: torch.Generator) -> torch.Tensor:
        if in_batch:  # K+1 pairs; query i's negatives are the other K positives
            x, y = correlated_gaussian(k + 1, rho, dim, gen, device)
            return inner_product_info_nce(g(x), h(y), None, alpha)
        x, y = correlated_gaussian(2 * k, rho, dim, gen, device)
        q, keys = g(x[:k]), h(y)
        return inner_product_info_nce(q, keys[:k], keys[k:], alpha)

    start = time.perf_counter()
    gen = torch.Generator(device).manual_seed(_stream_seed(job["seed"], k, 0))
    curve, window = [], torch.zeros((), device=device)
    for step in range(1, job["steps"] + 1):
        loss = loss_on(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window += loss.detach()
        if step % job["curve_every"] == 0 or step == job["steps"]:
            n = job["curve_every"] if step % job["curve_every"] == 0 else step % job["curve_every"]
            curve.append([step, offset - window.item() / n])
            window.zero_()
    train_seconds = time.perf_counter() - start

    gen = torch.Generator(device).manual_seed(_stream_seed(job["seed"], k, 1))
    with torch.no_grad():
        losses = torch.stack([loss_on(gen) for _ in range(job["eval_batches"])]).double()
    estimates = offset - losses
    return {**{key: job[key] for key in ("mi", "k", "alpha", "seed", "negatives")},
            "estimate": estimates.mean().item(),
            "estimate_batch_std": estimates.std().item() if len(estimates) > 1 else 0.0,
            "curve": curve, "train_seconds": round(train_seconds, 2),
            "seconds": round(time.perf_counter() - start, 2)}


# ---------------------------------------------------------------------------------------------
# the experiment


def _job_alpha(method: str, k: int) -> float | None:
    """EqCo's α, or None where the loss is InfoNCE (EqCo at K = α has margin 0: the same run)."""
    return ALPHA if method == "eqco" and k != ALPHA else None


def run(budget: str, seeds: list[int], out_dir: Path, log) -> Report:
    s = SETTINGS[budget]
    device = device_for(budget)
    if device == "cuda":  # one process drives the device
        workers, threads = 1, None
    elif budget == "smoke":  # in this process (no worker start-up), one thread: the sizes are tiny
        workers, threads = 1, 1
    else:
        workers, threads = cpu_workers()
    base = dict(steps=s["steps"], eval_batches=s["eval_batches"], curve_every=s["curve_every"], lr=LR,
                dim=DIM, hidden=HIDDEN, embed=EMBED, device=device, threads=threads)

    # configurations: (negatives, mi, k, method); jobs are deduplicated by what actually runs
    configs = [("in-batch", mi, k, m) for mi in s["mis"] for k in s["ks"] for m in METHODS]
    configs += [("shared", mi, s["check_k"], m) for mi in s["check_mis"] for m in METHODS]
    jobs: dict[tuple, dict] = {}
    for neg, mi, k, method in configs:
        for seed in seeds:
            key = (neg, mi, k, _job_alpha(method, k), seed)
            cost = s["steps"] * ((2 if neg == "in-batch" else 3) * k + 100)
            jobs.setdefault(key, dict(base, mi=mi, k=k, alpha=key[3], seed=seed, negatives=neg, cost=cost))
    keys = list(jobs)
    n_runs = len(seeds) * len(configs)
    log(f"{len(configs)} configurations x {len(seeds)} seeds = {n_runs} runs, {len(keys)} distinct "
        f"(EqCo at K = {ALPHA} is InfoNCE); {workers} worker process(es) on {device}")

    def describe(job, res):
        name = "InfoNCE" if job["alpha"] is None else "EqCo"
        return (f"MI {job['mi']:g} K {job['k']} {name} seed {job['seed']} ({job['negatives']}): "
                f"{res['estimate']:.3f} nats, {res['seconds']:.0f} s")

    threads_before = torch.get_num_threads()
    try:
        results = dict(zip(keys, run_jobs(train_config, [jobs[k] for k in keys], workers, log, describe)))
    finally:  # jobs run in this process set its thread count
        torch.set_num_threads(threads_before)

    configurations = []
    for neg, mi, k, method in configs:
        runs = [results[(neg, mi, k, _job_alpha(method, k), seed)] for seed in seeds]
        est = [r["estimate"] for r in runs]
        configurations.append({
            "true_mi": mi, "k": k, "method": method, "alpha": ALPHA if method == "eqco" else None,
            "negatives": neg, "bound_ceiling": math.log(ALPHA if method == "eqco" else k),
            "paper": paper_value(mi, k, method), "seeds": list(seeds), "estimate": est,
            "mean": sum(est) / len(est), "estimate_batch_std": [r["estimate_batch_std"] for r in runs],
            "train_seconds": [r["train_seconds"] for r in runs], "seconds": [r["seconds"] for r in runs],
            "same_run_as": "infonce" if method == "eqco" and k == ALPHA else None,
            "curve": [r["curve"] for r in runs],
        })

    figures = [_plot_mi_vs_k(configurations, s, out_dir), _plot_curves(configurations, s, out_dir)]
    settings = dict(s, dim=DIM, hidden=HIDDEN, embed=EMBED, lr=LR, alpha=ALPHA, optimizer="Adam",
                    critic="inner product g(x).h(y), unnormalised, temperature 1",
                    queries_per_step="K+1 (in-batch), K (shared)", workers=workers, threads=threads)
    if device == "cuda":
        where = f"cuda ({torch.cuda.get_device_name(0)})"
    elif workers > 1:
        where = f"cpu ({workers} worker processes x {threads} thread{'s' if threads > 1 else ''})"
    else:
        where = f"cpu (one process, {threads} thread{'s' if threads > 1 else ''})"
    return Report(configurations=configurations, table=_tables(configurations, s, seeds), settings=settings,
                  device=where, figures=figures, notes=_notes(s))


def _cell(c: dict) -> str:
    text = format_mean_std(c["estimate"])
    return text + (f" ({c['paper']:.1f})" if c["paper"] is not None else "")


def _tables(configurations: list[dict], s: dict, seeds: list[int]) -> str:
    by = {(c["negatives"], c["true_mi"], c["k"], c["method"]): c for c in configurations}
    rows = []
    for mi in s["mis"]:
        for m, label in METHODS.items():
            rows.append([f"{mi:g}", label] + [_cell(by[("in-batch", mi, k, m)]) for k in s["ks"]])
    rows.append(["", "log K (InfoNCE ceiling)"] + [f"{math.log(k):.2f}" for k in s["ks"]])
    spread = "mean ± std over {} seeds".format(len(seeds)) if len(seeds) > 1 else "one seed"
    out = [f"Estimated mutual information (nats), {spread}; in parentheses the paper's Table 5. "
           f"EqCo's ceiling is log α = {math.log(ALPHA):.2f} at every K.", "",
           markdown_table(["true MI", "estimator"] + [f"K = {k}" for k in s["ks"]], rows)]
    if s["check_mis"]:
        k = s["check_k"]
        rows = []
        for mi in s["check_mis"]:
            for m, label in METHODS.items():
                main = by.get(("in-batch", mi, k, m))
                rows.append([f"{mi:g}", label, format_mean_std(main["estimate"]) if main else "–",
                             format_mean_std(by[("shared", mi, k, m)]["estimate"]),
                             f"{paper_value(mi, k, m):.1f}" if paper_value(mi, k, m) is not None else "–"])
        out += ["", f"Negatives check at K = {k}: the paper's in-batch negatives (the table above: K+1 pairs, "
                    f"each query against the other K positives) vs K negatives shared by all queries "
                    f"(2K pairs: K queries, the other K y's as negatives).", "",
                markdown_table(["true MI", "estimator", "in-batch", "shared", "paper"], rows)]
    return "\n".join(out)


def _notes(s: dict) -> list[str]:
    return [
        "Setting: x ∈ R^20 ~ N(0, I), y = ρx + √(1−ρ²)ε, true MI = −10·log(1−ρ²). Two MLPs "
        f"({DIM} → {HIDDEN}, ReLU → {EMBED}) embed x and y; critic f(x, y) = g(x)·h(y), unnormalised, "
        f"temperature 1 (the paper follows Poole et al.'s separable critic and names no normalisation); "
        f"Adam lr {LR:g}, {s['steps']:,} steps of fresh samples, then the bound averaged over "
        f"{s['eval_batches']:,} fresh batches: InfoNCE log K − L, EqCo log K + m − L = log α − L with "
        f"m = log(α/K), α = {ALPHA}.",
        "Our choices: α = 512 (illegible in the paper's text; its InfoNCE and EqCo entries at K = 512 are "
        "identical in every row, which holds exactly when α = K = 512, so our EqCo run at K = 512 is the "
        "InfoNCE run); embedding width 32 (not stated); in-batch negatives as in the paper (K+1 pairs per "
        "step), checked against negatives shared by all queries in the second table. The losses are "
        "`stopgrad.losses.info_nce_in_batch` / `info_nce` with `eqco_margin`, on embeddings lifted to a "
        "common sphere so that their cosine/temperature logits equal the raw inner product (see "
        "`stopgrad/reproduce/eqco_toy.py`).",
    ]


# ---------------------------------------------------------------------------------------------
# figures


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _plot_mi_vs_k(configurations: list[dict], s: dict, out_dir: Path) -> str:
    plt = _pyplot()
    by = {(c["true_mi"], c["k"], c["method"]): c for c in configurations if c["negatives"] == "in-batch"}
    ks = list(s["ks"])
    fig, axes = plt.subplots(1, len(s["mis"]), figsize=(2.9 * len(s["mis"]) + 0.6, 3.5), dpi=90,
                             squeeze=False, sharey=False)
    for ax, mi in zip(axes[0], s["mis"]):
        shown = [mi]
        for m, color in (("infonce", "C0"), ("eqco", "C1")):
            cs = [by[(mi, k, m)] for k in ks]
            means, stds = zip(*(mean_std(c["estimate"]) for c in cs))
            ax.errorbar(ks, means, yerr=stds, color=color, marker="o", ms=4, capsize=2, label=f"{METHODS[m]}, ours")
            paper = [(k, paper_value(mi, k, m)) for k in ks if paper_value(mi, k, m) is not None]
            if paper:
                ax.plot(*zip(*paper), color=color, ls=":", marker="s", mfc="none", ms=5,
                        label=f"{METHODS[m]}, paper")
            shown += list(means) + [v for _, v in paper]
        ax.plot(ks, [math.log(k) for k in ks], color="0.5", ls="--", lw=1, label="log K")
        ax.axhline(mi, color="k", lw=0.8, label="true MI")
        ax.set_ylim(min(shown) - 0.3, max(shown) + 0.3)  # log K may leave the panel
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("K (negatives per query)")
        ax.set_title(f"true MI = {mi:g} nats")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("estimated MI (nats)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: (", ours" not in labels[i], ", paper" not in labels[i]))
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    name = "mi_vs_k.png"
    fig.savefig(out_dir / name)
    plt.close(fig)
    return name


def _plot_curves(configurations: list[dict], s: dict, out_dir: Path) -> str:
    """Training-batch estimate over the steps at the largest true MI (seed 0): has it converged?"""
    plt = _pyplot()
    mi = max(s["mis"])
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=90)
    for c in configurations:
        if c["negatives"] != "in-batch" or c["true_mi"] != mi or c["same_run_as"]:
            continue
        steps, values = zip(*c["curve"][0])
        ax.plot(steps, values, color=f"C{s['ks'].index(c['k'])}", ls="-" if c["method"] == "infonce" else "--",
                lw=1, label=f"{'InfoNCE' if c['method'] == 'infonce' else 'EqCo'} K = {c['k']}")
    ax.axhline(mi, color="k", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("training-batch estimate (nats)")
    ax.set_title(f"true MI = {mi:g}, seed 0 (EqCo at K = {ALPHA} is InfoNCE)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    name = "training_curves.png"
    fig.savefig(out_dir / name)
    plt.close(fig)
    return name
