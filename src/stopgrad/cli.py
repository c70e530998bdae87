"""Command line: ``stopgrad train | eval knn | list``.

Bad input ends with one line on stderr naming the problem and the fix, and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .config import FIELDS, Config, ConfigError, build_config, presets

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    return value


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="pre-train an encoder (default: BYOL with guided stop-gradient on Fashion-MNIST)",
                       description="Pre-train an encoder. Flags override --config, which overrides the defaults.")
    p.add_argument("--config", metavar="PRESET", help="YAML file or preset name from `stopgrad list`")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<dataset>-<method>-<policy>-<time>)")
    _config_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _config_flags(p) -> None:
    """Flags that override config keys (shared by train and bench)."""
    from .backbones import BACKBONES
    from .data.augment import RECIPES
    from .gsg import POLICIES
    from .heads import HEAD_PRESETS
    from .methods import METHODS

    p.add_argument("--method", choices=METHODS)
    p.add_argument("--stopgrad", choices=POLICIES, help="stop-gradient policy")
    p.add_argument("--no-predictor", dest="predictor", action="store_const", const=False,
                   help="h = identity (the no-predictor ablation)")
    p.add_argument("--views", type=_positive_int, choices=(2, 4),
                   help="4: fresh views for the partner role (faithful); 2: reuse the partner's views")
    c = p.add_argument_group("contrastive methods")
    c.add_argument("--temperature", type=float, help="InfoNCE / NT-Xent temperature")
    c.add_argument("--num-negatives", type=_positive_int, metavar="K",
                   help="queue, memory-bank or sampled negatives per query")
    c.add_argument("--eqco-alpha", type=float, metavar="A",
                   help="EqCo margin T*log(A/K) on the InfoNCE positive (0: off)")
    c.add_argument("--bank-momentum", type=float, help="InstDisc memory-bank momentum")
    c.add_argument("--directclr-dim", type=_positive_int, metavar="D0", help="DirectCLR: dimensions in the loss")
    c.add_argument("--fnc-mode", choices=("elimination", "attraction"), help="FNC: what to do with false negatives")
    c.add_argument("--fnc-top-k", type=_positive_int, help="FNC: false negatives per anchor")
    c.add_argument("--triplet-rank", type=_positive_int, help="truncated triplet: rank of the deputy negative")
    c.add_argument("--triplet-smoothed", action=argparse.BooleanOptionalAction,
                   help="truncated triplet: mean of ranks 2..2k+1 instead of the rank-k negative")
    c.add_argument("--triplet-margin", type=float)
    p.add_argument("--dataset", metavar="{fashion-mnist,cifar10,cifar100,digits,folder:PATH}")
    p.add_argument("--data-dir", help="folder holding the data set's files")
    p.add_argument("--image-size", type=_positive_int)
    p.add_argument("--augment", choices=tuple(RECIPES), help="augmentation recipe")
    p.add_argument("--train-subset", type=_positive_int, metavar="N", help="train on N images (quick runs)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction,
                   help="image folders: decode batch by batch from disk (default: when over 2 GiB decoded)")
    p.add_argument("--backbone", choices=BACKBONES)
    p.add_argument("--width", type=_positive_int, help="small-cnn base width")
    p.add_argument("--heads", choices=tuple(HEAD_PRESETS), help="projector/predictor sizes")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-schedule", choices=("cosine", "constant"))
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--ema-momentum", type=float, help="BYOL target momentum")
    p.add_argument("--ema-schedule", choices=("constant", "cosine"))
    p.add_argument("--amp", action=argparse.BooleanOptionalAction,
                   help="bfloat16 autocast with fp32 weights (default: where the device has native bfloat16)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="NHWC memory format (default: on)")
    p.add_argument("--compile", action="store_const", const=True, help="torch.compile the model")
    p.add_argument("--workers", type=int, help="decoding processes for streamed image folders")
    p.add_argument("--eval-every", type=_positive_int, metavar="EPOCHS")
    p.add_argument("--knn-k", type=_positive_int)
    p.add_argument("--knn-temperature", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=_positive_int, help="CPU threads")


def _cmd_train(args) -> int:
    from .runs import read_config
    from .train import train

    overrides = {k: v for k, v in vars(args).items() if k in FIELDS and v is not None}
    if args.resume:
        if overrides or args.config or args.out:
            flags = ", ".join("--" + k.replace("_", "-") for k in overrides) or "--config/--out"
            raise ConfigError(f"--resume continues a run with its saved config; drop {flags}")
        run_dir = Path(args.resume)
        cfg = read_config(run_dir)
    else:
        cfg = build_config(args.config, overrides)
        run_dir = Path(args.out) if args.out else None
    result = train(cfg, run_dir, resume=bool(args.resume), progress=False if args.no_progress else None)
    init = result["knn_top1_init"]
    print(f"kNN top-1: {result['knn_top1']:.4f} (random init: {init:.4f})" if init is not None
          else f"kNN top-1: {result['knn_top1']:.4f}")
    print(f"run directory: {result['run_dir']}")
    return 0


def _cmd_eval_knn(args) -> int:
    from .backbones import build_backbone
    from .data import load_dataset
    from .evaluate.knn import knn_top1
    from .runs import BACKBONE_FILE, load_backbone_state, load_checkpoint, read_config
    from .train import pick_device, training_images

    if args.k <= 0 or not args.temperature > 0:
        raise ConfigError("--k and --temperature must be positive")
    run_dir = Path(args.run)
    cfg = read_config(run_dir)
    device = pick_device(args.device or cfg.device)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.image_size, stream=cfg.stream)
    backbone = build_backbone(cfg.backbone, data.channels, cfg.width)
    if (run_dir / BACKBONE_FILE).is_file():
        state, source = load_backbone_state(run_dir / BACKBONE_FILE), BACKBONE_FILE
    else:  # an unfinished run: its last checkpoint
        model_state = load_checkpoint(run_dir, "cpu")["model"]
        state = {k[len("backbone."):]: v for k, v in model_state.items() if k.startswith("backbone.")}
        source = "checkpoints/last.pt"
    backbone.load_state_dict(state)
    backbone.to(device)
    train_x, train_y = training_images(cfg, data)  # the bank is the run's training images
    top1 = knn_top1(backbone, train_x, train_y, data.test_x, data.test_y, data.mean, data.std, cfg.image_size,
                    args.k, args.temperature)
    print(json.dumps({"run": str(run_dir), "weights": source, "k": args.k, "temperature": args.temperature,
                      "bank": len(train_x), "queries": len(data.test_x), "knn_top1": top1}))
    return 0


def _bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="training throughput against the conventional pipeline, kNN time, memory",
                       description="Benchmark a configuration on this machine (default: the default run's). "
                                   "Times the stopgrad training loop and a conventional per-image torchvision "
                                   "DataLoader pipeline (fp32) on the same model and batch, in the same run.")
    p.add_argument("--config", metavar="PRESET", help="YAML file or preset name from `stopgrad list`")
    _config_flags(p)
    p.add_argument("--synthetic", metavar="CxHxW", help="random uint8 images of this shape instead of --dataset "
                                                         "(e.g. 3x32x32 for CIFAR-shaped throughput)")
    p.add_argument("--steps", type=_positive_int, default=20, help="timed steps (default 20)")
    p.add_argument("--warmup", type=_positive_int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--rounds", type=_positive_int, default=3, help="timings per figure; the median is reported")
    p.add_argument("--conventional-workers", type=int, metavar="N",
                   help="DataLoader workers of the conventional pipeline (default: the faster of half and all CPUs, up to 8)")
    p.add_argument("--no-conventional", action="store_true", help="skip the conventional pipeline")
    p.add_argument("--no-knn", action="store_true", help="skip the kNN timing")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")


def _cmd_bench(args) -> int:
    from .bench import bench, format_table, synthetic_data
    from .runs import atomic_write

    overrides = {k: v for k, v in vars(args).items() if k in FIELDS and v is not None}
    cfg = build_config(args.config, overrides)
    data = None
    if args.synthetic:
        n = cfg.batch_size * (args.warmup + args.rounds * args.steps + 2)
        data = synthetic_data(args.synthetic, max(n, 2000))
    if args.json and Path(args.json).is_dir():
        raise ConfigError(f"--json {args.json} is a directory; give a file name")
    result = bench(cfg, data, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
                   conventional=not args.no_conventional, workers=args.conventional_workers, knn=not args.no_knn,
                   log=lambda m: print(m, file=sys.stderr))
    print(format_table(result))
    if args.json:
        text = json.dumps(result, indent=1) + "\n"
        atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(text))
    return 0


def _cmd_list(args) -> int:
    from .backbones import BACKBONES
    from .data.augment import RECIPES
    from .data.datasets import DATASETS
    from .gsg import POLICIES
    from .heads import HEAD_PRESETS
    from .methods import METHODS

    for title, items in (("methods", METHODS), ("stop-gradient policies", POLICIES), ("datasets", DATASETS),
                         ("backbones", BACKBONES), ("head presets", tuple(HEAD_PRESETS)),
                         ("augmentation recipes", tuple(RECIPES)), ("config presets (--config)", presets())):
        print(f"{title}:")
        for item in items:
            print(f"  {item}")
    return 0


def _reproduce_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="run a paper experiment and write results.json, results.md and figures",
                       description="Reproduce a paper's table or figure. --budget smoke is a minute on 2 CPU "
                                   "cores (a pipeline check), cpu fits 2 cores in an hour or less, gpu is the "
                                   "paper-scale setting on a CUDA device. `--list` names the experiments.")
    p.add_argument("name", nargs="?", metavar="NAME", help="experiment (see --list)")
    p.add_argument("--list", action="store_true", help="list the experiments and their budgets")
    p.add_argument("--budget", choices=("smoke", "cpu", "gpu"))
    p.add_argument("--seeds", type=_positive_int, metavar="N", help="seeds 0..N-1 (default: the experiment's)")
    p.add_argument("--out", metavar="DIR", help="output folder: new, empty, or holding this experiment's "
                                                "results of the same budget (replaced)")


def _cmd_reproduce(args) -> int:
    import shlex

    from .reproduce import list_experiments, run_experiment

    if args.list:
        for e in list_experiments():
            print(f"{e['name']}: {e['title']}\n  paper: {e['paper']}\n  seeds: {e['default_seeds']} by default")
            for budget, text in e["budgets"].items():
                print(f"  --budget {budget}: {text}")
        return 0
    if not args.name:
        raise ConfigError("give an experiment name; `stopgrad reproduce --list` lists them")
    if not args.budget or not args.out:
        raise ConfigError(f"give {' and '.join(f for f, v in (('--budget', args.budget), ('--out', args.out)) if not v)}"
                          f", e.g. `stopgrad reproduce {args.name} --budget smoke --out results/{args.name}`")
    if args.seeds is not None and args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    from .reproduce import experiment_module
    seeds = args.seeds if args.seeds is not None else experiment_module(args.name).DEFAULT_SEEDS
    command = shlex.join(["stopgrad", "reproduce", args.name, "--budget", args.budget, "--seeds", str(seeds),
                          "--out", args.out])
    try:
        record = run_experiment(args.name, args.budget, seeds, Path(args.out), command,
                                log=lambda m: print(m, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print(f"stopgrad: interrupted; {args.out}/results.json says so; run the same command again to redo it",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print((Path(args.out) / "results.md").read_text())
    print(f"wall time {record['wall_seconds']:.0f} s; results in {args.out}/ (results.json, results.md, "
          f"{', '.join(record['figures'])})")
    return 0


def make_parser() -> Parser:
    parser = Parser(prog="stopgrad", description="Self-supervised representation learning with guided stop-gradient.")
    parser.add_argument("--version", action="version", version=f"stopgrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _train_parser(sub)
    _bench_parser(sub)
    _reproduce_parser(sub)
    ev = sub.add_parser("eval", help="evaluate a run's backbone")
    ev_sub = ev.add_subparsers(dest="evaluation", required=True, parser_class=Parser)
    knn = ev_sub.add_parser("knn", help="weighted kNN top-1 on un-augmented train/test images; prints JSON")
    knn.add_argument("--run", required=True, metavar="DIR")
    knn.add_argument("--k", type=_positive_int, default=200)
    knn.add_argument("--temperature", type=float, default=0.1)
    knn.add_argument("--device")
    sub.add_parser("list", help="methods, policies, data sets, backbones and presets")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .data.datasets import DataError

    args = make_parser().parse_args(argv)
    handlers = {"train": _cmd_train, "list": _cmd_list, "eval": _cmd_eval_knn, "bench": _cmd_bench,
                "reproduce": _cmd_reproduce}
    try:
        return handlers[args.command](args)
    except (ConfigError, DataError) as exc:
        print(f"stopgrad: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("stopgrad: interrupted; a training run continues from its last epoch with "
              "`stopgrad train --resume DIR`", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
