"""GSG Table 4's question at our scale: how do explicit contrastive learning and GSG fare as the batch shrinks?

SimCLR (in-batch negatives: K = 2B - 2, the paper's SimCLR and end-to-end rows) against SimSiam and
BYOL with GSG (no negatives; GSG's partners come from the batch), at three batch sizes (two on
cpu: 64 and 256, the paper's fourfold shrink at its ends). The learning rate scales linearly with
the batch (lr = 0.2 x B / 128 on cpu, 0.06 x B / 512 on gpu) and the number of epochs is fixed, so
a smaller batch takes more, smaller steps. SimSiam and BYOL without GSG (the symmetric loss) run
at the smallest and the largest batch, so GSG's own dependence on the batch (its partners are the
other images of the batch) is measured against theirs. Every method uses two views per image here
(the same encoder work per image for all). Linear probe and kNN top-1.

The paper's Table 4 (ImageNet, ResNet-50, linear top-1 at b = 1024 / 512 / 256) reports SimCLR
62.8 / 60.7 / 57.5 and end-to-end 57.3 / 56.3 / 54.9 falling with the batch, SimSiam w/ GSG 70.1 /
69.4 / 69.9 and BYOL w/ GSG 71.9 / 71.0 / 71.6 flat. Its MoCo and InstDisc rows vary the size of
the memory, not the batch: accuracy against the number of negatives is ``eqco-k``'s question.
"""
from __future__ import annotations

from pathlib import Path

from . import Report, format_paired, markdown_table
from .gsg import LINEAR, PAPER as GSG_PAPER, configuration, device_note, label
from .training import cell, pixel_rows, run_configurations, values

TITLE = "Batch size: SimCLR vs SimSiam and BYOL with and without GSG as the batch shrinks"
PAPER = GSG_PAPER + ", Table 4 (§5.3)"
DEFAULT_SEEDS = 3
BATCHES = {"smoke": (32, 64), "cpu": (64, 256), "gpu": (256, 512, 1024)}  # cpu: the paper's 4x shrink, at its ends
REFERENCE = {"smoke": (0.1, 64), "cpu": (0.2, 128), "gpu": (0.06, 512)}  # lr at a batch: linear scaling
EPOCHS = {"smoke": 1, "cpu": 4, "gpu": 200}
CONTRASTIVE = (("simclr", "symmetric"),)
GUIDED = (("simsiam", "guided"), ("byol", "guided"))
SYMMETRIC = (("simsiam", "symmetric"), ("byol", "symmetric"))  # at the smallest and the largest batch
METHODS = CONTRASTIVE + GUIDED + SYMMETRIC
BUDGETS = {
    "smoke": "digits, width-4 small CNN, batches 32 and 64, 1 epoch: a pipeline check, not a result",
    "cpu": "Fashion-MNIST, the earlier default recipe (small-cnn) with two views for every method, batches 64 and 256 with "
           "lr 0.2 x B/128, 4 epochs; fast linear probe and kNN; ~1 h 15 min for 3 seeds on 2 idle cores",
    "gpu": "CIFAR-10, CIFAR ResNet-18, batches 256 / 512 / 1024 with lr 0.06 x B/512 (constant), 200 epochs, "
           "two views; the paper's linear protocol",
}
PAPER_IMAGENET = {("simclr", "symmetric"): "62.8 / 60.7 / 57.5 (end-to-end 57.3 / 56.3 / 54.9)",
                  ("simsiam", "guided"): "70.1 / 69.4 / 69.9", ("byol", "guided"): "71.9 / 71.0 / 71.6"}


def batches_of(budget: str, policy: str, method: str) -> tuple:
    """The batch sizes a method runs at: all of them, or the two ends for SimSiam and BYOL without GSG."""
    b = BATCHES[budget]
    return (b[0], b[-1]) if (method, policy) in SYMMETRIC else b


def name_of(method: str, policy: str, batch: int) -> str:
    return f"{method}{'-symmetric' if (method, policy) in SYMMETRIC else ''}-b{batch}"


def configurations(budget: str) -> list[dict]:
    lr0, b0 = REFERENCE[budget]
    out = []
    for method, policy in METHODS:
        for b in batches_of(budget, policy, method):
            out.append(configuration(budget, method, {"stopgrad": policy, "views": 2, "batch_size": b,
                                                      "lr": lr0 * b / b0, "epochs": EPOCHS[budget],
                                                      "eval_every": EPOCHS[budget]},
                                     name=name_of(method, policy, b), stopgrad=policy, batch=b,
                                     linear=LINEAR[budget], cost=b0 / b))  # small batches: more steps per epoch
    return out


def run(budget: str, seeds: list[int], out_dir: Path, log) -> Report:
    configs = run_configurations(configurations(budget), seeds, out_dir, budget, log,
                                 "cuda" if budget == "gpu" else "cpu")
    figure = _plot(configs, budget, out_dir)
    return Report(configurations=configs, table=_table(configs, budget, seeds), device=device_note(budget),
                  settings={"epochs": EPOCHS[budget], "batches": BATCHES[budget], "lr_reference": REFERENCE[budget],
                            "configurations": {c["name"]: {"preset": c["preset"], **c["overrides"]} for c in configs}},
                  figures=[figure], notes=["SimCLR's negatives are the 2B - 2 other views of the batch; GSG's "
                                           "partners are drawn from the batch as well."])


