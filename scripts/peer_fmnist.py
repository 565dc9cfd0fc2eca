#!/usr/bin/env python3
"""PyTorch replica of one byol-pretrain run on Fashion-MNIST, for scripts/peer-fmnist.

Reads the run's recipe from a byol-pretrain `config.toml` (so both sides train the same recipe)
and reproduces byol-core's semantics:
- encoder: torchvision's ResNet scaled to `base_channels` (small stem = 3x3/1 conv, no max-pool),
  torchvision's initialisation (Kaiming-normal fan-out convs, BN 1/0), PyTorch's default Linear
  init; projector and predictor Linear -> BN1d -> ReLU -> Linear(no bias);
- each view in its own forward pass (BatchNorm statistics per view), target in train mode under
  no_grad, symmetric loss 2 - 2 cos summed over both directions and averaged over the batch;
- LARS: weight decay and trust ratio eta*|w|/|g| on conv/linear weights only, momentum, the
  predictor's lr multiplier; EMA of the target's parameters (not its BN statistics) with
  tau_k = 1 - (1 - tau_base)(cos(pi k/K) + 1)/2;
- lr = base_lr * batch/256, linear warm-up then cosine to 0 over the schedule, the schedule
  shortened to `schedule_steps` (warm-up in proportion); with --minutes, lr and tau follow
  byol-core's time-indexed rule (byol-core/src/time_budget.rs): progress = seconds spent in steps /
  (budget - seconds spent off them), or the steps' progress when that is further along;
- views: torchvision's RandomResizedCrop(28, scale=(crop_min_scale, 1), bicubic, antialias),
  flip p 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, RandomGrayscale p 0.2 (identities on grey),
  solarize p 0.2 on the second view only, no blur, normalised with Fashion-MNIST's mean/std.
Writes <out>/encoder.safetensors (torchvision names) and <out>/metrics.jsonl.
"""
import argparse
import copy
import gzip
import json
import math
import os
import sys
import time
import tomllib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms as T

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_parity_fixtures import BLOCKS, narrow_resnet  # noqa: E402

FMNIST = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530
def budget_progress(trained, spent, budget):
    """byol-core's time_budget::budget_progress: the share of the budget spent training."""
    available = budget - max(spent - trained, 0.0)
    if available <= 0 or trained >= available:
        return 1.0
    return min(max(trained / available, 0.0), 1.0)


def read_idx_images(path):
    with gzip.open(path) as f:
        data = f.read()
    n, h, w = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, h, w)


def encoder(enc):
    """torchvision's ResNet scaled to base_channels (the parity fixtures' builder), with
    torchvision's initialisation, which that builder skips."""
    base = enc["base_channels"] * enc["width"]
    stem = enc["stem"]
    if stem not in ("imagenet", "small", "small-strided"):
        raise SystemExit(f"unknown stem {stem!r} in the config")
    m = narrow_resnet(enc["depth"], base, enc["in_channels"], stem != "imagenet",
                      stem_stride=2 if stem == "small-strided" else 1)
    for mod in m.modules():  # torchvision ResNet.__init__'s initialisation
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.constant_(mod.weight, 1)
            nn.init.constant_(mod.bias, 0)
    expansion = BLOCKS[enc["depth"]][0].expansion
    return m, base * 8 * expansion


def mlp(d_in, head):
    return nn.Sequential(nn.Linear(d_in, head["hidden_dim"]), nn.BatchNorm1d(head["hidden_dim"]),
                         nn.ReLU(inplace=True), nn.Linear(head["hidden_dim"], head["output_dim"],
                                                          bias=False))


class Network(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder, dim = encoder(model["encoder"])
        self.projector = mlp(dim, model["projector"])

    def forward(self, x):
        return self.projector(self.encoder(x))


class TwoViews(torch.utils.data.Dataset):
    def __init__(self, images, crop_min_scale):
        self.images = images

        def view(solarize):
            return T.Compose([
                T.RandomResizedCrop(28, scale=(crop_min_scale, 1.0),
                                    interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                T.RandomHorizontalFlip(0.5),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                T.RandomGrayscale(0.2),
                T.ToTensor(),
                T.RandomSolarize(0.5, p=solarize),
                T.Normalize([MEAN], [STD]),
            ])
        self.view1, self.view2 = view(0.0), view(0.2)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i], mode="L")
        return self.view1(img), self.view2(img)


def regression(p, z):
    return 2 - 2 * (F.normalize(p, dim=-1) * F.normalize(z, dim=-1)).sum(-1)


def lr_at(progress, peak, warmup, total):
    """The learning rate at `progress` in [0, 1] of a schedule of `total` steps (byol-core's
    LrSchedule::lr_at; at progress step/total it is LrSchedule::lr(step))."""
    progress = min(max(progress, 0.0), 1.0)
    if total == 0:
        return 0.0
    share = min(warmup, total) / total
    if progress < share:
        return peak * progress / share
    if share >= 1.0:
        return 0.0
    return peak * 0.5 * (1 + math.cos(math.pi * (progress - share) / (1 - share)))


