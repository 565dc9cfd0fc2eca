#!/usr/bin/env python3
"""Fixtures of the weights-import tests (tests/tests/weights_import.rs), under tests/fixtures/import/.

    "$(scripts/peer-python)" scripts/make_import_fixtures.py

- resnet18-tiny.pth: a torchvision resnet18 state dict (torch.save zip) with every channel count
  divided by 16 (stem 4 channels), fc included; resnet18-tiny-nested.pth: the same under
  {'state_dict': ...} with DDP's `module.` prefix, plus an epoch (as training scripts save);
  resnet18-tiny-features.safetensors: a fixed input and torchvision's eval-mode pooled features.
- byol-tiny-res50.pkl: an official-BYOL-structured checkpoint (pickle protocol 2, numpy arrays,
  Haiku names, HWIO convs, experiment_state a named tuple of module byol.byol_experiment as in the
  original) of a ResNet-50 with 2 stem channels; byol-tiny-res50-features.safetensors: an input
  (NCHW) and the pooled features computed here with TensorFlow SAME padding in float64.
- malicious-*.pkl: pickles that would run a shell command or eval if unpickled by Python; the
  reader must refuse them (writing them here runs nothing).
"""
import collections
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "import"


def shrink(t, key, div=16):
    """Slices every channel dimension of a resnet18 tensor by `div` (the RGB input stays 3)."""
    if t.ndim == 0:
        return t.clone()
    idx = []
    for d, n in enumerate(t.shape):
        if t.ndim == 4 and d >= 2:
            idx.append(slice(None))
        elif t.ndim == 4 and d == 1 and n == 3:
            idx.append(slice(None))
        elif key == "fc.weight" and d == 0:
            idx.append(slice(0, 10))
        elif key == "fc.bias":
            idx.append(slice(0, 10))
        else:
            idx.append(slice(0, n // div))
    return t[tuple(idx)].clone().contiguous()


def torchvision_fixture():
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
    state = {k: shrink(v, k) for k, v in model.state_dict().items()}
    # Put the small tensors back into the module (F.conv2d/F.batch_norm only use the tensors).
    for name, p in list(model.named_parameters()):
        p.data = state[name]
    for name, b in list(model.named_buffers()):
        b.data = state[name]
    model.fc = torch.nn.Identity()
    model = model.double().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model(x.double()).float()
    torch.save(state, OUT / "resnet18-tiny.pth")
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}},
               OUT / "resnet18-tiny-nested.pth")
    save_file({"input": x, "features": feats}, OUT / "resnet18-tiny-features.safetensors")


# --- official BYOL structure -------------------------------------------------------------------

