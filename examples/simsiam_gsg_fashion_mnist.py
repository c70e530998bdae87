"""SimSiam with guided stop-gradient (GSG) on Fashion-MNIST, in a plain PyTorch loop.

The training set lives on the device as one uint8 tensor; each step makes two augmented views of
its batch there in one call (``sg.augment``), pairs every image with another one of the batch
(``sg.derangement``), and ``sg.pair_loss`` puts the predictor on the two closest views of each
pair and the stop-gradient on their siblings. The backbone is then scored by weighted kNN.

    python examples/simsiam_gsg_fashion_mnist.py                 # one epoch (468 steps)
    python examples/simsiam_gsg_fashion_mnist.py --steps 20 --data digits --device cuda

One epoch on the 2-core test machine, one thread, beside other jobs (78 s in all):

    step 468/468  loss -0.8281  53 s
    kNN top-1 (k=200): 0.8052
"""
import argparse
import time

import torch

import stopgrad as sg

parser = argparse.ArgumentParser(description="SimSiam + GSG in a plain PyTorch loop")
parser.add_argument("--steps", type=int, default=468, help="optimiser steps (468: one epoch at batch 128)")
parser.add_argument("--batch-size", type=int, default=128)
parser.add_argument("--lr", type=float, default=0.2)
parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist, digits, ... (sg.load_dataset)")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
args = parser.parse_args()
torch.manual_seed(0)

data = sg.load_dataset(args.data)
images = data.train_x.to(args.device)  # (N, C, H, W) uint8
recipe = sg.RECIPES["fashion-mnist"]  # crops of at least 1/4 of the image, flips, brightness/contrast
backbone = sg.build_backbone("small-cnn", data.channels, width=16)  # (N, C, H, W) -> (N, F)
sizes = sg.HEAD_PRESETS["small"]
projector = sg.projector(backbone.feature_dim, sizes["projector"])  # (N, F) -> (N, D)
predictor = sg.predictor(sizes["projector"][-1], sizes["predictor"])  # (N, D) -> (N, D)
model = torch.nn.ModuleList([backbone, projector, predictor]).to(args.device)
opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
g = torch.Generator(args.device).manual_seed(0)  # shuffling and augmentation, on the device
g_cpu = torch.Generator().manual_seed(0)  # partners are drawn on the host
B = args.batch_size

start = time.perf_counter()
for step in range(args.steps):
    if step % (len(images) // B) == 0:
        order = torch.randperm(len(images), generator=g, device=args.device)  # a new epoch
    i = step % (len(images) // B) * B
    views = sg.augment(images[order[i:i + B]], recipe, data.mean, data.std, generator=g, views=2)  # (2B, C, H, W)
    z = projector(backbone(views))  # (2B, D): one encoder call for both views
    p = predictor(z).unflatten(0, (2, B))  # (2, B, D) predictions
    z = z.unflatten(0, (2, B))  # (2, B, D) targets; pair_loss detaches them
    partners = sg.derangement(B, g_cpu, device=args.device)  # image i's partner, never i itself
    loss = sg.pair_loss(p, z, p[:, partners], z[:, partners], policy="guided")
    for group in opt.param_groups:
        group["lr"] = sg.lr_at(step, args.steps, args.lr)  # cosine decay to zero
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if (step + 1) % 50 == 0 or step + 1 == args.steps:
        print(f"step {step + 1}/{args.steps}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f} s", flush=True)

scores = sg.knn_evaluate(backbone, data.train_x, data.train_y, data.test_x, data.test_y, data.mean, data.std,
                         ks=(200,))
print(f"kNN top-1 (k=200): {scores[200]['top1']:.4f}")