def tau_at(tau_base, progress):
    progress = min(max(progress, 0.0), 1.0)
    return 1 - (1 - tau_base) * (math.cos(math.pi * progress) + 1) / 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="a byol-pretrain config.toml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, help="wall-clock budget (schedules fitted to it)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: CPU autocast around the networks (PyTorch's mixed precision: "
                         "bf16 convolutions and matmuls, fp32 weights; the loss in fp32)")
    a = ap.parse_args()
    with open(a.config, "rb") as f:
        c = tomllib.load(f)
    model = c["model"]
    if model["encoder"]["in_channels"] != 1 or c["image_size"] != 28:
        sys.exit("peer_fmnist.py: the config is not a 28 px greyscale Fashion-MNIST recipe")
    if c.get("augmentations", "full") != "full":
        sys.exit("peer_fmnist.py: only the full augmentation recipe is replicated")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    started = time.perf_counter()

    images = read_idx_images(os.path.join(FMNIST, "train-images-idx3-ubyte.gz"))
    batch = c["batch_size"]
    per_epoch = len(images) // batch
    epoch_steps = per_epoch * c["epochs"]
    total = min(c.get("schedule_steps", epoch_steps), epoch_steps)

    def schedule(total):
        # byol-core's rounding (f64::round: half away from zero; Python's round() halves to
        # even: 62.5 gave 62 warm-up steps against our 63) and its order of operations.
        warmup = math.floor(c["warmup_epochs"] * per_epoch * (total / epoch_steps) + 0.5)
        return warmup, total

    warmup, total = schedule(total)
    budget = a.minutes * 60 if a.minutes is not None else None

    online = Network(model)
    predictor = mlp(model["projector"]["output_dim"], model["predictor"]) \
        if model["use_predictor"] else nn.Identity()
    target = copy.deepcopy(online) if model["use_target"] else None
    if target is not None:
        for p in target.parameters():
            p.requires_grad_(False)
        target.train()
    online.train()
    predictor.train()
    named = [(f"online.{n}", p) for n, p in online.named_parameters()] + \
            [(f"predictor.{n}", p) for n, p in predictor.named_parameters()]
    params = [p for _, p in named]
    lr_mult = [c["predictor_lr_multiplier"] if n.startswith("predictor.") else 1.0
               for n, _ in named]
    momentum = [torch.zeros_like(p) for p in params]
    peak = c["base_lr"] * batch / 256

    loader_gen = torch.Generator().manual_seed(a.seed)
    loader = torch.utils.data.DataLoader(
        TwoViews(images, c["crop_min_scale"]), batch_size=batch, shuffle=True, drop_last=True,
        num_workers=c["workers"], persistent_workers=True, generator=loader_gen)
    log = open(os.path.join(a.out, "metrics.jsonl"), "w")
    step = 0
    first_step_start = time.perf_counter()
    done = False
    while not done:
        tick = time.perf_counter()
        for v1, v2 in loader:
            now = time.perf_counter()
            steps = step / total
            if budget is None:
                progress = steps
            else:
                # No monitor or checkpoints here: every second since the first step trains.
                progress = max(budget_progress(now - first_step_start, now - started, budget),
                               steps)
            if step >= total or (budget is not None and progress >= 1.0):
                done = True
                break
            lr = lr_at(progress, peak, warmup, total)
            tau = tau_at(c["tau_base"], progress)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
                z1, z2 = online(v1), online(v2)
                p1, p2 = predictor(z1), predictor(z2)
                with torch.no_grad():
                    if target is not None:
                        t1, t2 = target(v1), target(v2)
                    else:
                        t1, t2 = z1.detach(), z2.detach()
            p1, p2, t1, t2 = p1.float(), p2.float(), t1.float(), t2.float()
            loss = (regression(p1, t2) + regression(p2, t1)).mean()
            for p in params:
                p.grad = None
            loss.backward()
            with torch.no_grad():
                for p, m, mult in zip(params, momentum, lr_mult):
                    if p.grad is None:
                        continue
                    g = p.grad
                    if p.ndim > 1:
                        g = g + c["weight_decay"] * p
                        wn, gn = p.norm(), g.norm()
                        g = g * torch.where((wn > 0) & (gn > 0), c["eta"] * wn / gn,
                                            torch.ones_like(wn))
                    m.mul_(c["momentum"]).add_(g)
                    p.sub_(lr * mult * m)
                if target is not None:
                    for pt, po in zip(target.parameters(), online.parameters()):
                        pt.mul_(tau).add_(po, alpha=1 - tau)
            step += 1
            now = time.perf_counter()
            log.write(json.dumps({"step": step, "loss": loss.item(), "lr": lr, "tau": tau,
                                  "images_per_sec": batch / (now - tick)}) + "\n")
            tick = now
    log.close()
    state = {k: v.contiguous() for k, v in online.encoder.state_dict().items()}
    save_file(state, os.path.join(a.out, "encoder.safetensors"))
    print(json.dumps({"steps": step, "schedule_steps": total if budget is None else step,
                      "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
