#!/usr/bin/env python3
"""Fixtures of the framework-import tests (tests/tests/weights_frameworks.rs), under
tests/fixtures/frameworks/. Needs torch and torchvision only: the frameworks themselves are not
installed; their classes are stood in for by empty classes registered under the real module names,
so the pickles name exactly what the real checkpoints name.

    "$(scripts/peer-python)" scripts/make_framework_fixtures.py [--only FILE ...]

Every file holds a narrow torchvision ResNet (every channel count / 32: stem 2 channels) whose
BatchNorm statistics come from a few train-mode forwards on random input, and, where the framework
has one, a target (momentum) encoder that differs from it (EMA-averaged parameters, other
statistics). `features.safetensors` holds a fixed input and, per file, the pooled eval-mode
features of its online (`<file>.online`) and target (`<file>.target`) encoders computed here by
torch in float64.

Layouts (the source each follows):
- solo-learn.ckpt: solo-learn >= 2021-12 (solo/methods/base.py BaseMethod / BaseMomentumMethod,
  solo/methods/byol.py): Lightning checkpoint, `state_dict` with `backbone.*` (torchvision resnet,
  fc = Identity), `momentum_backbone.*`, `projector.*`, `momentum_projector.*`, `predictor.*`,
  `classifier.*`, `momentum_classifier.*`; `hyper_parameters` an omegaconf DictConfig (as
  Lightning pickles it: the object and `hparams_type` the class), `optimizer_states` (LARS momentum
  buffers), `lr_schedulers`, `callbacks` (a ModelCheckpoint state with `kth_value` tensor(inf)),
  `loops`. ImageNet stem.
- solo-learn-cifar-2021.ckpt: solo-learn before 2021-12 (`encoder.*`, `momentum_encoder.*`) with
  its CIFAR stem (3x3 conv, stride 1, padding 2, no max-pool); `hyper_parameters` a Lightning
  AttributeDict holding an argparse.Namespace.
- mmselfsup-0.x.pth: mmselfsup 0.x / OpenSelfSup (mmselfsup/models/algorithms/byol.py on branch
  0.x): mmcv checkpoint {meta, state_dict, optimizer}; `online_net.0.*` (backbone),
  `online_net.1.*` (NonLinearNeck fc0/bn0/fc1), `target_net.0.*`, `target_net.1.*`, and the same
  online modules again under their aliases `backbone.*` and `neck.*`, `head.predictor.*`.
- mmselfsup-1.x.pth: mmselfsup 1.x / mmpretrain (BYOL with `target_net = CosineEMA(Sequential(
  backbone, neck))`, mmengine BaseAveragedModel: `module.*` and `steps`): mmengine checkpoint
  {meta, state_dict, message_hub (HistoryBuffer objects of numpy arrays), optimizer,
  param_schedulers}; `backbone.*`, `neck.*`, `head.predictor.*`, `target_net.module.0.*`,
  `target_net.module.1.*`, `target_net.steps`. Saved with pickle protocol 4.
- lightly.ckpt: lightly's BYOL example (examples/pytorch_lightning/byol.py): backbone
  `nn.Sequential(*list(resnet18().children())[:-1])` (`backbone.0` conv1, `backbone.1` bn1,
  `backbone.4`..`backbone.7` layer1..layer4), `backbone_momentum.*`, `projection_head.layers.*`,
  `prediction_head.layers.*`, `projection_head_momentum.layers.*`, in a Lightning checkpoint whose
  `hyper_parameters` hold an argparse.Namespace.
- vissl.torch: VISSL (vissl/hooks/log_hooks.py checkpoint_content, models/base_ssl_model.py
  get_classy_state, models/trunks/resnext.py, losses/byol_loss.py): {phase_idx, iteration, loss:
  BYOLLoss.state_dict() (`target_network.trunk._feature_blocks.*`, `target_network.heads.*`),
  iteration_num, train_phase_idx, classy_state_dict: {train, base_model: {model: {trunk:
  `_feature_blocks.*`, heads: `0.clf.*`, `1.clf.*`}, meta}, optimizer, loss, ...}}. VISSL's
  "resnet" trunk of DEPTH 18 (its BYOL example config) is torchvision's Bottleneck ResNet with
  blocks [2, 2, 2, 2] (a ResNet-26).
- lightning.ckpt: a plain Lightning module holding a torchvision resnet18 (fc included) as
  `self.model`: `state_dict` with `model.*`; `hyper_parameters` a dict with an argparse.Namespace
  and a pathlib path.
- torchvision-legacy.pth: a plain torchvision state dict in torch.save's pre-1.6 format (not a
  zip: pickles then raw storages), as torchvision's original model-zoo files.
- torch-module.pt: `torch.save(model)`, the module pickled whole (torchvision classes, their
  attributes and parameters), which torch.load(weights_only=True) refuses.
- hostile-*.ckpt: Lightning checkpoints with a valid `state_dict` whose other entries would run a
  shell command (`touch /tmp/byol-rs-pwned-by-checkpoint`) when unpickled by Python: a REDUCE of
  posix.system (how pickle names os.system on Linux) in `hyper_parameters`, of `os.system` (the
  GLOBAL rewritten), of builtins.eval in `callbacks`, and a protocol-4 STACK_GLOBAL posix.system in
  `optimizer_states`. The script checks that `torch.load(weights_only=False)` of the first one does
  create the marker (then removes it): they are real attacks on Python, data to our reader.
"""
import argparse
import copy
import io
import math
import os
import pathlib
import subprocess
import sys
import types
import typing
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_parity_fixtures import narrow_resnet  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "frameworks"
MARKER = "/tmp/byol-rs-pwned-by-checkpoint"
BASE = 2  # torchvision's 64 channels / 32
FEATURES = {}


