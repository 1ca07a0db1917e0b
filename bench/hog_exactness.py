"""How exact is the HOG target? Orientation bins of maskfeat's HOG and of a plain conv2d implementation against the
exact bins (integer Sobel gradients in float64), on 8-bit photographs, for three input scalings.

    python bench/hog_exactness.py      # scikit-image's photos, and 200 CIFAR-10 test JPEGs where ../shared has them

One line per photo and scaling: the share of pixels with an exactly vertical gradient (gx = 0), of pixels whose bin
differs from the exact one (and of those, with gx = 0), of cells whose histogram differs by more than 1e-3.
"""

import glob
import math
import sys
from pathlib import Path

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from maskfeat.hog import HOG

NB, CS = 9, 8


def photos():
    out = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"):
        try:
            img = getattr(skimage.data, name)()
        except Exception as e:  # not bundled (needs a download)
            print(f"skip {name}: {type(e).__name__}")
            continue
        if img.ndim == 3 and img.shape[2] == 3:
            h, w = img.shape[0] // 16 * 16, img.shape[1] // 16 * 16
            out[name] = img[:h, :w]
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10" / "test"
    files = sorted(glob.glob(str(shared / "*" / "*.jpg")))[::50][:200]  # 200 CIFAR-10 test JPEGs
    if files:
        out["cifar10 (200 test JPEGs)"] = np.concatenate([np.asarray(Image.open(f).convert("RGB")) for f in files], 0)
    return out


KX = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])


def conv2d_grads(x):  # x (B, C, H, W) float32: the straightforward grouped conv2d
    C = x.shape[1]
    w = torch.stack([KX, KX.t()])[:, None].repeat(C, 1, 1, 1)  # (2C, 1, 3, 3): gx, gy per channel
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w, groups=C)
    return g[:, 0::2], g[:, 1::2]


def ours_grads(x):  # the differences-first sums of maskfeat.hog.HOG._histograms_, same ops
    B, C, H, W = x.shape
    xp = F.pad(x.reshape(B * C, H, W), (1, 1, 1, 1), mode="reflect")
    dx = xp[:, :, :-2] - xp[:, :, 2:]
    gx = dx[:, :-2] + dx[:, 2:]
    gx.add_(dx[:, 1:-1], alpha=2)
    dy = xp[:, :-2] - xp[:, 2:]
    gy = dy[:, :, :-2] + dy[:, :, 2:]
    gy.add_(dy[:, :, 1:-1], alpha=2)
    return gx.view(B, C, H, W), gy.view(B, C, H, W)


def bins(gx, gy):
    return torch.remainder(torch.floor(torch.atan2(gx, gy) / math.pi * NB), NB)


def cell_hist(gx, gy):
    B, C, H, W = gx.shape
    m = torch.sqrt(gx * gx + gy * gy)
    b = bins(gx, gy).long()
    h = torch.zeros(B, C, NB, H, W, dtype=m.dtype).scatter_add_(2, b[:, :, None], m[:, :, None])
    h = F.avg_pool2d(h.flatten(1, 2), CS, CS, divisor_override=1).view(B, C, NB, H // CS, W // CS)
    return F.normalize(h, dim=2)


def compare(x: torch.Tensor, exact: torch.Tensor, exact_gx: torch.Tensor, exact_h: torch.Tensor,
            moving: torch.Tensor) -> dict:  # fmt: skip
    """Bins and histograms of conv2d and of HOG() on ``x``, against the exact ones."""
    cgx, cgy = conv2d_grads(x)
    ogx, ogy = ours_grads(x)
    cb, ob = bins(cgx, cgy), bins(ogx, ogy)
    ours_h = HOG(NB, CS)(x)
    assert torch.allclose(ours_h, cell_hist(ogx, ogy), atol=1e-5), "replica differs from HOG()"
    conv_h = cell_hist(cgx, cgy)
    flat = exact_h.abs().amax(2) == 0  # cells without any gradient
    out = {"moving": int(moving.sum()), "flat": int(flat.sum()), "cells": flat.numel()}
    for who, b, h in (("conv2d", cb, conv_h), ("ours", ob, ours_h)):
        wrong = (b != exact) & moving  # pixels with a gradient (a bin that counts) in another bin
        out[who] = {
            "wrong": 100 * wrong.double().mean().item(),
            "wrong_gx0": 100 * (wrong & (exact_gx == 0)).double().mean().item(),
            "wrong_other": int((wrong & (exact_gx != 0)).sum()),
            "cells_off": 100 * ((h - exact_h).abs().amax(2) > 1e-3).double().mean().item(),
            "flat_noise": int((flat & (h.abs().amax(2) > 0)).sum()),
        }
    out["disagree"] = 100 * ((ours_h - conv_h).abs().amax(2) > 1e-3).double().mean().item()
    return out


def main():
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for name, img in photos().items():
        u8 = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()  # (1, 3, H, W) uint8
        exact_gx, exact_gy = ours_grads(u8.double())  # integers: exact in float64
        exact = bins(exact_gx, exact_gy)
        exact_h = cell_hist(exact_gx, exact_gy).float()
        moving = (exact_gx != 0) | (exact_gy != 0)
        vertical = 100 * (exact_gx == 0).double().mean().item()
        scalings = (("0..255", u8.float()), ("/255", u8.float() / 255),
                    ("ImageNet-normalised", (u8.float() / 255 - mean) / std))  # fmt: skip
        for scaling, x in scalings:
            r = compare(x, exact, exact_gx, exact_h, moving)
            c, o = r["conv2d"], r["ours"]
            print(
                f"{name:26s} {scaling:20s} gx=0: {vertical:5.2f}% px | wrong bin (of which gx=0): "
                f"conv2d {c['wrong']:.3f}% ({c['wrong_gx0']:.3f}%), ours {o['wrong']:.3f}% ({o['wrong_gx0']:.3f}%) | "
                f"cells off by >1e-3: conv2d {c['cells_off']:5.1f}%, ours {o['cells_off']:5.1f}% | "
                f"conv2d vs ours: {r['disagree']:.1f}% of cells"
            )
            print(
                f"   {r['moving']} px with a gradient; wrong bin with gx != 0: conv2d {c['wrong_other']}, ours "
                f"{o['wrong_other']}; flat cells {r['flat']}/{r['cells']}, non-zero there: conv2d {c['flat_noise']}, "
                f"ours {o['flat_noise']}"
            )
        sys.stdout.flush()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
