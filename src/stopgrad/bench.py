"""``stopgrad bench``: how fast a configuration trains here, against the conventional pipeline.

Both pipelines are timed in the same process on the same model, batch and device:

* **stopgrad** — the training loop itself (:func:`stopgrad.train.train_epoch`): the data set on
  the device as one uint8 tensor, all views augmented in one batched call, bfloat16 autocast and
  channels-last, fused/foreach SGD, no host synchronisation inside a step.
* **conventional** — what most research scripts and libraries' CIFAR examples do: a PIL image per
  item, per-image torchvision transforms in DataLoader worker processes, fp32, contiguous
  tensors, default SGD. It computes the same loss (``tests/test_bench.py`` checks that a step
  gives the same loss on the same views).

Also reported: images/s of the augmentation alone, peak memory, FLOPs of a step (counted by
``torch.utils.flop_counter``) as a fraction of a measured matmul rate, and the time of a weighted
kNN classification of 10,000 queries against 60,000 bank features.
"""
from __future__ import annotations

import os
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config, ConfigError
from .optim import make_optimizer, scaled_lr
from .data import RECIPES
from .data.augment import reference_transform
from .data.datasets import ImageData
from .evaluate.knn import knn_classify
from .gsg import derangement
from .data.stream import iter_batches
from .train import build, epoch_generators, make_views, new_model, train_epoch, train_step


def synthetic_data(shape: str, n: int) -> ImageData:
    """Random uint8 images of shape ``CxHxW`` (e.g. ``3x32x32``, CIFAR's) with random labels."""
    try:
        c, h, w = (int(v) for v in shape.lower().split("x"))
        if c not in (1, 3) or h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise ConfigError(f"invalid --synthetic {shape!r}; give CxHxW with C = 1 or 3, e.g. 3x32x32") from None
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return ImageData(f"synthetic:{shape}", x, y, x[:1000], y[:1000], (0.5,) * c, (0.25,) * c)


class PerImageViews(torch.utils.data.Dataset):
    """The conventional data path: item i is (``views`` independently transformed views of image i, i)."""

    def __init__(self, images, transform, views: int):
        self.images, self.transform, self.views = images, transform, views
        if isinstance(images, torch.Tensor):  # decoded data sets: a numpy array, as torchvision's CIFAR10 keeps
            arr = images.permute(0, 2, 3, 1).numpy()
            self.images = arr[..., 0] if arr.shape[-1] == 1 else arr

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image
        x = self.images[i]  # an array, or a decoded (3, S, S) tensor for streamed folders
        img = Image.fromarray(x if isinstance(x, np.ndarray) else x.permute(1, 2, 0).numpy())
        return torch.stack([self.transform(img) for _ in range(self.views)]), i


def conventional_model(cfg: Config, channels: int, device: torch.device, num_images: int):
    """The model and a default-settings SGD, as the conventional pipeline builds them (fp32, NCHW).

    A LARS or AdamW config gets the run's own optimiser (:func:`stopgrad.optim.make_optimizer`).
    """
    model = new_model(cfg, channels, num_images, device)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer != "sgd":
        return model, make_optimizer(params, cfg, device)
    return model, torch.optim.SGD(params, lr=scaled_lr(cfg), momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)


def conventional_step(model, optimizer, views: torch.Tensor, partners: torch.Tensor, lr: float,
                      momentum: float, generator=None, indices=None) -> torch.Tensor:
    """One fp32 step on (V, B, C, H, W) views; the same maths as :func:`stopgrad.train.train_step`."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss, _ = model(views, partners, generator, indices)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    model.update_momentum(momentum)
    return loss.detach()


def _index_device(s) -> torch.device:
    return s.train_x.device if isinstance(s.train_x, torch.Tensor) else torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul rate (TFLOP/s) at a size that saturates the device."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    reps = 20 if device.type == "cuda" else 5
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def knn_seconds(feature_dim: int, device: torch.device, bank: int = 60_000, queries: int = 10_000) -> float:
    """Seconds to classify ``queries`` features against ``bank`` features (k = 200), on the device."""
    g = torch.Generator().manual_seed(0)
    b = F.normalize(torch.randn(bank, feature_dim, generator=g), dim=1).to(device)
    q = F.normalize(torch.randn(queries, feature_dim, generator=g), dim=1).to(device)
    labels = torch.randint(0, 10, (bank,), generator=g).to(device)
    knn_classify(b, labels, q[:256], 200, 0.1, 10)
    _sync(device)
    t0 = time.perf_counter()
    knn_classify(b, labels, q, 200, 0.1, 10).cpu()
    return time.perf_counter() - t0


def _median_seconds(fn, device: torch.device, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _flops(s, views, partners, g) -> tuple[float, float]:
    """(FLOPs of one training step, backbone multiply-accumulates per image forward)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        train_step(s, views, partners, g, scaled_lr(s.cfg), s.cfg.ema_momentum,
                   torch.arange(len(partners), device=partners.device))
    step = counter.get_total_flops()
    s.model.backbone.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        s.model.backbone(views[0, :1])
    s.model.backbone.train()
    return float(step), counter.get_total_flops() / 2


