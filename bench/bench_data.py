"""Pre-training data pipeline, images/s on one core: decode + RandomResizedCrop(0.5-1, bicubic) + flip +
normalise, ours (uint8 tensor kernels, one fused normalise) against a plain torchvision v1 pipeline on PIL images,
interleaved on the same files.

    python bench/bench_data.py --size 224 --files 400
    python bench/bench_data.py --size 32 --root ../shared/data/cifar10/train

Without --root it uses the embedded sample images (crops of scikit-image's photos, 160x160 JPEG).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision import transforms as T

from maskfeat.data import IMAGENET_MEAN, IMAGENET_STD, load_rgb, pretrain_transform, sample_image_folder
from maskfeat.data.images import scan_image_folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None, help="image folder (default: the embedded sample images)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--files", type=int, default=400, help="files per timed pass")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = args.root or sample_image_folder(num_images=512, size=160)
    files = scan_image_folder(root)[0]
    files = files[:: max(1, len(files) // args.files)][: args.files]
    ours = pretrain_transform(args.size)
    plain = T.Compose([
        T.RandomResizedCrop(args.size, scale=(0.5, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip
    times: dict[str, list[float]] = {"ours": [], "torchvision": []}
    for _ in range(args.repeats):
        for name, transform in (("ours", ours), ("torchvision", plain)):
            t = time.perf_counter()
            for f in files:
                transform(load_rgb(f))
            times[name].append(time.perf_counter() - t)
    rate = {k: len(files) / statistics.median(v) for k, v in times.items()}
    print(
        f"data {args.size}px, {len(files)} files of {root}, 1 thread: ours {rate['ours']:.0f} img/s, "
        f"torchvision {rate['torchvision']:.0f} img/s, speed-up {rate['ours'] / rate['torchvision']:.2f}x"
    )


if __name__ == "__main__":
    main()
