"""The user-facing helper scripts under scripts/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from maskfeat.data import ImageDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from prepare_cifar10 import write_image_folder  # noqa: E402


def test_prepare_cifar10_writes_an_image_folder_maskfeat_reads(tmp_path):
    rng = np.random.default_rng(0)
    classes = ["airplane", "cat", "ship"]
    labels = [0, 2, 1, 2, 2, 0]
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in labels]
    counts = write_image_folder(zip(images, labels), classes, str(tmp_path / "train"))
    assert counts == {"airplane": 2, "cat": 1, "ship": 3}
    assert sorted(p.name for p in (tmp_path / "train" / "ship").iterdir()) == ["0000.jpg", "0001.jpg", "0002.jpg"]
    assert not list(tmp_path.rglob("*.tmp"))
    dataset = ImageDataset(str(tmp_path / "train"), transform=None)
    assert dataset.classes == classes and sorted(dataset.labels) == sorted(labels)
    back = np.asarray(Image.open(tmp_path / "train" / "cat" / "0000.jpg"))
    assert back.shape == (32, 32, 3)  # JPEG: lossy, same size


def test_prepare_cifar10_without_the_archive_says_so_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_cifar10.py"), "--out", str(tmp_path),
                        "--no-download"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("prepare_cifar10: error:"), r.stderr