# --- stand-ins for the frameworks' classes (pickled by module + name only) ---------------------

def fake_class(module, name, base=object, **attrs):
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            sys.modules[sub] = types.ModuleType(sub)
            if i > 1:
                setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], sys.modules[sub])
    cls = type(name, (base,), dict(attrs, __module__=module, __qualname__=name))
    setattr(sys.modules[module], name, cls)
    return cls


ContainerMetadata = fake_class("omegaconf.base", "ContainerMetadata")
AnyNode = fake_class("omegaconf.nodes", "AnyNode")
DictConfig = fake_class("omegaconf.dictconfig", "DictConfig")
AttributeDict = fake_class("pytorch_lightning.utilities.parsing", "AttributeDict", dict)
HistoryBuffer = fake_class("mmengine.logging.history_buffer", "HistoryBuffer")


def node(value):
    n = AnyNode()
    n.__dict__.update(_val=value, _metadata=None, _parent=None, _flags_cache=None)
    return n


def dict_config(d):
    """An omegaconf DictConfig as it pickles: NEWOBJ of the class, BUILD with __getstate__'s dict
    (metadata dataclass naming typing.Any and builtins.dict, content of nodes)."""
    meta = ContainerMetadata()
    meta.__dict__.update(ref_type=typing.Any, object_type=dict, optional=True, key=None,
                         flags={}, flags_root=False, resolver_cache={}, key_type=typing.Any,
                         element_type=typing.Any)
    c = DictConfig()
    content = {k: dict_config(v) if isinstance(v, dict) else node(v) for k, v in d.items()}
    c.__dict__.update(_metadata=meta, _parent=None, _content=content, _flags_cache=None)
    return c


# --- networks -----------------------------------------------------------------------------------

def seeded_resnet(seed, depth=18, cifar_padding=None):
    """Narrow torchvision ResNet; `cifar_padding`: solo-learn's CIFAR stem (3x3 conv, stride 1,
    this padding, no max-pool)."""
    torch.manual_seed(seed)
    if depth == 26:  # VISSL's DEPTH 18 trunk: torchvision Bottleneck ResNet, blocks [2, 2, 2, 2]
        m = narrow_resnet(50, BASE, 3, False)
        m.inplanes = BASE
        for i in range(4):
            layer = m._make_layer(Bottleneck, BASE * 2 ** i, 2, stride=1 if i == 0 else 2)
            setattr(m, f"layer{i + 1}", layer)
    else:
        m = narrow_resnet(depth, BASE, 3, False)
    if cifar_padding is not None:
        m.conv1 = nn.Conv2d(3, BASE, kernel_size=3, stride=1, padding=cifar_padding, bias=False)
        m.maxpool = nn.Identity()
    # torchvision's registration order, so children() is what lightly's nn.Sequential takes.
    order = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    m._modules = OrderedDict((k, m._modules[k]) for k in order)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    warm_up_statistics(m, seed)
    return m


