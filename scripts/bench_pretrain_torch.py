#!/usr/bin/env python3
"""PyTorch twin of byol-core's BYOL training step, for scripts/bench-pretrain.

Same work per step as `cargo run --example bench_step`: torchvision ResNet (small stem = 3x3/1
conv and no max-pool; ImageNet stem otherwise), projector and predictor Linear -> BN1d -> ReLU ->
Linear(no bias) 4096/256, target = copy of online run in train mode under no_grad, each view in
its own forward pass, symmetric loss (sum of both directions, mean over batch), LARS (weight
decay + trust ratio on weights, momentum) and the EMA of the target. fp32 on CPU, or with
`--precision bf16` CPU autocast (convolutions and matrix products in bf16, the rest fp32).

On a GPU (`--device cuda`), `--precision`: `tf32` is PyTorch's default (cuDNN convolutions in
TF32, matrix products in full fp32: what candle does, cuDNN's default math and cuBLAS's fp32),
`fp32` turns TF32 off everywhere, `bf16` runs the forward passes and the loss under
`torch.autocast(dtype=torch.bfloat16)` (parameters, gradients, LARS and EMA stay fp32). Each
timed step ends with `torch.cuda.synchronize()`.

`--model fmnist` is the quick start's network (the `fashion-mnist` preset: ResNet-10 small stem at
32 base channels, 1 input channel, heads 512/128), built as scripts/peer_fmnist.py builds it.

Usage: bench_pretrain_torch.py --model r18-small|r50-imagenet|fmnist --size PX --batch N --steps K
       --warmup W --threads T [--device cpu|cuda[:N]] [--precision fp32|tf32|bf16]
Prints one line `img/s <value>`.
"""
import contextlib
import argparse
import copy
import sys
import os
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torchvision
except ImportError as e:  # the caller prints how to point BYOL_PY at a Python with torch
    print(f"bench_pretrain_torch.py: needs torch and torchvision ({e})", file=sys.stderr)
    sys.exit(3)


def mlp(d_in, hidden=4096, out=256):
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, out, bias=False))


def encoder(model):
    if model == "fmnist":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from make_parity_fixtures import narrow_resnet
        return narrow_resnet(10, 32, 1, True), 256  # its fc is already the identity
    if model == "r18-small":
        net = torchvision.models.resnet18()
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
        dim = 512
    elif model == "r50-imagenet":
        net = torchvision.models.resnet50()
        dim = 2048
    else:
        raise SystemExit(f"unknown model {model}")
    net.fc = nn.Identity()
    return net, dim


# (input channels, head hidden width, head output width) of each model.
HEADS = {"fmnist": (1, 512, 128)}


class Network(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder, dim = encoder(model)
        _, hidden, out = HEADS.get(model, (3, 4096, 256))
        self.projector = mlp(dim, hidden, out)

    def forward(self, x):
        return self.projector(self.encoder(x))


def regression(p, z):
    return 2 - 2 * (F.normalize(p, dim=-1) * F.normalize(z, dim=-1)).sum(-1)


def lars_step(params, momentum, lr, mom=0.9, eta=1e-3, wd=1.5e-6):
    # As byol-core's Lars: decay and trust ratio only for conv/linear weights (ndim > 1).
    with torch.no_grad():
        for i, p in enumerate(params):
            if p.grad is None:
                continue
            g = p.grad
            if p.ndim > 1:
                g = g + wd * p
                wn, gn = p.norm(), g.norm()
                trust = torch.where((wn > 0) & (gn > 0), eta * wn / gn, torch.ones_like(wn))
                g = g * trust
            m = momentum[i]
            m.mul_(mom).add_(g)
            p.sub_(lr * m)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="r18-small")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if cuda:
        tf32 = a.precision != "fp32"
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
              f"cuDNN {torch.backends.cudnn.version()}, precision {a.precision}", file=sys.stderr)
    elif a.precision == "tf32":
        raise SystemExit("--precision tf32 needs --device cuda")

    def autocast():
        if a.precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    online = Network(a.model).to(device)
    channels, hidden, out = HEADS.get(a.model, (3, 4096, 256))
    predictor = mlp(out, hidden, out).to(device)
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    online.train(); predictor.train(); target.train()
    params = list(online.parameters()) + list(predictor.parameters())
    momentum = [torch.zeros_like(p) for p in params]
    v1 = torch.randn(a.batch, channels, a.size, a.size).to(device)
    v2 = torch.randn(a.batch, channels, a.size, a.size).to(device)
    sync()

    times = []
    for i in range(a.warmup + a.steps):
        t = time.perf_counter()
        with autocast():
            z1, z2 = online(v1), online(v2)
            p1, p2 = predictor(z1), predictor(z2)
            with torch.no_grad():
                t1, t2 = target(v1), target(v2)
            loss = (regression(p1.float(), t2.float()) + regression(p2.float(), t1.float())).mean()
        loss_value = loss.item()
        for p in params:
            p.grad = None
        loss.backward()
        lars_step(params, momentum, 0.1)
        with torch.no_grad():
            for pt, po in zip(target.parameters(), online.parameters()):
                pt.mul_(0.99).add_(po, alpha=0.01)
        sync()
        dt = time.perf_counter() - t
        print(f"step {i}: {dt:.3f} s, loss {loss_value:.4f}", file=sys.stderr)
        if i >= a.warmup:
            times.append(dt)
    print(f"img/s {a.batch * len(times) / sum(times):.3f}")


if __name__ == "__main__":
    main()