def _table(configs: list[dict], budget: str, seeds: list[int]) -> str:
    batches = BATCHES[budget]
    by = {(c["method"], c["stopgrad"], c["batch"]): c for c in configs}
    rows = []
    for method, policy in METHODS:
        def at(b, key):
            return cell(by[(method, policy, b)], key) if (method, policy, b) in by else "–"
        rows.append([label(method, policy)] + [at(b, "linear.top1") for b in batches]
                    + [at(b, "knn_top1") for b in batches] + [PAPER_IMAGENET.get((method, policy), "–")])
    init = configs[0]
    width = 2 + 2 * len(batches)
    rows.append(["random init (same backbone)"] + ["–"] * len(batches)
                + [cell(init, "init.knn_top1")] * len(batches) + ["–"])
    rows += pixel_rows(init, {**{str(1 + i): "linear_top1" for i in range(len(batches))},
                              **{str(1 + len(batches) + i): "knn_top1" for i in range(len(batches))}}, width)
    head = (["method"] + [f"linear, B = {b}" for b in batches] + [f"kNN, B = {b}" for b in batches]
            + ["paper, ImageNet linear (B = 1024 / 512 / 256)"])
    spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else "one seed"
    k = configs[0]["overrides"].get("knn_k", 200)
    return (markdown_table(head, rows) + f"\n\nTop-1 (%) on the test set, {spread}; kNN with k = {k}. The random-init "
            "row is the backbone before training (the same weights at every batch size); the pixel rows are the "
            "same kNN and probe on the images."
            + (" SimSiam and BYOL without GSG run at the smallest and largest batch only." if len(batches) > 2 else "")
            + "\n\n" + _differences(by, batches))


def _drops(by: dict, method: tuple, small: int, large: int, key: str) -> list[float]:
    """Per seed, the accuracy at batch ``large`` minus that at ``small`` (points): what shrinking costs."""
    return [x - y for x, y in zip(values(by[(*method, large)], key, 100), values(by[(*method, small)], key, 100))]


def _differences(by: dict, batches: tuple, keys=(("linear", "linear.top1"), ("kNN", "knn_top1"))) -> str:
    """Paired over seeds: how much each method loses when the batch shrinks from the largest to each smaller
    one, how much less a GSG method loses than each explicit contrastive one (the paper's claim), and GSG
    against the symmetric loss of the same method at the two ends."""
    small, large = batches[0], batches[-1]
    rows = []
    for method in METHODS:
        for b in batches[:-1]:
            if (*method, b) in by:
                rows.append([label(*method), f"loss: B = {large} − B = {b}"]
                            + [_paired(_drops(by, method, b, large, key)) for _, key in keys])
    for method in GUIDED:
        for other in CONTRASTIVE + ((method[0], "symmetric"),):
            rows.append([f"{label(*method)} vs {label(*other)}", f"its loss − the other's, B = {large} → {small}"]
                        + [format_paired(_drops(by, method, small, large, key), _drops(by, other, small, large, key))
                           for _, key in keys])
    for method in GUIDED:
        for b in (small, large):
            rows.append([label(*method), f"w/ GSG − symmetric, B = {b}"]
                        + [format_paired(values(by[(*method, b)], key, 100),
                                         values(by[(method[0], "symmetric", b)], key, 100)) for _, key in keys])
    head = ["method", "difference (points)"] + [name for name, _ in keys]
    return (markdown_table(head, rows) + "\n\nMean of the per-seed differences ± its standard error (paired over "
            "seeds: each seed's runs start from the same backbone weights). A positive loss is accuracy lost by "
            "the smaller batch; the paper's claim is that the contrastive methods lose and GSG does not, so an "
            "\"its loss − the other's\" row is negative where GSG loses less.")


def _paired(d: list[float]) -> str:
    return format_paired(d, [0.0] * len(d))


def _plot(configs: list[dict], budget: str, out_dir: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from . import mean_std
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    for method, policy in METHODS:
        cs = [c for c in configs if c["method"] == method and c["stopgrad"] == policy]
        stats = [mean_std(values(c, "linear.top1", 100)) for c in cs]
        ax.errorbar([c["batch"] for c in cs], [m for m, _ in stats], yerr=[s for _, s in stats], marker="o",
                    capsize=3, label=label(method, policy), linestyle="--" if (method, policy) in SYMMETRIC else "-")
    ax.set_xscale("log", base=2)
    ax.set_xticks(BATCHES[budget], [str(b) for b in BATCHES[budget]])
    ax.set_xlabel("batch size")
    ax.set_ylabel("linear top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "linear_vs_batch.png")
    plt.close(fig)
    return "linear_vs_batch.png"
