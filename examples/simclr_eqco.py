"""SimCLR with EqCo's margin, in a plain PyTorch loop.

SimCLR's NT-Xent gives each of the 2B views one positive (the other view of its image) and
K = 2B - 2 negatives. EqCo (Zhu et al. 2020) lowers every positive similarity by the margin
m = T log(alpha / K), so that the K physical negatives act as ``alpha`` of them: the loss, and
its mutual-information bound log K + m/T - L = log alpha - L, then no longer depend on the batch
size. The loop logs that bound; the backbone is then scored by weighted kNN.

    python examples/simclr_eqco.py                               # one epoch (468 steps)
    python examples/simclr_eqco.py --steps 20 --data digits --alpha 64 --device cuda

One epoch on the 2-core test machine, one thread, beside other jobs (71 s in all):

    K = 254 negatives, alpha = 256: margin m = 0.0016
    step 468/468  loss 2.8759  MI bound 2.669 nats (at most log alpha = 5.545)  44 s
    kNN top-1 (k=200): 0.8164
"""
import argparse
import math
import time

import torch

import stopgrad as sg

parser = argparse.ArgumentParser(description="SimCLR with the EqCo margin")
parser.add_argument("--steps", type=int, default=468, help="optimiser steps (468: one epoch at batch 128)")
parser.add_argument("--batch-size", type=int, default=128)
parser.add_argument("--lr", type=float, default=0.2)
parser.add_argument("--temperature", type=float, default=0.2)
parser.add_argument("--alpha", type=float, default=256.0, help="EqCo's alpha: the negatives K should act as")
parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist, digits, ... (sg.load_dataset)")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
args = parser.parse_args()
torch.manual_seed(0)

data = sg.load_dataset(args.data)
images = data.train_x.to(args.device)  # (N, C, H, W) uint8
backbone = sg.build_backbone("small-cnn", data.channels, width=16)
projector = sg.projector(backbone.feature_dim, sg.HEAD_PRESETS["small"]["projector"])
model = torch.nn.Sequential(backbone, projector).to(args.device)
opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
g = torch.Generator(args.device).manual_seed(0)
B, T = args.batch_size, args.temperature
K = 2 * B - 2  # negatives per anchor
margin = sg.eqco_margin(T, args.alpha, K)  # m = T log(alpha / K), negative when K > alpha
print(f"K = {K} negatives, alpha = {args.alpha:g}: margin m = {margin:.4f}")

start = time.perf_counter()
for step in range(args.steps):
    idx = torch.randint(len(images), (B,), generator=g, device=args.device)
    views = sg.augment(images[idx], sg.RECIPES["fashion-mnist"], data.mean, data.std, generator=g, views=2)
    z1, z2 = model(views).unflatten(0, (2, B))  # (B, D) each: row i of both is image i
    loss = sg.nt_xent_margin(z1, z2, T, margin)
    for group in opt.param_groups:
        group["lr"] = sg.lr_at(step, args.steps, args.lr)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if (step + 1) % 50 == 0 or step + 1 == args.steps:
        bound = math.log(K) + margin / T - loss.item()  # = log(alpha) - L
        print(f"step {step + 1}/{args.steps}  loss {loss.item():.4f}  MI bound {bound:.3f} nats "
              f"(at most log alpha = {math.log(args.alpha):.3f})  {time.perf_counter() - start:.0f} s", flush=True)

scores = sg.knn_evaluate(backbone, data.train_x, data.train_y, data.test_x, data.test_y, data.mean, data.std,
                         ks=(200,))
print(f"kNN top-1 (k=200): {scores[200]['top1']:.4f}")