def warm_up_statistics(model, seed, steps=3):
    """A few train-mode forwards on random input: non-default running statistics."""
    gen = torch.Generator().manual_seed(1000 + seed)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(8, 3, 32, 32, generator=gen) * 2 + 0.5)
    model.eval()


def momentum_copy(online, seed, tau=0.9):
    """A target network: EMA of the online parameters with a perturbed copy, own statistics."""
    target = copy.deepcopy(online)
    gen = torch.Generator().manual_seed(2000 + seed)
    with torch.no_grad():
        for p in target.parameters():
            p.mul_(tau).add_((1 - tau) * torch.randn(p.shape, generator=gen))
    warm_up_statistics(target, seed + 1)
    return target


def mlp(i, h, o, last_bias=True):
    return nn.Sequential(nn.Linear(i, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, o, bias=last_bias))


def randomise_bn1d(module, seed):
    gen = torch.Generator().manual_seed(3000 + seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.num_batches_tracked.fill_(3)


def features(model, x):
    model = copy.deepcopy(model).double().eval()
    model.fc = nn.Identity()
    with torch.no_grad():
        return model(x.double()).float()


def sd(module, prefix=""):
    return OrderedDict((prefix + k, v.detach().clone()) for k, v in module.state_dict().items())


def record(name, online, target=None):
    FEATURES[f"{name}.online"] = features(online, INPUT)
    if target is not None:
        FEATURES[f"{name}.target"] = features(target, INPUT)


def sgd_state(params, seed):
    gen = torch.Generator().manual_seed(4000 + seed)
    return {
        "state": {i: {"momentum_buffer": torch.randn(p.shape, generator=gen)} for i, p in enumerate(params)},
        "param_groups": [{"lr": 0.3, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-6,
                          "nesterov": False, "eta": 0.02, "exclude_bias_n_norm": True,
                          "params": list(range(len(params)))}],
    }


def lightning_extras(version, params, seed):
    return {
        "epoch": 399,
        "global_step": 156000,
        "pytorch-lightning_version": version,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {
            "total": {"ready": 400, "started": 400, "processed": 400, "completed": 399},
            "current": {"ready": 400, "started": 400, "processed": 400, "completed": 399}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 0}": {
            "monitor": None, "best_model_score": None, "best_model_path": "", "current_score": None,
            "dirpath": "/trained_models/byol", "best_k_models": {}, "kth_best_model_path": "",
            "kth_value": torch.tensor(float("inf")), "last_model_path": "/trained_models/byol/last.ckpt"}},
        "optimizer_states": [sgd_state(params, seed)],
        "lr_schedulers": [{"warmup_epochs": 10, "max_epochs": 400, "warmup_start_lr": 0.003,
                           "eta_min": 0.0, "base_lrs": [1.0, 0.1], "last_epoch": 399,
                           "_step_count": 400, "verbose": False, "_get_lr_called_within_step": False,
                           "_last_lr": [0.0, 0.0]}],
    }


# --- one file per framework -------------------------------------------------------------------

ONLY = set()  # file names to (re)write; empty: all. The features are always recomputed.


def save(obj, path, **kwargs):
    """torch.save, unless `--only` names other files (torch.save writes a random serialization
    id, so rewriting a fixture changes its bytes even when its content is the same)."""
    if not ONLY or path.name in ONLY:
        torch.save(obj, path, **kwargs)

