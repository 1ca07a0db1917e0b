"""Write CIFAR-10 as an image folder (JPEG files in class sub-folders), the layout every maskfeat command reads.

    python scripts/prepare_cifar10.py                    # downloads with torchvision into data/cifar10/download
    python scripts/prepare_cifar10.py --download-dir ~/datasets/cifar10   # or where the archive already is

writes ``data/cifar10/train/<class>/NNNN.jpg`` (5,000 a class) and ``data/cifar10/test/<class>/NNNN.jpg``
(1,000 a class), which ``configs/*/cifar10*.yaml`` read. The JPEGs use PIL's default quality (75), as the
figures in BENCHMARKS.md were measured with. A folder that already holds a complete split is left as it is.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence

from PIL import Image


def write_image_folder(samples: Iterable[tuple[Image.Image, int]], classes: Sequence[str], root: str,
                       quality: int = 75) -> dict[str, int]:  # fmt: skip
    """Save ``(image, label)`` pairs as ``root/<classes[label]>/NNNN.jpg``, numbered per class in order.

    Each file is written under a temporary name and renamed, so an interrupted run leaves no torn JPEG.
    Returns the number of images written per class.
    """
    counts = dict.fromkeys(classes, 0)
    for name in classes:
        os.makedirs(os.path.join(root, name), exist_ok=True)
    for image, label in samples:
        name = classes[label]
        path = os.path.join(root, name, f"{counts[name]:04d}.jpg")
        tmp = path + ".tmp"
        image.convert("RGB").save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, path)
        counts[name] += 1
    return counts


def _complete(root: str, classes: Sequence[str], per_class: int) -> bool:
    return all(
        os.path.isdir(os.path.join(root, c)) and len(os.listdir(os.path.join(root, c))) == per_class for c in classes
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/cifar10", help="folder to write train/ and test/ into")
    ap.add_argument("--download-dir", default=None, help="where torchvision keeps the archive (default: OUT/download)")
    ap.add_argument("--no-download", action="store_true", help="only read an archive already in --download-dir")
    args = ap.parse_args(argv)
    from torchvision.datasets import CIFAR10

    download_dir = args.download_dir or os.path.join(args.out, "download")
    for split, train, per_class in (("train", True, 5000), ("test", False, 1000)):
        root = os.path.join(args.out, split)
        try:
            data = CIFAR10(download_dir, train=train, download=not args.no_download)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
            print(f"prepare_cifar10: error: {e} (in {download_dir})", file=sys.stderr)
            return 2
        if _complete(root, data.classes, per_class):
            print(f"{root}: already complete, left as it is")
            continue
        counts = write_image_folder(data, data.classes, root)
        print(f"{root}: {sum(counts.values())} images in {len(counts)} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