def bench(cfg: Config, data: ImageData | None = None, *, steps: int = 20, warmup: int = 3, rounds: int = 3,
          conventional: bool = True, workers: int | None = None, knn: bool = True,
          knn_shape: tuple[int, int] = (60_000, 10_000), kornia: bool = False, log=print) -> dict:
    """Benchmark ``cfg`` on its device; returns the figures as a dict (see the module docstring).

    Each rate is the median over ``rounds`` timings of ``steps`` steps, after ``warmup`` steps.
    ``kornia``: also time Kornia's batched augmentation of the same views (``pip install kornia``).
    """
    s = build(cfg, data)
    dev, b = s.device, cfg.batch_size
    if len(s.train_x) < b * (warmup + rounds * steps + 1):
        raise ConfigError(f"{len(s.train_x)} training images are too few for {warmup + rounds * steps} steps of "
                          f"batch {b}; lower --steps or --batch-size")
    recipe, d = RECIPES[cfg.augment], s.data
    out: dict = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
                 "torch": torch.__version__, "threads": torch.get_num_threads(), "method": cfg.method,
                 "stopgrad": cfg.stopgrad, "backbone": cfg.backbone + (f"-w{cfg.width}" if cfg.backbone == "small-cnn" else ""),
                 "dataset": d.name, "image_shape": list(s.train_x.shape[1:]), "views": cfg.views, "batch_size": b,
                 "amp": s.amp, "channels_last": s.channels_last, "compile": cfg.compile}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    # augmentation alone: every view of `steps` batches
    g, g_cpu = epoch_generators(cfg.seed, 1, dev)
    batches = list(iter_batches(s.train_x, torch.arange(steps * b, device=_index_device(s)), b, dev))
    make_views(batches[0], cfg.views, recipe, d.mean, d.std, cfg.image_size, g, s.channels_last)

    def augment_all() -> None:
        for x in batches:
            make_views(x, cfg.views, recipe, d.mean, d.std, cfg.image_size, g, s.channels_last)

    aug_s = _median_seconds(augment_all, dev, rounds)
    out["aug_img_per_s"] = round(b * steps / aug_s, 1)
    log(f"augmentation: {out['aug_img_per_s']:,.0f} img/s ({cfg.views} views each)")
    if kornia:
        pipeline = kornia_pipeline(recipe, cfg.image_size or s.train_x.shape[-1], d.mean, d.std, d.channels).to(dev)

        def kornia_all() -> None:
            for x in batches:
                pipeline(x.float().div_(255).repeat(cfg.views, 1, 1, 1))

        kornia_all()
        k_s = _median_seconds(kornia_all, dev, rounds)
        out["kornia_aug_img_per_s"] = round(b * steps / k_s, 1)
        out["kornia_version"] = _kornia_version()
        log(f"Kornia {out['kornia_version']} augmentation of the same views: {out['kornia_aug_img_per_s']:,.0f} img/s "
            f"-> stopgrad's is {out['aug_img_per_s'] / out['kornia_aug_img_per_s']:.2f}x as fast")

    # the training loop itself (each call reads its statistics back, so it ends synchronised)
    train_epoch(s, 1, steps=warmup)
    epochs = iter(range(2, rounds + 2))
    train_s = _median_seconds(lambda: train_epoch(s, next(epochs), steps=steps), dev, rounds)
    out["train_img_per_s"] = round(b * steps / train_s, 1)
    out["aug_share"] = round(aug_s / train_s, 3)
    out["peak_memory_mb"] = round(_peak_memory_mb(dev), 1)
    log(f"stopgrad training step: {out['train_img_per_s']:,.0f} img/s, augmentation {100 * out['aug_share']:.1f}% "
        f"of it, peak memory {out['peak_memory_mb']:,.0f} MiB")

    views = make_views(batches[0], cfg.views, recipe, d.mean, d.std, cfg.image_size, g, s.channels_last)
    flops, gmac = _flops(s, views, derangement(b, g_cpu).to(dev), g)
    dtype = torch.bfloat16 if s.amp else torch.float32
    peak = matmul_tflops(dev, dtype)
    model_tflops = flops * steps / train_s / 1e12
    out.update(gflop_per_step=round(flops / 1e9, 2), backbone_gmac_per_image=round(gmac / 1e9, 4),
               model_tflops_per_s=float(f"{model_tflops:.4g}"),
               matmul_tflops_per_s=round(peak, 2), matmul_dtype=str(dtype).replace("torch.", ""))
    out["mfu"] = float(f"{model_tflops / peak:.3g}")  # significant digits: tiny models on a busy CPU stay > 0
    log(f"model FLOPs: {out['gflop_per_step']} GFLOP/step ({out['backbone_gmac_per_image']} GMAC per image "
        f"forward), {out['model_tflops_per_s']} TFLOP/s = {100 * out['mfu']:.1f}% of a measured "
        f"{out['matmul_dtype']} matmul ({out['matmul_tflops_per_s']} TFLOP/s)")
    del s

    if conventional:
        out.update(_conventional(cfg, d, dev, steps, warmup, rounds, workers))
        out["speedup"] = round(out["train_img_per_s"] / out["conventional_train_img_per_s"], 2)
        log(f"conventional pipeline ({out['conventional_workers']} workers, fp32): "
            f"{out['conventional_train_img_per_s']:,.0f} img/s -> stopgrad is {out['speedup']}x faster")
    if knn:
        from .backbones import backbone_for
        feature_dim = backbone_for(cfg, d.channels).feature_dim
        out["knn_seconds"] = round(knn_seconds(feature_dim, dev, *knn_shape), 3)
        out["knn_shape"] = [*knn_shape, feature_dim]
        log(f"kNN (k=200), {knn_shape[1]:,} queries x {knn_shape[0]:,} bank, {feature_dim}-d features: "
            f"{out['knn_seconds']} s")
    return out


