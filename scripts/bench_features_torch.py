#!/usr/bin/env python3
"""PyTorch twin of `byol-linear-eval features` for scripts/bench-features, and the check that the
two sides compute the same features.

`extract`: torchvision `ImageFolder` over `<data>/train` then `<data>/val`, through the evaluation
transform ours applies to ImageNet-like data (byol-core's `EvalTransform` with
`AugmentConfig::byol_imagenet(224)`): shorter side resized to 256 with antialiased bicubic (ours
reproduces PIL's BICUBIC; torchvision's default, bilinear, would differ), centre crop 224,
ToTensor, ImageNet mean/std. `DataLoader(batch_size, num_workers)` without shuffling; torchvision
`resnet50()` with `fc = Identity` (the pooled 2048-d features) loaded from the weights file,
`eval()`, under `torch.inference_mode()` (and `torch.autocast("cpu", dtype=torch.bfloat16)` for
`--precision bf16`). Writes `<out>/{train,val}_features.npy` (float32 [n, 2048]) and
`<out>/{train,val}_labels.npy` (int64 [n]), as ours writes its cache files.

`check`: compares our cache files (`<ours>/features/image-folder-{train,test}-*.safetensors`,
tensors `features` f32 [n, d] and `labels` i64 [n], see byol-core/src/eval/cache.rs) with torch's
features, row by row. Both sides list the images in the same order: classes then files in sorted
order (ours: byte order of the paths; torchvision: Python's `sorted()`, the same for the
generator's ASCII names in flat class folders); the labels are compared row by row to prove it.
Three comparisons, because the two sides decode JPEGs (zune-jpeg / libjpeg-turbo) and resize
(fast_image_resize / PIL) with different integer rounding, so their pixels differ by a level or
two of 255 here and there, and the end-to-end features by ~2e-3 relative:
  - end to end: our features vs torchvision's (fp32; for `--precision bf16` ours and torch's bf16
    features both vs torch's fp32 ones): max relative error (max |a-b| / max |b|) and cosines;
  - preprocessing: our transformed pixels (`byol-linear-eval features --weights none` over the
    first train images) vs torchvision's transform of the same files, in levels of 255;
  - model: torchvision's fp32 ResNet-50 on our pixels vs our features of those images: the
    network alone (convolutions, folded BatchNorm, pooling), same input on both sides.
With fp32 it fails (exit 1) when the labels differ, a value is not finite, the model check's
error exceeds `--max-rel-err` (1e-3), the pixels differ by more than `--max-pixel-mean` levels on
average (0.6: a bilinear resize gives ~0.8, a wrong crop or normalisation far more), or the
end-to-end error exceeds `--max-e2e-err` (1e-2). With bf16 it only reports the errors.

Usage:
  bench_features_torch.py extract --data DIR --weights FILE --out DIR --batch N --workers W
                                  --threads T [--precision fp32|bf16]
  bench_features_torch.py check --ours DIR --torch DIR --torch-fp32 DIR --pixels FILE
                                --data DIR --weights FILE --threads T [--precision fp32|bf16]
"""
import argparse
import glob
import json
import os
import struct
import sys

try:
    import numpy as np
    import torch
    import torchvision
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode
except ImportError as e:  # the caller says how to point BYOL_PY at a Python with torch
    print(f"bench_features_torch.py: needs numpy, torch and torchvision ({e})", file=sys.stderr)
    sys.exit(3)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
SPLITS = (("train", "train"), ("test", "val"))  # (our split name, folder)


