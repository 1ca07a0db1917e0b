"""Shared fixtures: small real image folders written with PIL, and the path of the shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"  # beside a developer's clone and in CI; a user's clone has none: tests using it skip
SHARED_DATA = SHARED / "data"


def write_images(folder: Path, n: int, size: tuple[int, int] = (48, 40), seed: int = 0) -> list[Path]:
    """Write ``n`` JPEG/PNG images with structure (gradients, rectangles, noise) so HOG has edges to find."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = size
        yy, xx = np.mgrid[0:h, 0:w]
        angle = rng.uniform(0, np.pi)
        base = (np.cos(angle) * xx + np.sin(angle) * yy) * rng.uniform(1, 6)
        img = np.stack([base * rng.uniform(0.5, 1.5) for _ in range(3)], -1)
        x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
        img[y0 : y0 + h // 3, x0 : x0 + w // 3] += rng.uniform(40, 120, size=3)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        path = folder / (f"img_{i:03d}.jpg" if i % 2 == 0 else f"img_{i:03d}.png")
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A flat folder of 24 small real images."""
    folder = tmp_path / "images"
    write_images(folder, 24)
    return folder


@pytest.fixture(scope="module")
def labeled(tmp_path_factory) -> Path:
    """train/ and val/ ImageFolders of 3 classes (12 and 4 images per class)."""
    root = tmp_path_factory.mktemp("labeled")
    for split, n in (("train", 12), ("val", 4)):
        for c in range(3):
            write_images(root / split / f"class{c}", n, seed=100 * c + (split == "val"))
    return root


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> Path:
    """The folder of a finished tiny ``maskfeat pretrain`` run (one epoch on 24 images): config.yaml,
    checkpoint-last.pt, encoder.safetensors + encoder.json. Shared by the tests that only read it."""
    from test_cli import TINY, maskfeat

    images = tmp_path_factory.mktemp("pretrain_images")
    write_images(images, 24)
    out = tmp_path_factory.mktemp("pre") / "run"
    r = maskfeat("pretrain", *TINY, f"data.path={images}", f"output_dir={out}", "train.epochs=1",
                 "data.num_workers=0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out
