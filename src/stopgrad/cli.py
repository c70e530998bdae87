"""Command line: ``stopgrad train | eval | compare | export | reproduce | bench | list``.

Bad input ends with one line on stderr naming the problem and the fix, and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .config import FIELDS, ConfigError, build_config, presets

EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report it


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _whole_number(text: str) -> int:
    """An int; config flags are range-checked by Config.validate, whose message names the key."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _backbone_name(text: str) -> str:
    """argparse type: a built-in backbone or LIBRARY:NAME (the model's existence is checked by the config)."""
    from .backbones import BACKBONES, LIBRARIES
    library, sep, arch = text.partition(":")
    if text in BACKBONES or (sep and library in LIBRARIES and arch):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(BACKBONES)}, "
                                     "torchvision:NAME or timm:NAME; `stopgrad list` says how to list the names)")


def _floats(count: int):
    """argparse type: ``count`` comma-separated numbers, e.g. ``1,1,0.1``."""
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers, got {text!r}")
        return values
    return parse


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="pre-train an encoder (default: BYOL with guided stop-gradient on Fashion-MNIST)",
                       description="Pre-train an encoder. Flags override --config, which overrides the defaults.")
    p.add_argument("--config", metavar="PRESET", help="YAML file or preset name from `stopgrad list`")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<dataset>-<method>-<policy>-<time>)")
    p.add_argument("--auto-resume", action="store_true",
                   help="with --out DIR: start the run when DIR is new or empty, continue it when DIR holds this "
                        "same run; the same command can be repeated after a failure (torchrun --max-restarts)")
    _config_flags(p)
    p.add_argument("--steps", type=_whole_number,
                   help="train this many steps instead of whole epochs (the schedules span them; the last epoch "
                        "is cut short)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


class _GroupedFlags:
    """Adds each config flag to the --help section of its key's group (:data:`stopgrad.config.OPTION_GROUPS`).

    Stands in for the parser in :func:`_config_flags`: ``add_argument`` picks the section from the
    flag's key, and ``add_argument_group`` returns this same object, so a flag lands in its
    group's section wherever it is written.
    """

    def __init__(self, parser):
        from .config import OPTION_GROUPS, option_groups
        self.parser = parser
        self.sections = {name: parser.add_argument_group(OPTION_GROUPS[name][1]) for name in OPTION_GROUPS}
        self.group_of = {key: name for name, keys in option_groups().items() for key in keys}

    def add_argument(self, *names, **kwargs):
        key = kwargs.get("dest") or names[0].lstrip("-").replace("-", "_")
        section = self.sections.get(self.group_of.get(key))
        return (section or self.parser).add_argument(*names, **kwargs)

    def add_argument_group(self, *args, **kwargs):
        return self


def _config_flags(p) -> None:
    """Flags that override config keys (shared by train and bench), listed by group in --help."""
    from .backbones import BACKBONES
    from .data.augment import RECIPES
    from .gsg import POLICIES
    from .heads import HEAD_PRESETS
    from .methods import METHODS
    from .optim import LR_SCALINGS, OPTIMIZERS

    p = _GroupedFlags(p)
    p.add_argument("--method", choices=METHODS)
    p.add_argument("--stopgrad", choices=POLICIES, help="stop-gradient policy")
    p.add_argument("--no-predictor", dest="predictor", action="store_const", const=False,
                   help="h = identity (the no-predictor ablation)")
    p.add_argument("--views", type=_whole_number, choices=(2, 4),
                   help="4: fresh views for the partner role (faithful); 2: reuse the partner's views")
    c = p.add_argument_group("contrastive methods")
    c.add_argument("--temperature", type=float, help="InfoNCE / NT-Xent temperature")
    c.add_argument("--num-negatives", type=_whole_number, metavar="K",
                   help="queue, memory-bank or sampled negatives per query")
    c.add_argument("--eqco-alpha", type=float, metavar="A",
                   help="EqCo margin T*log(A/K) on the InfoNCE positive (0: off)")
    c.add_argument("--bank-momentum", type=float, help="InstDisc memory-bank momentum")
    c.add_argument("--directclr-dim", type=_whole_number, metavar="D0", help="DirectCLR: dimensions in the loss")
    c.add_argument("--fnc-mode", choices=("elimination", "attraction"), help="FNC: what to do with false negatives")
    c.add_argument("--fnc-top-k", type=_whole_number, help="FNC: false negatives per anchor")
    c.add_argument("--triplet-rank", type=_whole_number, help="truncated triplet: rank of the deputy negative")
    c.add_argument("--triplet-smoothed", action=argparse.BooleanOptionalAction,
                   help="truncated triplet: mean of ranks 2..2k+1 instead of the rank-k negative")
    c.add_argument("--triplet-margin", type=float)
    r = p.add_argument_group("prototype and redundancy-reduction methods")
    r.add_argument("--bt-lambda", type=float, help="Barlow Twins: weight of the off-diagonal term (5e-3)")
    r.add_argument("--vicreg-weights", type=_floats(3), metavar="INV,VAR,COV",
                   help="VICReg: lambda, mu, nu (25,25,1)")
    r.add_argument("--twist-classes", type=_whole_number, metavar="C", help="TWIST: classes of the distributions")
    r.add_argument("--spcl-prototypes", type=_whole_number, metavar="P", help="SPCL: k-means prototypes")
    r.add_argument("--spcl-weights", type=_floats(3), metavar="C,M,P",
                   help="SPCL: contrastive, metric, prototype loss weights (0 drops a term)")
    r.add_argument("--spcl-targets", choices=("kmeans", "labels"),
                   help="SPCL: k-means prototypes, or the ground-truth classes (an upper-bound ablation)")
    r.add_argument("--spcl-anchor-fraction", type=float, metavar="F",
                   help="SPCL: share of each batch drawn from its anchor prototype")
    r.add_argument("--spcl-symmetric-ce", type=_floats(2), metavar="ALPHA,BETA",
                   help="SPCL: symmetric cross-entropy for the prototype loss (default: plain)")
    p.add_argument("--dataset", metavar="{fashion-mnist,cifar10,cifar100,digits,folder:PATH}")
    p.add_argument("--data-dir", help="folder holding the data set's files")
    p.add_argument("--image-size", type=_whole_number)
    p.add_argument("--augment", choices=tuple(RECIPES), help="augmentation recipe")
    p.add_argument("--train-subset", type=_whole_number, metavar="N", help="train on N images (quick runs)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction,
                   help="image folders: decode batch by batch from disk (default: when over 2 GiB decoded)")
    p.add_argument("--backbone", type=_backbone_name, metavar="NAME",
                   help=f"{', '.join(BACKBONES)}, torchvision:NAME or timm:NAME (`stopgrad list`)")
    p.add_argument("--width", type=_whole_number, help="small-cnn base width")
    p.add_argument("--small-input", action=argparse.BooleanOptionalAction,
                   help="adapt a torchvision/timm model to small images: CIFAR stem for ResNets, 4-pixel patches "
                        "for timm ViTs (default: when the images are 64 px or smaller)")
    p.add_argument("--freeze-patch-embed", action="store_const", const=True,
                   help="keep a ViT's random patch projection fixed (MoCo v3's stability trick)")
    p.add_argument("--heads", choices=tuple(HEAD_PRESETS), help="projector/predictor sizes")
    p.add_argument("--epochs", type=_whole_number)
    p.add_argument("--batch-size", type=_whole_number)
    p.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="sgd (default), lars (BYOL/Barlow Twins/VICReg), adamw (MoCo v3 ViT); vicreg defaults to lars")
    p.add_argument("--lr", type=float,
                   help="base learning rate (default: sgd 0.2, lars 0.2, adamw 1.5e-4; vicreg with sgd 0.05)")
    p.add_argument("--lr-scaling", choices=LR_SCALINGS,
                   help="linear: lr x batch-size / 256 (default for lars and adamw); none: lr as given (sgd)")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"))
    p.add_argument("--warmup-epochs", type=float, help="linear warm-up from 0 (fractions of an epoch allowed)")
    p.add_argument("--weight-decay", type=float,
                   help="default: sgd 5e-4, lars 1.5e-6 (vicreg 1e-6), adamw 0.1; lars and adamw skip biases and norms")
    p.add_argument("--sgd-momentum", type=float, help="momentum of sgd and lars (default 0.9)")
    p.add_argument("--lars-eta", type=float, help="LARS trust coefficient (default 0.001)")
    p.add_argument("--adamw-betas", type=_floats(2), metavar="BETA1,BETA2", help="AdamW betas (default 0.9,0.999)")
    p.add_argument("--ema-momentum", type=float, help="BYOL target momentum")
    p.add_argument("--ema-schedule", choices=("constant", "cosine"))
    p.add_argument("--amp", action=argparse.BooleanOptionalAction,
                   help="bfloat16 autocast with fp32 weights (default: where the device has native bfloat16)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="NHWC memory format (default: on)")
    p.add_argument("--compile", action="store_const", const=True, help="torch.compile the model")
    p.add_argument("--workers", type=int, help="decoding processes for streamed image folders")
    e = p.add_argument_group("evaluation during training")
    e.add_argument("--eval-every", type=_whole_number, metavar="EPOCHS",
                   help="epochs between evaluations (kNN, geometry); the last epoch is always evaluated")
    e.add_argument("--knn-k", type=_whole_number, help="k of the online kNN (k = 1 is reported too)")
    e.add_argument("--knn-temperature", type=float)
    e.add_argument("--eval-geometry", action=argparse.BooleanOptionalAction,
                   help="collapse std, effective rank, alignment/uniformity, TP/FN similarity at each evaluation "
                        "(default: on)")
    e.add_argument("--collapse-threshold", type=float, metavar="X",
                   help="collapse alarm when sqrt(D) x the projection's collapse std (healthy ~1) stays under X "
                        "(default 0.2; 0: off)")
    e.add_argument("--collapse-patience", type=_whole_number, metavar="N",
                   help="... for N consecutive evaluations (default 3)")
    e.add_argument("--stop-on-collapse", action="store_const", const=True,
                   help="the collapse alarm stops the run, keeping its last checkpoint")
    e.add_argument("--pixel-baselines", action=argparse.BooleanOptionalAction,
                   help="kNN top-1 on the raw and mean-centred pixels before training, beside the random-init "
                        "line (default: on; cached per data set)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=_whole_number, help="CPU threads")
    r = p.add_argument_group("many processes and fault tolerance")
    r.add_argument("--sync-bn", action="store_const", const=True,
                   help="under torchrun: BatchNorm statistics over the global batch")
    r.add_argument("--gsg-partners", choices=("local", "global"),
                   help="under torchrun: GSG partners within each process's batch (default) or the global batch")
    r.add_argument("--checkpoint-every", type=_whole_number, metavar="STEPS",
                   help="also checkpoint every STEPS steps within an epoch (default: at epoch ends only)")
    r.add_argument("--max-nan-skips", type=_whole_number, metavar="N",
                   help="skip up to N steps whose loss is NaN or Inf instead of stopping the run (default 0)")
    r.add_argument("--log", choices=("both", "jsonl", "tensorboard"),
                   help="metrics.jsonl, TensorBoard events in RUN/tensorboard, or both (default: both when "
                        "tensorboard is installed)")
    r.add_argument("--strict-data", action="store_const", const=True,
                   help="an unreadable image in a folder is an error (default: skipped, with a count)")


def _cmd_train(args) -> int:
    from .runs import auto_resume, read_config
    from .train import train

    overrides = {k: v for k, v in vars(args).items() if k in FIELDS and v is not None}
    if args.resume:
        if overrides or args.config or args.out:
            flags = ", ".join("--" + k.replace("_", "-") for k in overrides) or "--config/--out"
            raise ConfigError(f"--resume continues a run with its saved config; drop {flags}")
        if args.auto_resume:
            raise ConfigError("--resume and --auto-resume exclude each other; --auto-resume takes the run's "
                              "flags and its --out")
        run_dir = Path(args.resume)
        cfg = read_config(run_dir)
        resume = True
    else:
        cfg = build_config(args.config, overrides)
        run_dir = Path(args.out) if args.out else None
        if args.auto_resume and run_dir is None:
            raise ConfigError("--auto-resume needs --out DIR: the folder the run starts in, or continues in")
        resume = args.auto_resume and auto_resume(run_dir, cfg)
    result = train(cfg, run_dir, resume=resume, progress=False if args.no_progress else None)
    if not result["main"]:  # one of several processes: the main one reports
        return 0
    init, pixels = result["knn_top1_init"], result.get("pixels")
    beside = [f"random init: {init:.4f}"] if init is not None else []
    if pixels:
        beside.append(f"pixels: {pixels['knn_top1']:.4f}, centred {pixels['centred_knn_top1']:.4f}")
    print(f"kNN top-1: {result['knn_top1']:.4f}" + (f" ({'; '.join(beside)})" if beside else ""))
    if result["stopped"] == "collapse":
        print(f"stopped after epoch {result['epoch']}: the representation collapsed (collapse alarm); the last "
              f"checkpoint is kept, `stopgrad train --resume {result['run_dir']}` would continue it")
    print(f"run directory: {result['run_dir']}")
    print(f"report: {Path(result['run_dir']) / 'report.md'}")
    return 0


def _eval_parser(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a run: knn, linear, transfer, tsne, geometry",
                        description="Evaluate a run's frozen backbone. Each evaluation prints its result as JSON, "
                                    "adds it to the run's evaluations.jsonl and refreshes its report.md.")
    ev_sub = ev.add_subparsers(dest="evaluation", required=True, parser_class=Parser)

    def add(name: str, help: str, description: str):
        p = ev_sub.add_parser(name, help=help, description=description)
        p.add_argument("--run", required=True, metavar="DIR", help="run directory (the --out of `stopgrad train`)")
        p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the run's setting)")
        p.add_argument("--no-save", action="store_true", help="print only; leave the run's files as they are")
        return p

    knn = add("knn", "weighted kNN on un-augmented train/test images",
              "Weighted kNN (votes exp(sim/T)) of test images against the run's training images, top-1 and "
              "top-5, for every --k in one neighbour search.")
    knn.add_argument("--k", type=_positive_int, nargs="+", default=[1, 200], metavar="K", help="(default: 1 200)")
    knn.add_argument("--temperature", type=float, default=0.1, help="vote temperature T (default 0.1)")
    knn.add_argument("--no-pixels", dest="pixels", action="store_false",
                     help="leave out the pixel baselines (kNN on raw and mean-centred pixels, same k and T)")
    lin = add("linear", "linear probe on the frozen backbone (fast L-BFGS, or the paper's SGD protocol)",
              "Linear classifier on frozen features; only the classifier trains, and the backbone is checked "
              "bit-identical afterwards. fast: features once, L-BFGS logistic regression (seconds). paper: SGD "
              "lr 30, momentum 0.9, cosine, batch 256, 90 epochs on crop+flip views.")
    lin.add_argument("--protocol", choices=("fast", "paper"), default="fast")
    lin.add_argument("--wd", type=float, help="fast: weight decay, scikit-learn's C = 1/wd (default 1)")
    lin.add_argument("--epochs", type=_positive_int, help="paper: epochs (default 90)")
    lin.add_argument("--lr", type=float, help="paper: learning rate (default 30)")
    lin.add_argument("--batch-size", type=_positive_int, help="paper: batch size (default 256)")
    lin.add_argument("--no-pixels", dest="pixels", action="store_false",
                     help="fast: leave out the same probe on the pixels (the first time on a data set it "
                          "takes about as long as a probe of 784-d features; then cached)")
    tr = add("transfer", "transfer protocol of the GSG paper (Ericsson et al.) on another labelled data set",
             "Frozen features of a target data set, resized and centre-cropped to the run's input; L-BFGS "
             "logistic regression with the weight decay chosen on a validation split among 45 values in "
             "[1e-6, 1e5]; refit on train+val; test top-1 or mean per-class accuracy.")
    tr.add_argument("--target", required=True, metavar="DATASET",
                    help="digits, fashion-mnist, cifar10, cifar100, or folder:PATH with train/ and test/ "
                         "(and optionally val/) class folders")
    tr.add_argument("--data-dir", help="folder holding the target's files (built-in data sets)")
    tr.add_argument("--metric", choices=("top1", "per-class"), default="top1")
    tr.add_argument("--val-fraction", type=float, default=0.2,
                    help="share of the training split held out when the target has no val/ split (default 0.2)")
    ts = add("tsne", "t-SNE map of test-set representations, coloured by class (PNG)",
             "2-D t-SNE (scikit-learn) of the backbone features of a class-stratified sample of test images.")
    ts.add_argument("--samples", type=_positive_int, default=2000, help="test images in the map (default 2000)")
    ts.add_argument("--out", metavar="PNG", help="output file (default: DIR/tsne.png)")
    geo = add("geometry", "collapse std, effective rank, spectrum, alignment/uniformity, TP/FN similarity",
              "Geometry of the representation and the projection on test images; writes the covariance "
              "spectrum as a PNG (default DIR/spectrum.png).")
    geo.add_argument("--pairs", type=_positive_int, default=2048,
                     help="test images whose two augmented views give alignment and TP/FN similarity")
    geo.add_argument("--out", metavar="PNG", help="spectrum figure (default: DIR/spectrum.png)")


def _cmd_eval(args) -> int:
    from .evaluate.saved import evaluate_saved

    options: dict = {}
    name = args.evaluation
    if name == "knn":
        options = {"ks": args.k, "temperature": args.temperature, "pixels": args.pixels}
    elif name == "linear":
        options = {"protocol": args.protocol, "pixels": args.pixels}
        if args.protocol == "fast":
            if args.epochs or args.lr or args.batch_size:
                raise ConfigError("--epochs, --lr and --batch-size belong to --protocol paper")
            if args.wd is not None:
                if not args.wd > 0:
                    raise ConfigError(f"--wd must be positive, got {args.wd}")
                options["wd"] = args.wd
        else:
            if args.wd is not None:
                raise ConfigError("--wd belongs to --protocol fast (the paper protocol uses no weight decay)")
            if args.lr is not None and not args.lr > 0:
                raise ConfigError(f"--lr must be positive, got {args.lr}")
            options.update({k: v for k, v in (("epochs", args.epochs), ("lr", args.lr),
                                              ("batch_size", args.batch_size)) if v is not None})
    elif name == "transfer":
        if not 0 < args.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
        options = {"target": args.target, "data_dir": args.data_dir, "metric": args.metric,
                   "val_fraction": args.val_fraction}
    elif name == "tsne":
        options = {"samples": args.samples, "out": args.out}
    else:
        options = {"pairs": args.pairs, "out": args.out}
    result = evaluate_saved(name, Path(args.run), args.device, save=not args.no_save,
                            log=lambda m: print(m, file=sys.stderr, flush=True), **options)
    print(json.dumps(result))
    return 0


def _compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="overlay the curves of several runs in one PNG and print a table",
                       description="Overlay training curves of runs (loss, kNN top-1, collapse std by default) in "
                                   "one PNG and print a markdown table of their final numbers.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--out", metavar="PNG", default="compare.png", help="figure file (default compare.png)")
    p.add_argument("--metrics", nargs="+", metavar="KEY", default=["loss", "knn_top1", "collapse_std"],
                   help="metrics.jsonl keys to plot, one panel each")
    p.add_argument("--x", choices=("epoch", "time"), default="epoch",
                   help="x axis: epoch (default), or time: training minutes (evaluation excluded)")


def _cmd_compare(args) -> int:
    from .report import compare
    from .runs import CONFIG_FILE

    for run in args.runs:
        if not (Path(run) / CONFIG_FILE).is_file():
            raise ConfigError(f"{run} is not a run directory (no {CONFIG_FILE}); give --out folders of `stopgrad train`")
    if Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a directory; give a PNG file name")
    print(compare([Path(r) for r in args.runs], Path(args.out), tuple(args.metrics), x=args.x))
    print(f"figure: {args.out}")
    return 0


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run's backbone for torchvision, timm or detectron2",
                       description="Write a run's trained backbone in another library's layout: a state dict that "
                                   "loads with strict=True into the torchvision or timm model (.safetensors, or "
                                   ".pt/.pth for torch.load(..., weights_only=True)), or a ResNet under detectron2's "
                                   "key names (.pkl, for MODEL.WEIGHTS). Prints how to load it.")
    p.add_argument("run", metavar="RUN", help="run directory (the --out of `stopgrad train`)")
    p.add_argument("--format", required=True, choices=("torchvision", "timm", "detectron2"))
    p.add_argument("--out", required=True, metavar="FILE", help="file to write (.safetensors, .pt, .pth; detectron2: .pkl)")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists (default: refuse)")