def eval_transform():
    return transforms.Compose([
        transforms.Resize(256, interpolation=InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def load_model(weights):
    """torchvision's resnet50 with fc = Identity, weights from a safetensors or torch.save file."""
    with open(weights, "rb") as f:
        zip_file = f.read(4) == b"PK\x03\x04"
    if zip_file:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    else:
        from safetensors.torch import load_file
        state = load_file(weights)
    model = torchvision.models.resnet50()
    model.fc = torch.nn.Identity()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        sys.exit(f"bench_features_torch.py: {weights} does not fit resnet50 without fc "
                 f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.eval()


def extract(args):
    torch.set_num_threads(args.threads)
    model = load_model(args.weights)
    if args.precision == "bf16":
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        autocast = torch.autocast("cpu", enabled=False)
    os.makedirs(args.out, exist_ok=True)
    for _, folder in SPLITS:
        dataset = torchvision.datasets.ImageFolder(os.path.join(args.data, folder),
                                                   eval_transform())
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=False,
                                             num_workers=args.workers)
        features, labels = [], []
        with torch.inference_mode(), autocast:
            for x, y in loader:
                features.append(model(x).float())
                labels.append(y)
        np.save(os.path.join(args.out, f"{folder}_features.npy"), torch.cat(features).numpy())
        np.save(os.path.join(args.out, f"{folder}_labels.npy"), torch.cat(labels).numpy())


def read_safetensors(path):
    """Tensors of a safetensors file as numpy arrays (a little-endian u64 header length, a JSON
    header, raw data), read by hand so the check does not need the safetensors package."""
    dtypes = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        blob = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(blob[begin:end], dtype=dtypes[info["dtype"]]).reshape(
            info["shape"])
    return out


def our_cache(ours_dir, split):
    found = glob.glob(os.path.join(ours_dir, "features", f"image-folder-{split}-*.safetensors"))
    if len(found) != 1:
        sys.exit(f"check: expected one {split} cache file in {ours_dir}/features, found {found}")
    return read_safetensors(found[0])


def errors(a, b):
    """(max |a-b| / max |b|, mean cosine, min cosine) of two [n, d] arrays, in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    rel = np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    cos = (a * b).sum(1) / norms
    return rel, cos.mean(), cos.min()


def check(args):
    torch.set_num_threads(args.threads)
    p = args.precision
    fail = []

    def report(label, a, b):
        if a.shape != b.shape:
            sys.exit(f"check {p} {label}: shapes {a.shape} and {b.shape} differ")
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            fail.append(f"{label}: non-finite features")
        rel, cos, cos_min = errors(a, b)
        print(f"check {p} {label}: max rel err {rel:.3e}, cosine mean {cos:.8f} min {cos_min:.8f}"
              f" ({a.shape[0]} rows)")
        return rel

    # End to end, both splits.
    for split, folder in SPLITS:
        ours = our_cache(args.ours, split)
        labels = np.load(os.path.join(args.torch, f"{folder}_labels.npy"))
        if not np.array_equal(ours["labels"], labels):
            fail.append(f"{folder}: the labels differ row by row (the two sides list the images "
                        f"in different orders)")
        ref = np.load(os.path.join(args.torch_fp32, f"{folder}_features.npy"))
        rel = report(f"{folder} ours vs torchvision-fp32 (end to end)", ours["features"], ref)
        if p == "fp32" and not rel <= args.max_e2e_err:
            fail.append(f"{folder}: end-to-end max relative error {rel:.3e} exceeds "
                        f"{args.max_e2e_err:g}")
        if p != "fp32":
            report(f"{folder} torchvision-{p} vs torchvision-fp32 (end to end)",
                   np.load(os.path.join(args.torch, f"{folder}_features.npy")), ref)

    # Preprocessing and model on the first train images, whose pixels ours wrote.
    pixels = read_safetensors(args.pixels)["features"]
    n = pixels.shape[0]
    ours_px = pixels.reshape(n, 3, 224, 224)
    dataset = torchvision.datasets.ImageFolder(os.path.join(args.data, "train"), eval_transform())
    torch_px = torch.stack([dataset[i][0] for i in range(n)]).numpy()
    levels = np.abs(ours_px - torch_px) * np.array(IMAGENET_STD).reshape(1, 3, 1, 1) * 255
    print(f"check {p} pixels, first {n} train images: ours vs torchvision's transform: "
          f"mean {levels.mean():.3f}, max {levels.max():.2f} levels of 255 (JPEG decoding and "
          f"resizing round differently)")
    if p == "fp32" and not levels.mean() <= args.max_pixel_mean:
        fail.append(f"pixels differ by {levels.mean():.3f} levels on average, more than "
                    f"{args.max_pixel_mean:g}: not the same transform")
    with torch.inference_mode():
        on_ours = load_model(args.weights)(torch.from_numpy(ours_px.copy())).numpy()
    rel = report(f"model, first {n} train images: ours vs torchvision-fp32 on our pixels",
                 our_cache(args.ours, "train")["features"][:n], on_ours)
    if p == "fp32" and not rel <= args.max_rel_err:
        fail.append(f"model: max relative error {rel:.3e} exceeds {args.max_rel_err:g}")

    if fail:
        for f in fail:
            print(f"check {p} FAILED: {f}", file=sys.stderr)
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    ex = sub.add_parser("extract", help="time-able feature extraction")
    ex.add_argument("--data", required=True)
    ex.add_argument("--weights", required=True)
    ex.add_argument("--out", required=True)
    ex.add_argument("--batch", type=int, required=True)
    ex.add_argument("--workers", type=int, required=True)
    ex.add_argument("--threads", type=int, required=True)
    ex.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ck = sub.add_parser("check", help="compare our features with torch's")
    ck.add_argument("--ours", required=True, help="our --out directory")
    ck.add_argument("--torch", required=True, help="torch's extract --out, same precision")
    ck.add_argument("--torch-fp32", required=True, help="torch's extract --out in fp32")
    ck.add_argument("--pixels", required=True, help="our train pixel cache (--weights none)")
    ck.add_argument("--data", required=True)
    ck.add_argument("--weights", required=True)
    ck.add_argument("--threads", type=int, required=True)
    ck.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ck.add_argument("--max-rel-err", type=float, default=1e-3)
    ck.add_argument("--max-pixel-mean", type=float, default=0.6)
    ck.add_argument("--max-e2e-err", type=float, default=1e-2)
    args = ap.parse_args()
    (extract if args.mode == "extract" else check)(args)


if __name__ == "__main__":
    main()