def solo_learn():
    online = seeded_resnet(1)
    target = momentum_copy(online, 1)
    projector, predictor = mlp(16, 32, 8), mlp(8, 32, 8)
    momentum_projector = copy.deepcopy(projector)
    for m in (projector, predictor, momentum_projector):
        randomise_bn1d(m, 1)
    classifier, momentum_classifier = nn.Linear(16, 10), nn.Linear(16, 10)
    online.fc, target.fc = nn.Identity(), nn.Identity()  # solo-learn: backbone.fc = nn.Identity()
    state = OrderedDict()
    for prefix, m in [("backbone.", online), ("classifier.", classifier),
                      ("momentum_backbone.", target), ("momentum_classifier.", momentum_classifier),
                      ("projector.", projector), ("momentum_projector.", momentum_projector),
                      ("predictor.", predictor)]:
        state.update(sd(m, prefix))
    cfg = dict_config({"name": "byol-imagenet100", "method": "byol",
                       "backbone": {"name": "resnet18", "kwargs": {}},
                       "method_kwargs": {"proj_hidden_dim": 4096, "proj_output_dim": 256,
                                         "pred_hidden_dim": 4096},
                       "momentum": {"base_tau": 0.99, "final_tau": 1.0, "classifier": True},
                       "data": {"dataset": "imagenet100", "num_classes": 100},
                       "optimizer": {"name": "lars", "batch_size": 128, "lr": 1.0}})
    ckpt = {"state_dict": state, **lightning_extras("2.0.2", list(online.parameters()), 1),
            "hparams_name": "cfg", "hyper_parameters": cfg, "hparams_type": DictConfig}
    save(ckpt, OUT / "solo-learn.ckpt")
    record("solo-learn", online, target)


def solo_learn_cifar_2021():
    online = seeded_resnet(2, cifar_padding=2)
    target = momentum_copy(online, 2)
    online.fc, target.fc = nn.Identity(), nn.Identity()
    projector = mlp(16, 32, 8)
    state = OrderedDict()
    for prefix, m in [("encoder.", online), ("classifier.", nn.Linear(16, 10)),
                      ("momentum_encoder.", target), ("projector.", projector),
                      ("momentum_projector.", copy.deepcopy(projector)),
                      ("predictor.", mlp(8, 32, 8))]:
        state.update(sd(m, prefix))
    args = argparse.Namespace(dataset="cifar10", encoder="resnet18", cifar=True, max_epochs=1000,
                              lr=1.0, base_tau_momentum=0.99, final_tau_momentum=1.0,
                              gpus=[0], checkpoint_dir=pathlib.PurePosixPath("trained_models"))
    hparams = AttributeDict(args=args, n_classes=10, cifar=True, zero_init_residual=False)
    ckpt = {"state_dict": state, **lightning_extras("1.4.9", list(online.parameters()), 2),
            "hyper_parameters": hparams}
    save(ckpt, OUT / "solo-learn-cifar-2021.ckpt")
    record("solo-learn-cifar-2021", online, target)


def nonlinear_neck(i, h, o):
    """mmselfsup's NonLinearNeck with two layers: fc0, bn0, (relu), fc1."""
    neck = nn.Module()
    neck.fc0, neck.bn0, neck.fc1 = nn.Linear(i, h), nn.BatchNorm1d(h), nn.Linear(h, o)
    return neck


def mmselfsup_0x():
    online = seeded_resnet(3)
    target = momentum_copy(online, 3)
    del online.fc, target.fc  # mmcls ResNet has no classifier
    neck, predictor = nonlinear_neck(16, 32, 8), nonlinear_neck(8, 32, 8)
    target_neck = copy.deepcopy(neck)
    model = nn.Module()
    model.online_net = nn.Sequential(online, neck)
    model.target_net = nn.Sequential(target, target_neck)
    model.backbone = model.online_net[0]  # aliases, as mmselfsup 0.x's BYOL sets them
    model.neck = model.online_net[1]
    model.head = nn.Module()
    model.head.predictor = predictor
    ckpt = {
        "meta": {"mmcv_version": "1.4.4", "time": "Fri Feb 25 10:00:00 2022", "epoch": 200,
                 "iter": 500400, "mmselfsup_version": "0.7.1", "seed": 0,
                 "exp_name": "byol_resnet50_8xb32-accum16-coslr-200e_in1k.py",
                 "config": "model = dict(type='BYOL', base_momentum=0.99, backbone=dict("
                           "type='ResNet', depth=50, in_channels=3, out_indices=[4]))\n"},
        "state_dict": model.state_dict(),
        "optimizer": sgd_state(list(model.online_net.parameters()), 3),
    }
    save(ckpt, OUT / "mmselfsup-0.x.pth")
    record("mmselfsup-0.x", online, target)