def _cmd_export(args) -> int:
    from .export import export_backbone

    result = export_backbone(Path(args.run), args.format, Path(args.out), force=args.force)
    print(f"wrote {result['out']}: {result['tensors']} tensors from {result['weights']}")
    if args.format == "detectron2":
        print("detectron2 options: MODEL.WEIGHTS " + result["out"] + " " + " ".join(result["load"]))
    else:
        print("load it with:")
        prelude = "import torch, torchvision\nfrom torch import nn" if args.format == "torchvision" else \
            "import torch, timm"
        reader = ("from safetensors.torch import load_file\nstate = load_file" if result["out"].endswith(".safetensors")
                  else "state = torch.load")
        args_text = f"({result['out']!r})" if "load_file" in reader else f"({result['out']!r}, weights_only=True)"
        for line in [*prelude.splitlines(), *result["load"], *reader.splitlines()[:-1],
                     reader.splitlines()[-1] + args_text, "model.load_state_dict(state, strict=True)"]:
            print(f"  {line}")
    for note in result["notes"]:
        print(f"note: {note}")
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
    p.add_argument("--steps", dest="timed_steps", type=_positive_int, default=20, help="timed steps (default 20)")
    p.add_argument("--warmup", type=_positive_int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--rounds", type=_positive_int, default=3, help="timings per figure; the median is reported")
    p.add_argument("--conventional-workers", type=int, metavar="N",
                   help="DataLoader workers of the conventional pipeline (default: the faster of half and all CPUs, up to 8)")
    p.add_argument("--no-conventional", action="store_true", help="skip the conventional pipeline")
    p.add_argument("--no-knn", action="store_true", help="skip the kNN timing")
    p.add_argument("--kornia", action="store_true",
                   help="also time Kornia's batched augmentation of the same views (pip install kornia)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    t = p.add_argument_group("time to accuracy")
    t.add_argument("--time-to-accuracy", action="store_true",
                   help="train the config (kNN after every epoch) and print the training minutes to reach "
                        "each --targets accuracy, with the pixel baselines beside")
    t.add_argument("--targets", type=float, nargs="+", metavar="ACC",
                   help="kNN top-1 targets, fractions (default 0.84 0.86 0.88)")
    t.add_argument("--out", metavar="DIR", help="the run directory of the training (default: runs/...)")
    t.add_argument("--run", metavar="DIR", help="read a trained run instead of training one")


def _cmd_time_to_accuracy(args, overrides: dict) -> int:
    from .runs import atomic_write, read_config
    from .time_to_accuracy import DEFAULT_TARGETS, format_report, time_to_accuracy

    targets = args.targets or DEFAULT_TARGETS
    if any(not 0 < t <= 1 for t in targets):
        raise ConfigError(f"--targets are accuracies between 0 and 1, got {' '.join(map(str, targets))}")
    if args.synthetic:
        raise ConfigError("--time-to-accuracy needs labelled images; drop --synthetic")
    if args.json and Path(args.json).is_dir():
        raise ConfigError(f"--json {args.json} is a directory; give a file name")
    if args.run:
        if overrides or args.config or args.out:
            raise ConfigError("--run reads a trained run with its saved config; drop the config flags and --out")
        cfg = read_config(Path(args.run))
    else:
        # every epoch is evaluated (the curve's resolution); geometry is left out unless asked for
        cfg = build_config(args.config, {"eval_every": 1, "eval_geometry": False, **overrides})
    result = time_to_accuracy(cfg, targets, Path(args.run or args.out) if (args.run or args.out) else None,
                              log=lambda m: print(m, file=sys.stderr), existing=bool(args.run))
    print(format_report(result))
    print(f"run directory: {result['run_dir']}")
    if args.json:
        text = json.dumps(result, indent=1) + "\n"
        atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(text))
    return 0


def _cmd_bench(args) -> int:
    from .bench import bench, format_table, synthetic_data
    from .runs import atomic_write

    overrides = {k: v for k, v in vars(args).items() if k in FIELDS and v is not None}
    if args.time_to_accuracy:
        return _cmd_time_to_accuracy(args, overrides)
    if args.targets or args.out or args.run:
        raise ConfigError("--targets, --out and --run belong to --time-to-accuracy")
    cfg = build_config(args.config, overrides)
    data = None
    if args.synthetic:
        n = cfg.batch_size * (args.warmup + args.rounds * args.timed_steps + 2)
        data = synthetic_data(args.synthetic, max(n, 2000))
    if args.json and Path(args.json).is_dir():
        raise ConfigError(f"--json {args.json} is a directory; give a file name")
    result = bench(cfg, data, steps=args.timed_steps, warmup=args.warmup, rounds=args.rounds,
                   conventional=not args.no_conventional, workers=args.conventional_workers, knn=not args.no_knn,
                   kornia=args.kornia, log=lambda m: print(m, file=sys.stderr))
    print(format_table(result))
    if args.json:
        text = json.dumps(result, indent=1) + "\n"
        atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(text))
    return 0


