#!/usr/bin/env python3
"""Writes the PyTorch parity fixtures that the Rust tests compare against.

Run once (needs torch, torchvision, safetensors):
    python scripts/make_parity_fixtures.py tests/fixtures/parity

Each case is one safetensors file holding the weights in torchvision naming (prefix `model.` or
`online.`), the input(s) and the expected outputs (prefix `expected.`), so the Rust tests need no
Python. The networks are torchvision's own ResNet modules built with narrow channels (base 4 or
8 instead of 64) to keep the files small; references are computed in float64 from float32 weights.
"""
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision.models import resnet50
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

BLOCKS = {10: (BasicBlock, [1, 1, 1, 1]), 18: (BasicBlock, [2, 2, 2, 2]),
          50: (Bottleneck, [3, 4, 6, 3])}


def narrow_resnet(depth, base, in_ch, small_stem, stem_stride=1):
    """torchvision's ResNet with every channel count scaled to `base` (64 in torchvision).
    small_stem: 3x3 conv of stride `stem_stride` and no max-pool (ours `small`/`small-strided`)."""
    block, layers = BLOCKS[depth]
    m = ResNet.__new__(ResNet)
    nn.Module.__init__(m)
    m._norm_layer = nn.BatchNorm2d
    m.inplanes, m.dilation, m.groups, m.base_width = base, 1, 1, 64
    if small_stem:
        m.conv1 = nn.Conv2d(in_ch, base, 3, stem_stride, 1, bias=False)
        m.maxpool = nn.Identity()
    else:
        m.conv1 = nn.Conv2d(in_ch, base, 7, 2, 3, bias=False)
        m.maxpool = nn.MaxPool2d(3, 2, 1)
    m.bn1 = nn.BatchNorm2d(base)
    m.relu = nn.ReLU(inplace=True)
    m.layer1 = m._make_layer(block, base, layers[0])
    m.layer2 = m._make_layer(block, base * 2, layers[1], stride=2)
    m.layer3 = m._make_layer(block, base * 4, layers[2], stride=2)
    m.layer4 = m._make_layer(block, base * 8, layers[3], stride=2)
    m.avgpool = nn.AdaptiveAvgPool2d(1)
    m.fc = nn.Identity()
    return m


def randomise_bn(model, gen):
    """Non-trivial BatchNorm parameters and statistics, so eval mode is really tested."""
    for mod in model.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = mod.num_features
            mod.weight.data = torch.rand(c, generator=gen) + 0.5
            mod.bias.data = torch.randn(c, generator=gen) * 0.1
            mod.running_mean.data = torch.randn(c, generator=gen) * 0.1
            mod.running_var.data = torch.rand(c, generator=gen) + 0.5
            mod.num_batches_tracked.fill_(3)


def state(model, prefix):
    return {f"{prefix}{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def f32(d):
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in d.items()}


def encoder_case(out, name, depth, base, in_ch, small_stem, size, seed, stem_stride=1):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = narrow_resnet(depth, base, in_ch, small_stem, stem_stride)
    randomise_bn(model, gen)
    weights = state(model, "model.")
    x = torch.randn(2, in_ch, size, size, generator=gen)
    model = model.double()
    model.eval()
    with torch.no_grad():
        eval_features = model(x.double())
    model.train()
    with torch.no_grad():
        train_features = model(x.double())
    after = {f"expected.after.{k}": v for k, v in state(model, "").items()
             if k in ("bn1.running_mean", "bn1.running_var", "layer4.0.bn2.running_var",
                      "layer4.1.bn2.running_var")}
    tensors = {**weights, "input": x, "expected.eval_features": eval_features,
               "expected.train_features": train_features, **after}
    stem = ("small-strided" if stem_stride == 2 else "small") if small_stem else "imagenet"
    meta = {"depth": str(depth), "stem": stem,
            "in_channels": str(in_ch), "base_channels": str(base)}
    save_file(f32(tensors), str(out / f"{name}.safetensors"), metadata=meta)


def mlp(i, h, o):
    return nn.Sequential(nn.Linear(i, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, o, bias=False))


GRAD_NAMES = ["encoder.conv1.weight", "encoder.layer4.1.bn2.weight", "encoder.layer3.0.downsample.0.weight",
              "projector.0.weight", "projector.1.weight", "projector.1.bias", "predictor.0.weight",
              "predictor.3.weight"]


def byol_case(out, seed):
    """A tiny BYOL model: the symmetric loss and gradients of one step, target copied from online."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    online = nn.ModuleDict({
        "encoder": narrow_resnet(18, 4, 3, True),
        "projector": mlp(32, 32, 16),
        "predictor": mlp(16, 32, 16),
    })
    weights = state(online, "online.")
    v1 = torch.randn(4, 3, 32, 32, generator=gen)
    v2 = torch.randn(4, 3, 32, 32, generator=gen)
    online = online.double().train()
    target = nn.ModuleDict({"encoder": copy.deepcopy(online["encoder"]),
                            "projector": copy.deepcopy(online["projector"])}).train()

    def loss_fn(p, z):
        return 2 - 2 * (F.normalize(p, dim=-1) * F.normalize(z, dim=-1)).sum(-1)

    p1 = online["predictor"](online["projector"](online["encoder"](v1.double())))
    p2 = online["predictor"](online["projector"](online["encoder"](v2.double())))
    with torch.no_grad():
        z1 = target["projector"](target["encoder"](v1.double()))
        z2 = target["projector"](target["encoder"](v2.double()))
    loss = (loss_fn(p1, z2) + loss_fn(p2, z1)).mean()
    loss.backward()
    params = dict(online.named_parameters())
    grads = {f"expected.grad.{n}": params[n].grad for n in GRAD_NAMES}
    tensors = {**weights, "view1": v1, "view2": v2, "expected.loss": loss.detach().reshape(1),
               **grads}
    meta = {"names": json.dumps(GRAD_NAMES)}
    save_file(f32(tensors), str(out / "byol_tiny.safetensors"), metadata=meta)


def torchvision_names(out):
    """Every tensor name, shape and dtype of torchvision's resnet50 except `fc`."""
    sd = resnet50(weights=None).state_dict()
    rows = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in sd.items()
            if not k.startswith("fc.")]
    (out / "torchvision_resnet50_names.json").write_text(json.dumps(rows, indent=0) + "\n")


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/parity")
    out.mkdir(parents=True, exist_ok=True)
    encoder_case(out, "resnet18_imagenet_stem", 18, 8, 3, False, 64, seed=1)
    encoder_case(out, "resnet18_small_stem_grey", 18, 4, 1, True, 28, seed=2)
    encoder_case(out, "resnet18_small_strided_stem_grey", 18, 4, 1, True, 28, seed=5, stem_stride=2)
    encoder_case(out, "resnet50_imagenet_stem", 50, 4, 3, False, 64, seed=3)
    # The `fashion-mnist` preset's network: one basic block a stage.
    encoder_case(out, "resnet10_small_stem_grey", 10, 4, 1, True, 28, seed=6)
    byol_case(out, seed=4)
    torchvision_names(out)
    for p in sorted(out.iterdir()):
        print(f"{p}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
