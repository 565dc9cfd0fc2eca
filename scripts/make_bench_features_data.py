#!/usr/bin/env python3
"""Data and weights for scripts/bench-features, made once and kept in a cache directory.

- `<dir>/data/train/class<k>/<i>.jpg` and `<dir>/data/val/class<k>/<i>.jpg`: an ImageFolder
  layout (torchvision's, and `byol-linear-eval --dataset image-folder`'s: train/ plus val/ as its
  test split), `--images` train and `--val` val JPEGs dealt round-robin over `--classes` classes.
  Each image has its own size, each side uniform in 300..500 px (ImageNet's typical range), and
  photo-like content: a smooth colour field (a coarse random grid upscaled bicubically), a few
  filled shapes with soft edges, and per-pixel noise, saved at quality 90 with PIL's default 4:2:0
  chroma subsampling, so decoding costs about what it costs on real photos (~40-70 KB a file).
- `<dir>/resnet50.safetensors` (or `resnet50.pt` when the `safetensors` package is missing): a
  random-init torchvision `resnet50()` state dict without `fc`, torchvision names, with non-trivial
  BatchNorm statistics and affine parameters (running_mean ~ N(0, 0.1), running_var ~ U(0.5, 1.5),
  weight ~ U(0.5, 1.5), bias ~ N(0, 0.1)) so that folding BatchNorm into the convolutions is
  exercised.

Everything comes from `--seed`. `<dir>/params.json` records the parameters: when they match, nothing
is redone; otherwise `data/` and the weights are removed and made again.

Usage: make_bench_features_data.py --dir DIR --images N --val M [--classes 8] [--seed 0]
Prints `weights <path>` as its last line.
"""
import argparse
import json
import os
import shutil
import sys

try:
    import numpy as np
    import torch
    import torchvision
    from PIL import Image, ImageDraw, ImageFilter
except ImportError as e:  # the caller says how to point BYOL_PY at a Python with these
    print(f"make_bench_features_data.py: needs numpy, Pillow, torch and torchvision ({e})",
          file=sys.stderr)
    sys.exit(3)

# Bump when the content of the images or the weights changes, so old caches are remade.
VERSION = 1


def photo_like(rng: np.random.Generator) -> Image.Image:
    w, h = (int(v) for v in rng.integers(300, 501, size=2))
    # Smooth colour field: a coarse random grid, upscaled bicubically.
    gw, gh = int(rng.integers(3, 7)), int(rng.integers(3, 7))
    grid = rng.integers(0, 256, size=(gh, gw, 3), dtype=np.uint8)
    img = Image.fromarray(grid, "RGB").resize((w, h), Image.BICUBIC)
    # A few filled shapes, blurred a little so their edges are not perfectly sharp.
    layer = img.copy()
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(3, 9))):
        x0, x1 = sorted(int(v) for v in rng.integers(-w // 4, w + w // 4, size=2))
        y0, y1 = sorted(int(v) for v in rng.integers(-h // 4, h + h // 4, size=2))
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse([x0, y0, x1 + 1, y1 + 1], fill=colour)
        elif kind == 1:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            pts = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(3)]
            draw.polygon(pts, fill=colour)
    img = Image.blend(img, layer.filter(ImageFilter.GaussianBlur(1.5)), 0.8)
    # Texture: per-pixel noise (what makes real photos' JPEGs big and their decoding costly).
    a = np.asarray(img, dtype=np.float32)
    a += rng.normal(0.0, 10.0, size=a.shape).astype(np.float32)
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "RGB")


def write_split(root: str, count: int, classes: int, rng: np.random.Generator) -> None:
    for k in range(classes):
        os.makedirs(os.path.join(root, f"class{k}"), exist_ok=True)
    for i in range(count):
        # Zero-padded names in flat class folders: byte order (ours) = Python's sorted()
        # (torchvision's ImageFolder), so both list the images in the same order.
        path = os.path.join(root, f"class{i % classes}", f"{i:06d}.jpg")
        photo_like(rng).save(path, quality=90)


def write_weights(dir_: str, seed: int) -> str:
    torch.manual_seed(seed)
    model = torchvision.models.resnet50()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    try:
        from safetensors.torch import save_file
    except ImportError:
        path = os.path.join(dir_, "resnet50.pt")
        torch.save(state, path)
    else:
        path = os.path.join(dir_, "resnet50.safetensors")
        save_file(state, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--images", type=int, required=True)
    ap.add_argument("--val", type=int, required=True)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.classes < 1 or args.images < args.classes or args.val < args.classes:
        # torchvision's ImageFolder refuses a class folder without images.
        ap.error("--images and --val must be at least --classes (>= 1): every class needs an "
                 "image in each split")

    params = {"version": VERSION, "images": args.images, "val": args.val,
              "classes": args.classes, "seed": args.seed}
    stamp = os.path.join(args.dir, "params.json")
    candidates = [os.path.join(args.dir, n) for n in ("resnet50.safetensors", "resnet50.pt")]
    try:
        with open(stamp) as f:
            done = json.load(f)
    except (OSError, ValueError):
        done = None
    existing = [p for p in candidates if os.path.isfile(p)]
    if done == params and existing and os.path.isdir(os.path.join(args.dir, "data")):
        print(f"weights {existing[0]}")
        return

    print(f"make_bench_features_data.py: writing {args.images} + {args.val} JPEGs and ResNet-50 "
          f"weights into {args.dir} ...", file=sys.stderr)
    os.makedirs(args.dir, exist_ok=True)
    if os.path.exists(stamp):
        os.remove(stamp)  # an interrupted run leaves no stamp, so it is redone
    shutil.rmtree(os.path.join(args.dir, "data"), ignore_errors=True)
    for p in existing:
        os.remove(p)
    rng = np.random.default_rng(args.seed)
    write_split(os.path.join(args.dir, "data", "train"), args.images, args.classes, rng)
    write_split(os.path.join(args.dir, "data", "val"), args.val, args.classes, rng)
    weights = write_weights(args.dir, args.seed)
    with open(stamp, "w") as f:
        json.dump(params, f)
    print(f"weights {weights}")


if __name__ == "__main__":
    main()
