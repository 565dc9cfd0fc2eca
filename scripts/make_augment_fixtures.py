"""Writes tests/fixtures/augment/torchvision_fixture.json: torchvision's functional ops on a
small image with fixed parameters, which the Rust test `matches_torchvision_fixture` compares
against (no Python needed in CI).

Usage: "$(scripts/peer-python)" scripts/make_augment_fixtures.py
"""

import json
import os

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

W, H, S = 16, 12, 8


def image():
    # Deterministic, colourful, with saturated and grey pixels (hue edge cases).
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, H, W), generator=g, dtype=torch.uint8)
    img[:, 0, :4] = torch.tensor([[255, 0, 0, 128], [0, 255, 0, 128], [0, 0, 255, 128]],
                                 dtype=torch.uint8)
    return img


def run(img, case):
    left, top, w, h = case["crop"]
    x = F.resized_crop(img, top, left, h, w, [S, S], InterpolationMode.BICUBIC, antialias=True)
    if case["flip"]:
        x = F.horizontal_flip(x)
    x = x.float() / 255.0
    j = case["jitter"]
    if j is not None:
        for op in j["order"]:
            if op == "brightness" and j["brightness"] is not None:
                x = F.adjust_brightness(x, j["brightness"])
            elif op == "contrast" and j["contrast"] is not None:
                x = F.adjust_contrast(x, j["contrast"])
            elif op == "saturation" and j["saturation"] is not None:
                x = F.adjust_saturation(x, j["saturation"])
            elif op == "hue" and j["hue"] is not None:
                x = F.adjust_hue(x, j["hue"])
    if case["grayscale"]:
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    if case["blur"] is not None:
        sigma, k = case["blur"]
        x = F.gaussian_blur(x, [k, k], [sigma, sigma])
    if case["solarize"] is not None:
        x = F.solarize(x, case["solarize"])
    return x


def jit(order, b=None, c=None, s=None, h=None):
    return {"order": order, "brightness": b, "contrast": c, "saturation": s, "hue": h}


def main():
    img = image()
    exact = [5, 2, S, S]  # crop at the output size: no resampling, float-exact comparison
    base = {"crop": exact, "flip": False, "jitter": None, "grayscale": False, "blur": None,
            "solarize": None, "tol": 2e-5}
    all4 = ["brightness", "contrast", "saturation", "hue"]
    cases = [
        dict(base, name="identity"),
        dict(base, name="flip", flip=True),
        dict(base, name="brightness", jitter=jit(all4, b=1.35)),
        dict(base, name="contrast", jitter=jit(all4, c=0.65)),
        dict(base, name="saturation", jitter=jit(all4, s=1.2)),
        dict(base, name="hue+", jitter=jit(all4, h=0.08)),
        dict(base, name="hue-", jitter=jit(all4, h=-0.1)),
        dict(base, name="jitter order hcbs",
             jitter=jit(["hue", "contrast", "brightness", "saturation"], 1.2, 1.3, 0.85, -0.05)),
        dict(base, name="jitter order sbch",
             jitter=jit(["saturation", "brightness", "contrast", "hue"], 0.7, 0.75, 1.15, 0.1)),
        dict(base, name="grayscale", grayscale=True),
        dict(base, name="blur 0.8", blur=[0.8, 5]),
        dict(base, name="blur 2.0", blur=[2.0, 7]),
        dict(base, name="solarize", solarize=0.5),
        dict(base, name="all", flip=True,
             jitter=jit(["contrast", "hue", "saturation", "brightness"], 1.1, 0.9, 1.1, 0.03),
             grayscale=False, blur=[1.1, 5], solarize=0.5),
        # Resampled crops: fast_image_resize rounds and clips to u8 between its two passes (as
        # PIL does, but vertical pass first), torchvision does not; on this pixel noise the
        # clipped Catmull-Rom overshoots differ by a few levels at isolated pixels (the Rust test
        # also bounds the mean difference to one level).
        dict(base, name="resized crop", crop=[1, 0, 15, 12], tol=2.5 / 255),
        dict(base, name="resized crop up", crop=[3, 4, 5, 6], tol=8 / 255),
    ]
    for c in cases:
        c["out"] = [round(v, 7) for v in run(img, c).flatten().tolist()]
    doc = {
        "generator": "scripts/make_augment_fixtures.py (torchvision " +
                     __import__("torchvision").__version__ + ")",
        "width": W, "height": H, "size": S,
        "image_hwc": img.permute(1, 2, 0).flatten().tolist(),
        "cases": cases,
    }
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "tests/fixtures/augment/torchvision_fixture.json")
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