POLICY_INFO = {
    "guided": "GSG: the closest views of two images get the predictor, their siblings are the targets",
    "random": "one of the four cases per pair, uniformly (the paper's ablation)",
    "reverse": "the complement of guided (the paper's worst case)",
    "symmetric": "all four terms, 1/4 each: the SimSiam / BYOL baseline",
}
DATASET_INFO = {
    "fashion-mnist": "Fashion-MNIST, 60,000 + 10,000 gray 28x28 images (Debian's dataset-fashion-mnist); the default",
    "cifar10": "CIFAR-10 python batches (--data-dir, or downloaded when online)",
    "cifar100": "CIFAR-100 python batches (--data-dir, or downloaded when online)",
    "digits": "scikit-learn's 1,797 8x8 digits: seconds-long checks",
    "folder:PATH": "your images: PATH/train/<class>/* and PATH/val/<class>/* (or PATH/<class>/*, split 90/10)",
}
OPTIMIZER_INFO = {
    "sgd": ("SGD with momentum, weight decay on every parameter; lr 0.2 (the default of every method but vicreg; "
            "0.4 for byol and simsiam on small-cnn-grid)"),
    "lars": "LARS (BYOL, Barlow Twins, VICReg), biases and norms excluded; base lr 0.2 x batch/256 (vicreg's default)",
    "adamw": "AdamW (MoCo v3's ViT recipe), no decay on biases and norms; base lr 1.5e-4 x batch/256",
}
BACKBONE_INFO = {
    "small-cnn": "four conv blocks, widths w..8w (--width), for CPUs",
    "resnet18-cifar": "ResNet-18 with the CIFAR stem (3x3, stride 1, no max-pool)",
    "resnet50": "torchvision's ResNet-50",
    "vit-tiny": "ViT for CPUs: a 4x4 grid of patches, width 128, 4 blocks of 4 heads (torchvision's VisionTransformer)",
    "torchvision:NAME": "any torchvision classification model, random init; list them with python -c \"import "
                        "torchvision; print(torchvision.models.list_models(module=torchvision.models))\"",
    "timm:NAME": "any timm model, random init (pip install \"stopgrad[timm]\"); list them with python -c "
                 "\"import timm; print(timm.list_models())\"",
}


