"""Peers of the Rust BYOL augmentation benchmark (driven by scripts/bench-augment).

  gen DIR N      write N 500x375 natural-looking JPEGs (gradients, blobs, noise) into DIR
  tv DIR         torchvision v2, faithful BYOL recipe: decode_jpeg -> v2 ops on uint8 tensors
                 (GaussianBlur(23) with p 1.0 / 0.1) -> float -> Normalize
  pil DIR        solo-learn / lightly style: PIL decode, v1 transforms on PIL images, blur by
                 PIL ImageFilter.GaussianBlur(radius=sigma), ImageOps.solarize, ToTensor, Normalize

Each peer runs on one thread over every file (both views, decode included) and prints
`<name> <source images per CPU second>` as its last line.
"""

import os
import random
import sys
import time

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def gen(out_dir, n):
    import numpy as np
    from PIL import Image

    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = 500, 375
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        img = np.zeros((h, w, 3), np.float32)
        for c in range(3):
            a, b, d = rng.uniform(-1, 1, 3)
            img[..., c] = 128 + 80 * np.sin(a * xx / 60 + b * yy / 45 + d * 6)
        for _ in range(12):  # soft coloured blobs, like objects
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            r = rng.uniform(15, 120)
            col = rng.uniform(0, 255, 3)
            m = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
            img = img * (1 - m) + col * m
        img += rng.normal(0, 12, img.shape)  # texture / sensor noise
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            os.path.join(out_dir, f"img{i:04d}.jpg"), quality=90
        )


def files_of(d):
    paths = sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".jpg"))
    if not paths:
        sys.exit(f"no .jpg files in {d}")
    return [open(p, "rb").read() for p in paths]


def run(name, files, two_views):
    """Prints images per wall second (`<name>-wall`) then per CPU second of the process
    (`<name>`), which a busy shared machine does not distort."""
    two_views(files[0])  # warm-up
    t, c = time.perf_counter(), time.process_time()
    for b in files:
        two_views(b)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    print(f"{name}-wall {len(files) / dt:.1f}")
    print(f"{name} {len(files) / dc:.1f}")


def tv(d):
    import torch
    from torchvision.io import decode_jpeg
    from torchvision.transforms import v2

    torch.set_num_threads(1)

    def view(blur_p, sol_p):
        return v2.Compose([
            v2.RandomResizedCrop(224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                 interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            v2.RandomGrayscale(0.2),
            v2.RandomApply([v2.GaussianBlur(23, sigma=(0.1, 2.0))], p=blur_p),
            v2.RandomSolarize(threshold=0.5 * 255, p=sol_p),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ])

    t1, t2 = view(1.0, 0.0), view(0.1, 0.2)

    def two(b):
        img = decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8))
        return t1(img), t2(img)

    run("torchvision", files_of(d), two)


def pil(d):
    import io

    import torch
    from PIL import Image, ImageFilter, ImageOps
    from torchvision import transforms as T

    torch.set_num_threads(1)

    class Blur:
        def __init__(self, p):
            self.p = p

        def __call__(self, img):
            if random.random() < self.p:
                return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
            return img

    class Solarize:
        def __init__(self, p):
            self.p = p

        def __call__(self, img):
            return ImageOps.solarize(img) if random.random() < self.p else img

    def view(blur_p, sol_p):
        return T.Compose([
            T.RandomResizedCrop(224, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(0.5),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(0.2),
            Blur(blur_p),
            Solarize(sol_p),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ])

    t1, t2 = view(1.0, 0.0), view(0.1, 0.2)

    def two(b):
        img = Image.open(io.BytesIO(b)).convert("RGB")
        return t1(img), t2(img)

    run("pil", files_of(d), two)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "gen" and len(sys.argv) == 4:
        gen(sys.argv[2], int(sys.argv[3]))
    elif cmd == "tv" and len(sys.argv) == 3:
        tv(sys.argv[2])
    elif cmd == "pil" and len(sys.argv) == 3:
        pil(sys.argv[2])
    else:
        sys.exit(__doc__)