def _kornia_version() -> str:
    import kornia
    return kornia.__version__


def kornia_pipeline(recipe, size: int, mean, std, channels: int) -> torch.nn.Module:
    """Kornia's batched augmentation of ``recipe`` (random-resized crop, flip, colour jitter, grayscale,
    blur, erasing, normalisation), for timing against :func:`stopgrad.data.augment.augment`.

    Raises ConfigError with the install command when Kornia is missing."""
    try:
        import kornia.augmentation as K
    except ImportError:
        raise ConfigError("--kornia needs Kornia: pip install kornia") from None
    ops = [K.RandomResizedCrop((size, size), scale=tuple(recipe.crop_scale), ratio=tuple(recipe.crop_ratio)),
           K.RandomHorizontalFlip(p=recipe.flip_p)]
    b, c, sat, h = recipe.jitter
    if recipe.jitter_p > 0 and any(v > 0 for v in recipe.jitter):
        ops.append(K.ColorJitter(b, c, sat if channels == 3 else 0.0, h if channels == 3 else 0.0, p=recipe.jitter_p))
    if recipe.gray_p > 0 and channels == 3:
        ops.append(K.RandomGrayscale(p=recipe.gray_p))
    if recipe.blur_p > 0:
        from .data.augment import blur_kernel_size
        k = blur_kernel_size(size)
        ops.append(K.RandomGaussianBlur((k, k), tuple(recipe.blur_sigma), p=recipe.blur_p))
    if recipe.erase_p > 0:
        ops.append(K.RandomErasing(scale=tuple(recipe.erase_scale), ratio=tuple(recipe.erase_ratio),
                                   value=recipe.erase_value, p=recipe.erase_p))
    ops.append(K.Normalize(torch.as_tensor(mean, dtype=torch.float32).view(-1),
                           torch.as_tensor(std, dtype=torch.float32).view(-1)))
    return K.AugmentationSequential(*ops)