def _preset_line(name: str) -> str:
    from .config import resolve_preset
    first = resolve_preset(name).read_text().splitlines()[0].lstrip("# ").rstrip()
    return first


def _cmd_list(args) -> int:
    from .data.augment import RECIPES
    from .heads import HEAD_PRESETS
    from .methods import METHOD_INFO
    from .reproduce import list_experiments

    def section(title: str, rows) -> None:
        print(f"{title}:")
        rows = list(rows)
        width = max(len(name) for name, _ in rows)
        for name, text in rows:
            print(f"  {name:<{width}}  {text}")
        print()

    width = max(map(len, METHOD_INFO))
    section("methods (--method)", ((m, f"{d}\n  {'':<{width}}  {p}") for m, (d, p) in METHOD_INFO.items()))
    section("stop-gradient policies (--stopgrad)", POLICY_INFO.items())
    section("datasets (--dataset)", DATASET_INFO.items())
    section("backbones (--backbone)", BACKBONE_INFO.items())
    section("optimizers (--optimizer)", OPTIMIZER_INFO.items())
    section("head presets (--heads)", ((k, "projector " + "-".join(map(str, v["projector"]))
                                        + (f", predictor {'-'.join(map(str, v['predictor']))}" if v.get("predictor")
                                           else "")) for k, v in HEAD_PRESETS.items()))
    section("augmentation recipes (--augment)", ((k, f"crops of {r.crop_scale[0]:g}-{r.crop_scale[1]:g} of the image"
                                                   f"{', blur' if r.blur_p else ''}") for k, r in RECIPES.items()))
    section("config presets (--config)", ((name, _preset_line(name)) for name in presets()))
    section("experiments (stopgrad reproduce NAME)", ((e["name"], e["title"]) for e in list_experiments()))
    return 0