def same_pads(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def conv_same(x, w_hwio, stride):
    w = torch.from_numpy(w_hwio).double().permute(3, 2, 0, 1)
    k = w.shape[-1]
    t, b = same_pads(x.shape[2], k, stride)
    l, r = same_pads(x.shape[3], k, stride)
    return F.conv2d(F.pad(x, (l, r, t, b)), w, stride=stride)


def maxpool_same(x):
    t, b = same_pads(x.shape[2], 3, 2)
    l, r = same_pads(x.shape[3], 3, 2)
    return F.max_pool2d(F.pad(x, (l, r, t, b), value=float("-inf")), 3, 2)


def byol_fixture():
    rng = np.random.default_rng(0)
    base, blocks = 2, [3, 4, 6, 3]
    enc = "res_net50/~/"
    params, state = {}, {}

    def conv(name, k, cin, cout):
        w = rng.normal(0, np.sqrt(2.0 / (k * k * cin)), (k, k, cin, cout)).astype(np.float32)
        params[enc + name] = {"w": w}

    def bn(name, c):
        params[enc + name] = {
            "scale": rng.uniform(0.5, 1.5, (1, 1, 1, c)).astype(np.float32),
            "offset": rng.uniform(-0.1, 0.1, (1, 1, 1, c)).astype(np.float32),
        }
        for stat, lo, hi in (("mean_ema", -0.1, 0.1), ("var_ema", 0.5, 1.5)):
            avg = rng.uniform(lo, hi, (1, 1, 1, c)).astype(np.float32)
            state[enc + name + "/~/" + stat] = {
                "average": avg, "hidden": avg.copy(), "counter": np.array(5, dtype=np.int32)}

    conv("initial_conv", 7, 3, base)
    bn("initial_batchnorm", base)
    cin = base
    for g, n in enumerate(blocks):
        out = base * 4 * 2 ** g
        mid = out // 4
        for b in range(n):
            p = f"block_group_{g}/~/block_{b}/~/"
            stride = 2 if g > 0 and b == 0 else 1
            if b == 0:
                conv(p + "shortcut_conv", 1, cin, out)
                bn(p + "shortcut_batchnorm", out)
            conv(p + "conv_0", 1, cin, mid)
            bn(p + "batchnorm_0", mid)
            conv(p + "conv_1", 3, mid, mid)
            bn(p + "batchnorm_1", mid)
            conv(p + "conv_2", 1, mid, out)
            bn(p + "batchnorm_2", out)
            cin = out
    # Heads the importer must skip.
    params["projector/~/linear"] = {"w": rng.normal(size=(cin, 8)).astype(np.float32),
                                    "b": np.zeros(8, np.float32)}
    params["projector/~/batch_norm"] = {"scale": np.ones((1, 8), np.float32),
                                        "offset": np.zeros((1, 8), np.float32)}
    state["projector/~/batch_norm/~/mean_ema"] = {"average": np.zeros((1, 8), np.float32)}
    params["predictor/~/linear"] = {"w": rng.normal(size=(8, 8)).astype(np.float32)}

    # Reference forward pass, float64, NCHW with SAME padding.
    def bn_apply(x, name):
        sc = torch.from_numpy(params[enc + name]["scale"]).double().reshape(1, -1, 1, 1)
        of = torch.from_numpy(params[enc + name]["offset"]).double().reshape(1, -1, 1, 1)
        mu = torch.from_numpy(state[enc + name + "/~/mean_ema"]["average"]).double().reshape(1, -1, 1, 1)
        var = torch.from_numpy(state[enc + name + "/~/var_ema"]["average"]).double().reshape(1, -1, 1, 1)
        return (x - mu) / torch.sqrt(var + 1e-5) * sc + of

    def w(name):
        return params[enc + name]["w"]

    x32 = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    x = x32.double()
    y = F.relu(bn_apply(conv_same(x, w("initial_conv"), 2), "initial_batchnorm"))
    y = maxpool_same(y)
    for g, n in enumerate(blocks):
        for b in range(n):
            p = f"block_group_{g}/~/block_{b}/~/"
            stride = 2 if g > 0 and b == 0 else 1
            sc = y
            if b == 0:
                sc = bn_apply(conv_same(y, w(p + "shortcut_conv"), stride), p + "shortcut_batchnorm")
            h = F.relu(bn_apply(conv_same(y, w(p + "conv_0"), 1), p + "batchnorm_0"))
            h = F.relu(bn_apply(conv_same(h, w(p + "conv_1"), stride), p + "batchnorm_1"))
            h = bn_apply(conv_same(h, w(p + "conv_2"), 1), p + "batchnorm_2")
            y = F.relu(h + sc)
    feats = y.mean(dim=(2, 3)).float()

    mod = types.ModuleType("byol.byol_experiment")
    pkg = types.ModuleType("byol")
    pkg.byol_experiment = mod
    sys.modules["byol"], sys.modules["byol.byol_experiment"] = pkg, mod
    State = collections.namedtuple(
        "_ByolExperimentState",
        ["online_params", "target_params", "online_state", "target_state", "opt_state"])
    State.__module__ = "byol.byol_experiment"
    mod._ByolExperimentState = State
    opt_state = (collections.OrderedDict(count=np.array(10, np.int32)),)
    target = params  # the same object: the pickle memo stores it once
    ckpt = {
        "experiment_state": State(params, target, state, state, opt_state),
        "step": np.int64(10),
        "rng": np.array([0, 42], dtype=np.uint32).view(np.uint8),
    }
    (OUT / "byol-tiny-res50.pkl").write_bytes(pickle.dumps(ckpt, protocol=2))
    save_file({"input": x32, "features": feats}, OUT / "byol-tiny-res50-features.safetensors")


class Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


def malicious_fixtures():
    import builtins
    # Dumping only records the callable's name: nothing runs here.
    payload = {"experiment_state": Evil(os.system, "echo pwned > /tmp/byol-pwned")}
    (OUT / "malicious-os-system.pkl").write_bytes(pickle.dumps(payload, protocol=2))
    (OUT / "malicious-eval.pkl").write_bytes(
        pickle.dumps([Evil(builtins.eval, "__import__('os').system('true')")], protocol=2))


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    torchvision_fixture()
    byol_fixture()
    malicious_fixtures()
    for f in sorted(OUT.iterdir()):
        print(f"{f.stat().st_size:8d}  {f.name}")