def mmselfsup_1x():
    online = seeded_resnet(4)
    target = momentum_copy(online, 4)
    del online.fc, target.fc
    model = nn.Module()
    model.data_preprocessor = nn.Module()
    model.backbone = online
    model.neck = nonlinear_neck(16, 32, 8)
    model.head = nn.Module()
    model.head.predictor = nonlinear_neck(8, 32, 8)
    model.target_net = nn.Module()  # mmengine BaseAveragedModel: module + steps
    model.target_net.module = nn.Sequential(target, copy.deepcopy(model.neck))
    model.target_net.register_buffer("steps", torch.tensor(1000, dtype=torch.long))
    buffer = HistoryBuffer()
    buffer.__dict__.update(max_length=1000000, _log_history=np.array([4.1, 3.9, 3.7]),
                           _count_history=np.array([1, 1, 1]))
    ckpt = {
        "meta": {"epoch": 100, "iter": 250200, "cfg": "model = dict(type='BYOL')\n", "seed": 0,
                 "experiment_name": "byol_resnet50_16xb256-coslr-200e_in1k_20220825",
                 "mmengine_version": "0.4.0", "dataset_meta": {"classes": None}},
        "state_dict": model.state_dict(),
        "message_hub": {"log_scalars": {"train/loss": buffer, "train/lr": buffer},
                        "runtime_info": {"epoch": 100, "iter": 250200, "max_iters": 500400},
                        "resumed_keys": {"epoch": False, "iter": False}},
        "optimizer": sgd_state(list(online.parameters()), 4),
        "param_schedulers": [{"T_max": 190, "eta_min": 0.0, "begin": 10, "end": 200,
                              "last_step": 99, "by_epoch": True, "_get_value_called_within_step": False}],
    }
    save(ckpt, OUT / "mmselfsup-1.x.pth", pickle_protocol=4)
    record("mmselfsup-1.x", online, target)


def lightly():
    resnet = seeded_resnet(5)
    backbone = nn.Sequential(*list(resnet.children())[:-1])
    backbone_momentum = copy.deepcopy(backbone)
    target = momentum_copy(resnet, 5)
    backbone_momentum.load_state_dict(nn.Sequential(*list(target.children())[:-1]).state_dict())
    heads = nn.Module()
    heads.projection_head = nn.Module()
    heads.projection_head.layers = mlp(16, 32, 8)
    heads.prediction_head = nn.Module()
    heads.prediction_head.layers = mlp(8, 32, 8)
    state = OrderedDict()
    state.update(sd(backbone, "backbone."))
    state.update(sd(heads.projection_head, "projection_head."))
    state.update(sd(heads.prediction_head, "prediction_head."))
    state.update(sd(backbone_momentum, "backbone_momentum."))
    state.update(sd(heads.projection_head, "projection_head_momentum."))
    ckpt = {"state_dict": state, **lightning_extras("1.9.5", list(backbone.parameters()), 5),
            "hyper_parameters": {"args": argparse.Namespace(lr=0.06, max_epochs=10, input_size=32)}}
    save(ckpt, OUT / "lightly.ckpt")
    record("lightly", resnet, target)


def vissl():
    online = seeded_resnet(6, depth=26)
    target = momentum_copy(online, 6)
    del online.fc, target.fc

    def trunk(r):
        t = nn.Module()
        t._feature_blocks = nn.ModuleDict([
            ("conv1", r.conv1), ("bn1", r.bn1), ("conv1_relu", r.relu), ("maxpool", r.maxpool),
            ("layer1", r.layer1), ("layer2", r.layer2), ("layer3", r.layer3),
            ("layer4", r.layer4), ("avgpool", r.avgpool), ("flatten", nn.Flatten(1))])
        return t

    def head(dims):
        h = nn.Module()
        h.clf = mlp(*dims)
        return h

    heads = nn.ModuleList([head((64, 32, 8)), head((8, 32, 8))])
    target_network = nn.Module()
    target_network.trunk, target_network.heads = trunk(target), copy.deepcopy(heads)
    loss = nn.Module()
    loss.target_network = target_network
    loss_state = loss.state_dict()
    online_trunk = trunk(online)
    classy = {
        "train": True,
        "base_model": {"model": {"trunk": online_trunk.state_dict(), "heads": heads.state_dict()},
                       "meta": {"trunk": {}}},
        "meta": {"train_phase_idx": 299},
        "optimizer": {"name": "ClassyOptimizer", "param_groups": [{"lr": 4.8, "momentum": 0.9}]},
        "phase_idx": 299, "train_phase_idx": 299, "num_updates": 150000, "losses": [],
        "hooks": {}, "loss": loss_state,
    }
    ckpt = {"phase_idx": 299, "iteration": 150000, "loss": loss_state, "iteration_num": 500,
            "train_phase_idx": 299, "classy_state_dict": classy}
    save(ckpt, OUT / "vissl.torch")
    record("vissl", online, target)