def _reproduce_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="run a paper experiment and write results.json, results.md and figures",
                       description="Reproduce a paper's table or figure. --budget smoke is a minute on 2 CPU "
                                   "cores (a pipeline check), cpu fits 2 cores in an hour or less, gpu is the "
                                   "paper-scale setting on a CUDA device. `--list` names the experiments.")
    p.add_argument("name", nargs="?", metavar="NAME", help="experiment (see --list)")
    p.add_argument("--list", action="store_true", help="list the experiments and their budgets")
    p.add_argument("--budget", choices=("smoke", "cpu", "gpu-quick", "gpu"),
                   help="smoke: a minute on a CPU; cpu: about an hour on 2 cores; gpu-quick (some experiments): "
                        "minutes on one CUDA device; gpu: the paper's scale (`--list` says what each runs)")
    p.add_argument("--seeds", type=_whole_number, metavar="N", help="seeds 0..N-1 (default: the experiment's)")
    p.add_argument("--out", metavar="DIR", help="output folder: new, empty, or holding this experiment's "
                                                "results of the same budget (replaced)")
    p.add_argument("--only", metavar="NAMES", type=lambda v: [n for n in v.split(",") if n],
                   help="comma-separated configurations to run, each a name or the start of names up to a dash "
                        "(shootout, shootout-recipes, gsg-equal-compute: e.g. --only byol,vicreg); the table holds those")


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
    mod = experiment_module(args.name)
    seeds = args.seeds if args.seeds is not None else getattr(mod, "SEEDS_BY_BUDGET", {}).get(args.budget,
                                                                                           mod.DEFAULT_SEEDS)
    command = shlex.join(["stopgrad", "reproduce", args.name, "--budget", args.budget, "--seeds", str(seeds),
                          "--out", args.out] + (["--only", ",".join(args.only)] if args.only else []))
    try:
        record = run_experiment(args.name, args.budget, seeds, Path(args.out), command,
                                log=lambda m: print(m, file=sys.stderr, flush=True), only=args.only)
    except KeyboardInterrupt:
        print(f"stopgrad: interrupted; {args.out}/results.json says so; run the same command again to redo it",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print((Path(args.out) / "results.md").read_text())
    print(f"wall time {record['wall_seconds']:.0f} s; results in {args.out}/ (results.json, results.md, "
          f"{', '.join(record['figures'])})")
    return 0


EPILOG = """common commands:
  stopgrad train                                   BYOL + GSG on Fashion-MNIST, ~4 min on 2 CPU cores
  stopgrad train --method simsiam --stopgrad symmetric --epochs 20 --out runs/baseline
  stopgrad train --config cifar10/byol-gsg --data-dir DIR     the paper's CIFAR-10 recipe (a GPU run)
  stopgrad train --dataset folder:PATH --image-size 64        your own images
  stopgrad train --resume runs/baseline            continue an interrupted run exactly
  stopgrad eval linear --run runs/baseline         linear probe; also knn, transfer, tsne, geometry
  stopgrad compare runs/a runs/b                   curves of several runs in one PNG, and a table
  stopgrad export RUN --format detectron2 --out r18.pkl   a ResNet's weights for detectron2 (or torchvision, timm)
  stopgrad reproduce gsg-table1 --budget cpu --out results/gsg-table1
  stopgrad list                                    methods, policies, data sets, presets, experiments
  torchrun --nproc_per_node 8 -m stopgrad train ...            several GPUs

`stopgrad COMMAND --help` describes each command's options."""


def make_parser() -> Parser:
    parser = Parser(prog="stopgrad", description="Self-supervised representation learning with guided stop-gradient.",
                    formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"stopgrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _train_parser(sub)
    _bench_parser(sub)
    _reproduce_parser(sub)
    _eval_parser(sub)
    _compare_parser(sub)
    _export_parser(sub)
    sub.add_parser("list", help="methods, policies, data sets, backbones and presets")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .control import NonFiniteLoss
    from .data.datasets import DataError
    from .runs import RunError
    from .train import Stopped

    args = make_parser().parse_args(argv)
    handlers = {"train": _cmd_train, "list": _cmd_list, "eval": _cmd_eval, "bench": _cmd_bench,
                "reproduce": _cmd_reproduce, "compare": _cmd_compare,
                "export": _cmd_export}
    try:
        return handlers[args.command](args)
    except (ConfigError, DataError, RunError) as exc:
        print(f"stopgrad: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLoss as exc:
        print(f"stopgrad: error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except Stopped as exc:
        print(f"stopgrad: {exc}", file=sys.stderr)
        return EXIT_SIGNAL[exc.signal_name]
    except KeyboardInterrupt:
        print("stopgrad: interrupted; a training run continues from its last checkpoint with "
              "`stopgrad train --resume DIR`", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the output went to a pipe that closed (`stopgrad list | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
