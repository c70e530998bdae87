"""Per-image cost of decoding a JPEG and resizing it for a streamed image folder.

Writes synthetic JPEGs (500x375, every fifth 640x480, smooth noise, quality 90) to a temporary
folder and times, with one thread, best of 3 passes, milliseconds per image:

* PIL decode + PIL resize + centre crop (what torchvision's ImageFolder + Resize + CenterCrop do),
* stopgrad's decoder (`stopgrad.data.stream.decode_file`: PIL draft + torchvision resize).

    python benchmarks/decode.py [--images 300] [--sizes 64 224]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from stopgrad.data.stream import decode_file


def write_jpegs(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        w, h = (640, 480) if i % 5 == 0 else (500, 375)
        coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)  # smooth, photo-like structure
        noisy = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
        path = folder / f"{i}.jpg"
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def best_ms(fn, paths, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for p in paths:
            fn(p)
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / len(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.images)
        kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        print(f"{args.images} JPEGs, {kb:.0f} KB on average; ms per image, one thread, best of 3")
        print("| side | PIL decode + PIL resize | stopgrad decode_file |\n|---|---|---|")
        for size in args.sizes:
            pil = T.Compose([T.Resize(size), T.CenterCrop(size), T.PILToTensor()])

            def baseline(p, pil=pil):
                with Image.open(p) as im:
                    return pil(im.convert("RGB"))

            print(f"| {size} | {best_ms(baseline, paths):.2f} | {best_ms(lambda p: decode_file(str(p), size), paths):.2f} |")


if __name__ == "__main__":
    main()
