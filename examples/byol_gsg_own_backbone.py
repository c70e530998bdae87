"""BYOL with guided stop-gradient around your own backbone: a torchvision ResNet-18.

Any module that maps (N, C, H, W) images to (N, F) features will do; here torchvision's ResNet-18
with a one-channel stem and its classifier replaced by ``nn.Identity``. A timm model works the
same way: ``timm.create_model("resnet18", num_classes=0, in_chans=1)`` returns features, F is its
``num_features``. BYOL's targets come from a momentum copy of backbone + projector
(``sg.momentum_copy``), moved toward the online network after every optimiser step
(``sg.ema_update``) with BYOL's cosine momentum schedule (``sg.momentum_at``).

    python examples/byol_gsg_own_backbone.py                     # 200 steps on Fashion-MNIST
    python examples/byol_gsg_own_backbone.py --steps 20 --data digits --device cuda

The default 200 steps on the 2-core test machine, one thread, beside other jobs (236 s in all):

    step 200/200  loss -0.5718  166 s
    kNN top-1 (k=200): 0.7179

200 steps are a demonstration, not a recipe: a ResNet-18 needs far longer (and a GPU) to beat
the small CNN of the other examples, whose kNN at random initialisation is already 0.78.
"""
import argparse
import time

import torch
import torchvision
from torch import nn

import stopgrad as sg

parser = argparse.ArgumentParser(description="BYOL + GSG with a torchvision backbone")
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--batch-size", type=int, default=128)
parser.add_argument("--lr", type=float, default=0.2)
parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist, digits, ... (sg.load_dataset)")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
args = parser.parse_args()
torch.manual_seed(0)
data = sg.load_dataset(args.data)
images = data.train_x.to(args.device)  # (N, C, H, W) uint8

backbone = torchvision.models.resnet18(num_classes=10)
backbone.conv1 = nn.Conv2d(data.channels, 64, 7, stride=2, padding=3, bias=False)  # gray images
feature_dim = backbone.fc.in_features  # F = 512
backbone.fc = nn.Identity()  # (N, C, H, W) -> (N, F) features instead of class logits
sizes = sg.HEAD_PRESETS["small"]
online = nn.Sequential(backbone, sg.projector(feature_dim, sizes["projector"])).to(args.device)
predictor = sg.predictor(sizes["projector"][-1], sizes["predictor"]).to(args.device)
target = sg.momentum_copy(online)  # frozen: no optimiser can step it
params = [*online.parameters(), *predictor.parameters()]
opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=5e-4)
g = torch.Generator(args.device).manual_seed(0)
g_cpu = torch.Generator().manual_seed(0)
B = args.batch_size

start = time.perf_counter()
for step in range(args.steps):
    idx = torch.randint(len(images), (B,), generator=g, device=args.device)
    views = sg.augment(images[idx], sg.RECIPES["fashion-mnist"], data.mean, data.std, generator=g, views=2)
    p = predictor(online(views)).unflatten(0, (2, B))  # (2, B, D) online predictions
    with torch.no_grad():
        z = target(views).unflatten(0, (2, B))  # (2, B, D) momentum targets
    partners = sg.derangement(B, g_cpu, device=args.device)
    loss = sg.pair_loss(p, z, p[:, partners], z[:, partners], policy="guided")
    for group in opt.param_groups:
        group["lr"] = sg.lr_at(step, args.steps, args.lr)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sg.ema_update(target, online, sg.momentum_at(step, args.steps, 0.99, "cosine"))  # after the step
    if (step + 1) % 25 == 0 or step + 1 == args.steps:
        print(f"step {step + 1}/{args.steps}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f} s", flush=True)

scores = sg.knn_evaluate(backbone, data.train_x, data.train_y, data.test_x, data.test_y, data.mean, data.std,
                         ks=(200,))
print(f"kNN top-1 (k=200): {scores[200]['top1']:.4f}")