def _conventional(cfg: Config, d: ImageData, dev: torch.device, steps: int, warmup: int, rounds: int,
                  workers: int | None) -> dict:
    """The conventional pipeline's rate: the best over worker counts (both halves of the CPUs and all
    of them, up to 8) unless ``workers`` fixes the count."""
    n = min(8, os.cpu_count() or 1)
    counts = [workers] if workers is not None else sorted({max(1, n // 2), n})
    rates = {w: _conventional_rate(cfg, d, dev, steps, warmup, rounds, w) for w in counts}
    best = max(rates, key=lambda w: rates[w][0])
    out = {"conventional_train_img_per_s": rates[best][0], "conventional_workers": best,
           "conventional_by_workers": {str(w): r[0] for w, r in rates.items()}}
    if dev.type == "cuda":
        out["conventional_peak_memory_mb"] = rates[best][1]
    return out


def _conventional_rate(cfg: Config, d: ImageData, dev: torch.device, steps: int, warmup: int, rounds: int,
                       workers: int) -> tuple[float, float]:
    """(images/s, peak CUDA memory in MiB) of the conventional pipeline with ``workers`` processes."""
    from .train import training_images
    train_x, _ = training_images(cfg, d)
    size = cfg.image_size or train_x.shape[-1]
    transform = reference_transform(RECIPES[cfg.augment], size, d.mean, d.std, train_x.shape[1])
    loader = torch.utils.data.DataLoader(
        PerImageViews(train_x, transform, cfg.views), batch_size=cfg.batch_size, shuffle=True, drop_last=True,
        num_workers=workers, pin_memory=dev.type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed))
    model, opt = conventional_model(cfg, train_x.shape[1], dev, len(train_x))
    model.train()
    g_cpu = torch.Generator().manual_seed(cfg.seed)
    batches = iter(loader)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def step() -> None:
        views, indices = next(batches)
        views = views.to(dev, non_blocking=True).transpose(0, 1)  # (V, B, C, H, W)
        partners = derangement(cfg.batch_size, g_cpu).to(dev)
        conventional_step(model, opt, views, partners, scaled_lr(cfg), cfg.ema_momentum, indices=indices.to(dev))

    for _ in range(warmup):
        step()

    def timed() -> None:
        for _ in range(steps):
            step()

    seconds = _median_seconds(timed, dev, rounds)
    peak = _peak_memory_mb(dev) if dev.type == "cuda" else 0.0
    del batches, loader
    return round(cfg.batch_size * steps / seconds, 1), round(peak, 1)


def format_table(r: dict) -> str:
    """A short markdown table of the main figures."""
    rows = [("device", r["device"]), ("configuration", f"{r['method']}+{r['stopgrad']}, {r['backbone']}, "
                                      f"{r['views']} views, batch {r['batch_size']}, images {r['image_shape']}"),
            ("augmentation", f"{r['aug_img_per_s']:,.0f} img/s"),
            *([("Kornia augmentation (same views)", f"{r['kornia_aug_img_per_s']:,.0f} img/s")]
              if "kornia_aug_img_per_s" in r else []),
            ("training step", f"{r['train_img_per_s']:,.0f} img/s (augmentation {100 * r['aug_share']:.1f}%)")]
    if "conventional_train_img_per_s" in r:
        rows.append(("conventional pipeline", f"{r['conventional_train_img_per_s']:,.0f} img/s "
                                              f"({r['conventional_workers']} workers); speedup {r['speedup']}x"))
    rows.append(("model FLOP utilisation", f"{100 * r['mfu']:.1f}% of {r['matmul_tflops_per_s']} TFLOP/s "
                                           f"{r['matmul_dtype']} matmul"))
    rows.append(("peak memory", f"{r['peak_memory_mb']:,.0f} MiB"))
    if "knn_seconds" in r:
        rows.append(("kNN 60k x 10k", f"{r['knn_seconds']} s"))
    return "\n".join(["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


__all__ = ["bench", "kornia_pipeline", "synthetic_data", "conventional_model", "conventional_step", "PerImageViews",
           "matmul_tflops", "knn_seconds", "format_table"]
