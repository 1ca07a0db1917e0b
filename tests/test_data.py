"""Tests of maskfeat.data.images and maskfeat.data.transforms: decoding of awkward files, transforms, sample data."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from PIL import Image

from maskfeat.data import (
    IMAGENET_MEAN,
    MEAN_RGB_UINT8,
    DataError,
    ImageDataset,
    denormalize,
    eval_transform,
    load_rgb,
    pretrain_transform,
    sample_image_folder,
    sample_labeled_folder,
    scan_image_folder,
)


def _gradient_rgb(width: int = 40, height: int = 30) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))


# ----------------------------------------------------------------------------------------------------------------
# load_rgb: every awkward mode, written to real files
# ----------------------------------------------------------------------------------------------------------------


def _write_awkward_files(folder: Path) -> dict[str, Path]:
    base = _gradient_rgb()
    files: dict[str, Path] = {}

    def save(name: str, image: Image.Image, **kwargs) -> None:
        files[name] = folder / name
        image.save(files[name], **kwargs)

    save("mode1.png", base.convert("1"))
    save("modeL.png", base.convert("L"))
    save("modeP.png", base.convert("P"))
    palette = base.convert("P")
    save("modeP_transparent.png", palette, transparency=int(np.asarray(palette)[0, 0]))
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    save("modeRGBA.png", rgba)
    save("modeLA.png", base.convert("LA"))
    save("modeCMYK.jpg", base.convert("CMYK"), quality=95)
    save("modeI16.png", Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)))
    save("modeI.tif", Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 1000).astype(np.int32)))
    save("modeF.tif", Image.fromarray(np.linspace(-1.0, 3.0, 40 * 30, dtype=np.float32).reshape(30, 40)))
    save("tiny.png", Image.new("RGB", (1, 1), (10, 20, 30)))
    save("thin.png", base.resize((3, 500)))
    save("webp.webp", base)
    save("bmp.BMP", base)
    save("ppm.ppm", base)
    return files


def test_load_rgb_every_mode(tmp_path: Path) -> None:
    files = _write_awkward_files(tmp_path)
    for name, path in files.items():
        image = load_rgb(path)
        assert image.mode == "RGB", name
        with Image.open(path) as original:
            assert image.size == original.size, name
        assert np.asarray(image).dtype == np.uint8
    # CMYK JPEG comes back close to the RGB it was made from (PIL's naive CMYK is lossless up to JPEG error)
    cmyk = np.asarray(load_rgb(files["modeCMYK.jpg"]), dtype=np.float64)
    assert np.abs(cmyk - np.asarray(_gradient_rgb(), dtype=np.float64)).mean() < 6
    # float image: min..max spread over 0..255
    f = np.asarray(load_rgb(files["modeF.tif"]))
    assert f.min() == 0 and f.max() == 255
    # 32-bit integer image (max 1,199,000 -> scaled by 255 / (2**21 - 1)): a ramp, not clipped at 255
    i32 = np.asarray(load_rgb(files["modeI.tif"]))[..., 0].reshape(-1).astype(int)
    assert np.all(np.diff(i32) >= 0) and len(np.unique(i32)) > 100 and i32.max() == round(1_199_000 * 255 / (2**21 - 1))


def test_16bit_gradient_scaled_not_saturated(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)[None, :].repeat(4, 0)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    out = np.asarray(load_rgb(tmp_path / "ramp16.png"))
    assert out.shape == (4, 256, 3)
    row = out[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0) and len(np.unique(row)) > 200  # a full-range gradient, not saturated white
    assert np.abs(row - np.arange(256)).max() <= 1
    # 12-bit data stored in 16 bits (max 4095) also spans the 8-bit range
    Image.fromarray((ramp >> 4).astype(np.uint16)).save(tmp_path / "ramp12.png")
    assert np.asarray(load_rgb(tmp_path / "ramp12.png"))[0, -1, 0] == 255


def test_alpha_composited_over_mean_colour(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (255, 0, 0)
    rgba[:, 4:, 3] = 255  # right half opaque red, left half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_rgb(tmp_path / "a.png"))
    assert (out[:, :4] == MEAN_RGB_UINT8).all()
    assert (out[:, 4:] == (255, 0, 0)).all()
    # ... so a transparent region normalises to ~0
    x = eval_transform(8, crop_pct=1.0)(load_rgb(tmp_path / "a.png"))
    assert x[:, :, :2].abs().max() < 0.03
    # palette image with a transparent index
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.save(tmp_path / "p.png", transparency=0)
    out = np.asarray(load_rgb(tmp_path / "p.png"))
    assert tuple(out[0, 0]) == MEAN_RGB_UINT8 and tuple(out[1, 1]) == (0, 255, 0)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the stored 40x20 image displays as 20x40
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    image.paste((10, 10, 200), (0, 0, 10, 20))  # blue at the stored left edge -> displayed at the top
    image.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_rgb(tmp_path / "rot.jpg")
    assert out.size == (20, 40)
    top, bottom = np.asarray(out)[1, 10], np.asarray(out)[-2, 10]
    assert top[2] > 150 and bottom[0] > 150


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(tmp_path / "anim.gif") as gif:
        assert gif.n_frames == 3
    out = np.asarray(load_rgb(tmp_path / "anim.gif"))
    assert tuple(out[8, 8]) == (255, 0, 0)


def test_unreadable_files_return_none_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = tmp_path / "good.jpg"
    _gradient_rgb(64, 64).save(good, quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    text = tmp_path / "text.jpg"
    text.write_text("this is not an image\n")
    dataset = ImageDataset(tmp_path, pretrain_transform(16))
    assert len(dataset) == 3
    with caplog.at_level(logging.WARNING, logger="maskfeat"):
        items = {Path(dataset.files[i]).name: dataset[(i, 7)] for i in range(len(dataset))}
    assert items["truncated.jpg"] == {"unreadable": str(truncated)} and items["text.jpg"] == {"unreadable": str(text)}
    assert "image" in items["good.jpg"]
    messages = [r.getMessage() for r in caplog.records if r.name == "maskfeat"]
    for name in ("truncated.jpg", "text.jpg"):
        (message,) = [m for m in messages if name in m]
        assert message.startswith("skipped unreadable image ") and str(tmp_path / name) in message
        assert "\n" not in message


# ----------------------------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------------------------


def test_pretrain_transform_shape_and_determinism(tmp_path: Path) -> None:
    transform = pretrain_transform(32)
    image = _gradient_rgb(50, 40)
    torch.manual_seed(0)
    x = transform(image)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and type(x) is torch.Tensor
    torch.manual_seed(0)
    assert torch.equal(transform(image), x)
    outputs = {transform(image).sum().item() for _ in range(5)}
    assert len(outputs) > 1  # it is random
    # images smaller than the crop, and extreme aspect ratios, are upsampled
    for size in ((1, 1), (3, 500), (500, 3)):
        assert transform(_gradient_rgb(*size)).shape == (3, 32, 32)
    # per-sample seeding in the dataset: same key -> same tensor, other seed -> other tensor
    image.save(tmp_path / "g.png")
    dataset = ImageDataset(tmp_path, transform)
    assert torch.equal(dataset[(0, 11)]["image"], dataset[(0, 11)]["image"])
    assert not torch.equal(dataset[(0, 11)]["image"], dataset[(0, 12)]["image"])
    assert dataset[0]["seed"] == 0


def test_eval_transform_and_denormalize() -> None:
    image = _gradient_rgb(300, 200)
    x = eval_transform(224)(image)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert eval_transform((32, 48), crop_pct=1.0)(image).shape == (3, 32, 48)
    flat = Image.new("RGB", (20, 20), tuple(round(m * 255) for m in IMAGENET_MEAN))
    assert eval_transform(16)(flat).abs().max() < 0.02
    restored = denormalize(eval_transform(40, crop_pct=1.0)(image.resize((40, 40))))
    expected = torch.from_numpy(np.array(image.resize((40, 40)))).permute(2, 0, 1) / 255
    assert restored.min() >= 0 and restored.max() <= 1
    assert (restored - expected).abs().max() < 0.02
    assert denormalize(torch.zeros(2, 3, 4, 4)).shape == (2, 3, 4, 4)


# ----------------------------------------------------------------------------------------------------------------
# Built-in sample data and the real CIFAR-10 folder
# ----------------------------------------------------------------------------------------------------------------


def _digest(folder: str) -> dict[str, str]:
    return {
        os.path.relpath(os.path.join(d, f), folder): hashlib.sha256(Path(d, f).read_bytes()).hexdigest()
        for d, _, names in os.walk(folder)
        for f in names
        if f.endswith(".jpg")
    }


def test_sample_image_folder_deterministic(tmp_path: Path) -> None:
    a = sample_image_folder(str(tmp_path / "a"), num_images=20, size=32, seed=1)
    b = sample_image_folder(str(tmp_path / "b"), num_images=20, size=32, seed=1)
    c = sample_image_folder(str(tmp_path / "c"), num_images=20, size=32, seed=2)
    assert _digest(a) == _digest(b) and len(_digest(a)) == 20
    assert _digest(a) != _digest(c)
    files, labels, classes = scan_image_folder(a)
    assert len(files) == 20 and classes == [] and set(labels) == {-1}
    with Image.open(files[0]) as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    # reused when complete (same path, nothing rebuilt), rebuilt when the parameters change
    stamp = os.stat(files[0]).st_mtime_ns
    assert sample_image_folder(a, num_images=20, size=32, seed=1) == a
    assert os.stat(files[0]).st_mtime_ns == stamp
    assert len(scan_image_folder(sample_image_folder(a, num_images=5, size=32, seed=1))[0]) == 5
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary folders left
    # never overwrites a folder that is not ours
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "mine.txt").write_text("x")
    with pytest.raises(DataError, match="not a maskfeat sample folder"):
        sample_image_folder(str(tmp_path / "user"), num_images=2)


def test_sample_labeled_folder(tmp_path: Path) -> None:
    train = sample_labeled_folder(str(tmp_path / "train"), split="train", images_per_class=2, size=24)
    val = sample_labeled_folder(str(tmp_path / "val"), split="val", images_per_class=1, size=24)
    train_files, train_labels, train_classes = scan_image_folder(train)
    val_files, _, val_classes = scan_image_folder(val)
    assert train_classes == val_classes and len(train_classes) >= 10
    assert len(train_files) == 2 * len(train_classes) and len(val_files) == len(val_classes)
    assert set(train_labels) == set(range(len(train_classes)))
    assert not set(_digest(train).values()) & set(_digest(val).values())


def test_cifar10_folder() -> None:
    root = SHARED_DATA / "cifar10" / "train"
    if not root.is_dir():
        pytest.skip(f"CIFAR-10 not available at {root}")
    files, labels, classes = scan_image_folder(root)
    assert len(classes) == 10 and "airplane" in classes
    assert len(files) == 50_000 and np.bincount(labels).tolist() == [5000] * 10
    dataset = ImageDataset(root, pretrain_transform(32), files=files, labels=labels, classes=classes)
    item = dataset[(12_345, 1)]
    assert item["image"].shape == (3, 32, 32) and item["label"] == labels[12_345]
