#!/usr/bin/env python3
"""Interop check: our encoder safetensors in torchvision.

Loads `<dir>/encoder.safetensors` (written by `cargo run -p byol-core --example interop_fixture --
<dir>`) into `torchvision.models.resnet50()` (or resnet18/…, `--arch`) with strict key checking
of every key but `fc.*`, runs the fixed input of `<dir>/features.safetensors` in eval mode and
prints the maximum relative error of the pooled features against our Rust output
(max |torch - rust| / max |torch|). Exit status 1 above `--tolerance`.

    "$(scripts/peer-python)" scripts/torchvision_interop.py <dir> [--arch resnet50]

Not run in CI (it needs torch); `scripts/torchvision-interop` runs both halves.
"""
import argparse
import sys

import torch
import torchvision
from safetensors.torch import load_file


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--tolerance", type=float, default=1e-4)
    a = p.parse_args()
    model = getattr(torchvision.models, a.arch)()
    state = load_file(f"{a.dir}/encoder.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"fc.weight", "fc.bias"}:
        sys.exit(f"key mismatch: missing {missing}, unexpected {unexpected}")
    # Strict on everything but fc: the same dict plus the model's own fc loads with strict=True.
    state.update({k: v for k, v in model.state_dict().items() if k.startswith("fc.")})
    model.load_state_dict(state, strict=True)
    model.fc = torch.nn.Identity()
    model.eval()
    ref = load_file(f"{a.dir}/features.safetensors")
    with torch.no_grad():
        feats = model.double()(ref["input"].double())
    rust = ref["features"].double()
    err = ((feats - rust).abs().max() / feats.abs().max()).item()
    print(f"{a.arch}: {len(state) - 2} tensors loaded strictly; pooled features {tuple(feats.shape)}; "
          f"max relative error vs Rust: {err:.3e}")
    sys.exit(0 if err < a.tolerance else 1)


if __name__ == "__main__":
    main()