def lightning_plain():
    resnet = seeded_resnet(7)
    ckpt = {"state_dict": sd(resnet, "model."), **lightning_extras("2.1.0", list(resnet.parameters()), 7),
            "hyper_parameters": {"args": argparse.Namespace(lr=0.1),
                                 "data_dir": pathlib.PurePosixPath("/data/imagenet")}}
    save(ckpt, OUT / "lightning.ckpt")
    record("lightning", resnet)


def torchvision_legacy():
    resnet = seeded_resnet(8)
    save(resnet.state_dict(), OUT / "torchvision-legacy.pth", _use_new_zipfile_serialization=False)
    record("torchvision-legacy", resnet)


def torch_module():
    """`torch.save(model)`: the module object pickled whole (classes, attributes, parameters)."""
    resnet = seeded_resnet(10)
    save(resnet, OUT / "torch-module.pt")
    record("torch-module", resnet)


# --- hostile checkpoints ------------------------------------------------------------------------

class Evil:
    """Unpickling calls `fn(arg)`; pickling only records fn's module and name."""

    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


def hostile():
    import builtins
    resnet = seeded_resnet(9)
    touch = f"touch {MARKER}"

    def ckpt(**extra):
        base = {"state_dict": sd(resnet, "model."), "epoch": 1, "global_step": 10,
                "pytorch-lightning_version": "2.1.0"}
        base.update(extra)
        return base

    torch.save(ckpt(hyper_parameters={"lr": 0.1, "cmd": Evil(os.system, touch)}),
               OUT / "hostile-posix-system.ckpt")
    torch.save(ckpt(callbacks={"Evil": Evil(builtins.eval, f"__import__('os').system('{touch}')")}),
               OUT / "hostile-eval.ckpt")
    torch.save(ckpt(optimizer_states=[{"state": {}, "param_groups": [Evil(os.system, touch)]}]),
               OUT / "hostile-protocol4.ckpt", pickle_protocol=4)
    # The same as the first with the GLOBAL naming `os` (what a hand-made pickle would say).
    src = OUT / "hostile-posix-system.ckpt"
    with zipfile.ZipFile(src) as z:
        entries = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(OUT / "hostile-os-system.ckpt", "w", zipfile.ZIP_STORED) as z:
        for name, data in entries:
            if name.endswith("data.pkl"):
                assert b"cposix\nsystem\n" in data
                data = data.replace(b"cposix\nsystem\n", b"cos\nsystem\n")
            z.writestr(name.replace("hostile-posix-system", "hostile-os-system"), data)
    # They are real attacks on Python: unpickling the first one runs the command.
    if os.path.exists(MARKER):
        os.remove(MARKER)
    code = f"import torch; torch.load({str(src)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert os.path.exists(MARKER), "the hostile fixture should run its command under torch.load"
    os.remove(MARKER)


if __name__ == "__main__":
    # `--only NAME ...`: rewrite only these files (and features.safetensors).
    if sys.argv[1:2] == ["--only"]:
        ONLY.update(sys.argv[2:])
    OUT.mkdir(parents=True, exist_ok=True)
    INPUT = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(42))
    solo_learn()
    solo_learn_cifar_2021()
    mmselfsup_0x()
    mmselfsup_1x()
    lightly()
    vissl()
    lightning_plain()
    torchvision_legacy()
    torch_module()
    if not ONLY or any(n.startswith("hostile-") for n in ONLY):
        hostile()
    save_file({"input": INPUT, **FEATURES}, str(OUT / "features.safetensors"))
    total = 0
    for f in sorted(OUT.iterdir()):
        total += f.stat().st_size
        print(f"{f.stat().st_size:8d}  {f.name}")
    print(f"{total:8d}  total")
