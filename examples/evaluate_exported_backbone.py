"""Evaluate the backbone exported by ``stopgrad train``, without the command line.

A finished run directory holds ``config.yaml`` (the resolved config, under ``config:``) and
``backbone.safetensors`` (the backbone's weights). This script rebuilds the backbone with
``sg.build_backbone``, loads the weights, and scores the frozen backbone with the library's
evaluators: weighted kNN, the geometry of its representation (collapse, effective rank,
alignment, uniformity), and a fast linear probe (logistic regression on its features by L-BFGS).
The kNN bank and the probe's training set are the whole training split.

    stopgrad train --epochs 1 --out runs/fm-1-epoch
    python examples/evaluate_exported_backbone.py --run runs/fm-1-epoch

On the 2-core test machine, beside other jobs, after `stopgrad train --epochs 1` (99 s in all):

    kNN top-1: 0.8024 (k=200), 0.8333 (k=1)
    geometry (test set): collapse_std 0.024, effective_rank 172.341, uniformity -1.227, alignment 0.424, ...
    linear probe top-1: 0.8743
"""
import argparse
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

import stopgrad as sg

parser = argparse.ArgumentParser(description="evaluate the backbone of a stopgrad run")
parser.add_argument("--run", type=Path, required=True, help="run directory (the --out of `stopgrad train`)")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
args = parser.parse_args()
start = time.perf_counter()

cfg = yaml.safe_load((args.run / "config.yaml").read_text())["config"]
data = sg.load_dataset(cfg["dataset"], cfg["data_dir"], cfg["image_size"])
backbone = sg.build_backbone(cfg["backbone"], data.channels, cfg["width"])  # (N, C, H, W) -> (N, F)
backbone.load_state_dict(load_file(args.run / "backbone.safetensors"))
backbone.to(args.device)
size = cfg["image_size"] or data.image_size  # the side of the images it was trained on
print(f"{args.run}: {cfg['method']} ({cfg['stopgrad']}) {cfg['backbone']} width {cfg['width']}, "
      f"{backbone.feature_dim} features, {cfg['dataset']}: {len(data.train_x)} train / {len(data.test_x)} test")
splits = (data.train_x, data.train_y, data.test_x, data.test_y, data.mean, data.std, size)

k, temperature = cfg["knn_k"], cfg["knn_temperature"]
knn = sg.knn_evaluate(backbone, *splits, ks=(1, k), temperature=temperature)
print(f"kNN top-1: {knn[k]['top1']:.4f} (k={k}), {knn[1]['top1']:.4f} (k=1)", flush=True)

geometry = sg.geometry(backbone, data.test_x, data.test_y, data.mean, data.std, sg.RECIPES[cfg["augment"]], size)
names = {key: key.removeprefix("rep_").removeprefix("test_") for key in geometry}
print("geometry (test set): " + ", ".join(f"{names[key]} {value:.3f}" for key, value in geometry.items()), flush=True)

linear = sg.linear_probe(backbone, *splits, protocol="fast")
print(f"linear probe top-1: {linear['top1']:.4f} ({time.perf_counter() - start:.0f} s in all)")
