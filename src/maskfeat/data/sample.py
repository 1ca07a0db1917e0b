"""A small built-in image data set, made offline from the real photos bundled inside scikit-image.

Used when the user gives no ``data.path``: crops of scikit-image's sample photographs (astronaut, cat, coffee,
rocket, Hubble deep field, retina, ...) read with PIL straight from the ``skimage/data`` package folder. Nothing is
downloaded: only files shipped inside the installed package are read, and missing ones are skipped.

Folders are built once into a temporary sibling directory and moved into place with ``os.replace``, with a marker
file (``.maskfeat_sample.json``) that records the build parameters; a folder with a matching marker is reused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable

import numpy as np
from PIL import Image

from .images import DataError, load_rgb

__all__ = [
    "SAMPLE_MOTIONS",
    "SAMPLE_SOURCES",
    "default_cache_dir",
    "sample_image_folder",
    "sample_labeled_folder",
    "sample_video_folder",
]

_VERSION = 1
_VIDEO_VERSION = 2  # 2: the window's whole path stays inside the photo
_MARKER = ".maskfeat_sample.json"

#: Source photos (file names inside skimage/data), also the class names of :func:`sample_labeled_folder`.
SAMPLE_SOURCES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "clock": "clock_motion.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "horse": "horse.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "ihc": "ihc.png",
    "moon": "moon.png",
    "motorcycle_left": "motorcycle_left.png",
    "page": "page.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
    "text": "text.png",
}


def default_cache_dir() -> str:
    """``$MASKFEAT_CACHE`` if set, else ``~/.cache/maskfeat``."""
    return os.path.expanduser(os.environ.get("MASKFEAT_CACHE") or os.path.join("~", ".cache", "maskfeat"))


def _load_sources() -> dict[str, Image.Image]:
    """The bundled photos that this scikit-image install ships, as RGB images (name -> image)."""
    import skimage.data  # only to locate the package folder; nothing from it is called

    folder = os.path.dirname(skimage.data.__file__)
    sources: dict[str, Image.Image] = {}
    for name, filename in SAMPLE_SOURCES.items():
        path = os.path.join(folder, filename)
        if os.path.isfile(path):
            try:
                sources[name] = load_rgb(path)
            except Exception:  # a damaged bundled file only shrinks the variety
                continue
    if len(sources) < 2:
        raise DataError(f"too few sample photos found in {folder} to build the built-in data set")
    return sources


def _random_crop(image: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """A random square-output crop: 10-100% of the short side, aspect 3/4..4/3, random position, random flip."""
    width, height = image.size
    side = min(width, height) * np.sqrt(rng.uniform(0.01, 1.0))  # uniform in area fraction of the short square
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    crop_w = max(1, min(width, round(side * np.sqrt(aspect))))
    crop_h = max(1, min(height, round(side / np.sqrt(aspect))))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    crop = image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop


def _save_jpeg(image: Image.Image, path: str) -> None:
    # Fixed encoder settings so that the bytes depend only on the pixels (and the libjpeg build).
    image.save(path, format="JPEG", quality=90, optimize=False, progressive=False, subsampling=0)


def _build_atomically(root: str, params: dict, fill: Callable[[str], None]) -> str:
    """Builds the folder with ``fill(tmp_dir)`` unless ``root`` already holds a build with the same ``params``."""
    root = os.path.abspath(os.path.expanduser(root))
    marker = os.path.join(root, _MARKER)

    def complete() -> bool:
        try:
            with open(marker) as f:
                return json.load(f) == params
        except (OSError, ValueError):
            return False

    if complete():
        return root
    if os.path.exists(root) and not os.path.isfile(marker) and (not os.path.isdir(root) or os.listdir(root)):
        # Never overwrite something that is not ours.
        raise DataError(f"cannot build the sample data set in {root}: it exists and is not a maskfeat sample folder")

    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
    try:
        fill(tmp)
        with open(os.path.join(tmp, _MARKER), "w") as f:
            json.dump(params, f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700: give the final folder the usual permissions
        old = None
        if os.path.isfile(marker):  # a build with other parameters: move it aside, replace, then delete it
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.old-", dir=parent)
            os.replace(root, os.path.join(old, "x"))
        try:
            os.replace(tmp, root)  # atomic; fails if another process put a non-empty folder there meanwhile
        except OSError:
            if not complete():
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def sample_image_folder(root: str | None = None, num_images: int = 512, size: int = 96, seed: int = 0) -> str:
    """Builds (once) a flat folder of JPEG crops of scikit-image's bundled photos, for unlabeled pre-training.

    Image ``i`` is a random crop (scale, aspect, position, flip) of source photo ``i mod S``, resized to
    ``size x size`` and saved as ``NNNNN.jpg``; the files are byte-identical for the same arguments.

    Args:
        root: target folder; default ``<cache>/sample_images_v1/n{num_images}_s{size}_seed{seed}`` where
            ``<cache>`` is :func:`default_cache_dir`.
        num_images: number of images.
        size: side of the square images.
        seed: seed of the crops.

    Returns:
        The folder's absolute path.
    """
    if num_images < 1 or size < 1:
        raise ValueError(f"num_images and size must be positive, got {num_images} and {size}")
    if root is None:
        root = os.path.join(default_cache_dir(), f"sample_images_v{_VERSION}", f"n{num_images}_s{size}_seed{seed}")
    params = {"kind": "flat", "version": _VERSION, "num_images": num_images, "size": size, "seed": seed}

    def fill(folder: str) -> None:
        sources = list(_load_sources().values())
        for i in range(num_images):
            rng = np.random.default_rng([seed, 0, i])
            crop = _random_crop(sources[i % len(sources)], size, rng)
            _save_jpeg(crop, os.path.join(folder, f"{i:05d}.jpg"))

    return _build_atomically(root, params, fill)


def sample_labeled_folder(
    root: str | None = None,
    split: str = "train",
    images_per_class: int | None = None,
    size: int = 96,
    seed: int = 0,
) -> str:
    """Builds (once) an ImageFolder of crops of scikit-image's bundled photos, one class per source photo.

    For classification demos (fine-tuning, linear probing). ``"train"`` and ``"val"`` draw their crops from
    disjoint random streams of the same ``seed``.

    Args:
        root: target folder; default ``<cache>/sample_labeled_v1/{split}_k{images_per_class}_s{size}_seed{seed}``.
        split: ``"train"`` or ``"val"``.
        images_per_class: crops per class (default 32 for train, 8 for val).
        size: side of the square images.
        seed: seed of the crops.

    Returns:
        The folder's absolute path (``<root>/<class>/NNNNN.jpg``).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if images_per_class is None:
        images_per_class = 32 if split == "train" else 8
    if images_per_class < 1 or size < 1:
        raise ValueError(f"images_per_class and size must be positive, got {images_per_class} and {size}")
    if root is None:
        root = os.path.join(
            default_cache_dir(), f"sample_labeled_v{_VERSION}", f"{split}_k{images_per_class}_s{size}_seed{seed}"
        )
    params = {
        "kind": "labeled",
        "version": _VERSION,
        "split": split,
        "images_per_class": images_per_class,
        "size": size,
        "seed": seed,
    }
    stream = 1 if split == "train" else 2  # disjoint from each other and from sample_image_folder's stream 0

    def fill(folder: str) -> None:
        names = list(SAMPLE_SOURCES)
        for name, image in sorted(_load_sources().items()):
            os.makedirs(os.path.join(folder, name))
            for i in range(images_per_class):
                # keyed by the class's fixed position in SAMPLE_SOURCES, so a missing photo changes no other class
                rng = np.random.default_rng([seed, stream, names.index(name), i])
                _save_jpeg(_random_crop(image, size, rng), os.path.join(folder, name, f"{i:05d}.jpg"))

    return _build_atomically(root, params, fill)


#: Camera motions of :func:`sample_video_folder`, also its class names: (dx, dy) pixels per frame of the window
#: over the photo, and a zoom factor per frame.
SAMPLE_MOTIONS: dict[str, tuple[float, float, float]] = {
    "pan_left": (-1.5, 0.0, 1.0),
    "pan_right": (1.5, 0.0, 1.0),
    "pan_up": (0.0, -1.5, 1.0),
    "pan_down": (0.0, 1.5, 1.0),
    "zoom_in": (0.0, 0.0, 0.985),
    "zoom_out": (0.0, 0.0, 1.015),
}


def _motion_clip(photo: Image.Image, motion: tuple[float, float, float], frames: int, size: int,
                 rng: np.random.Generator, window: tuple[float, float] = (0.35, 0.55)) -> list[np.ndarray]:  # fmt: skip
    """``frames`` RGB frames (size x size) of a window moving over ``photo`` (start position and size random; the
    window's side is a fraction ``window`` of the photo's short side)."""
    dx, dy, zoom = motion
    w, h = photo.size
    side = rng.uniform(*window) * min(w, h)
    # the window's centre moves by (dx, dy) * side / 64 per frame and its side grows by ``zoom`` per frame: draw
    # the start so that the whole path stays inside the photo (centred where the photo is too small for it)
    half = side * max(1.0, zoom ** (frames - 1)) / 2
    path_x, path_y = dx * (frames - 1) * side / 64, dy * (frames - 1) * side / 64
    lo_x, hi_x = half - min(0.0, path_x), w - half - max(0.0, path_x)
    lo_y, hi_y = half - min(0.0, path_y), h - half - max(0.0, path_y)
    cx = rng.uniform(lo_x, hi_x) if lo_x < hi_x else (lo_x + hi_x) / 2
    cy = rng.uniform(lo_y, hi_y) if lo_y < hi_y else (lo_y + hi_y) / 2
    out = []
    for i in range(frames):
        half = side * zoom**i / 2
        x, y = cx + dx * i * side / 64, cy + dy * i * side / 64
        box = (x - half, y - half, x + half, y + half)
        out.append(np.asarray(photo.transform((size, size), Image.Transform.EXTENT, box, Image.Resampling.BILINEAR)))
    return out


def _write_mp4(path: str, frames: list[np.ndarray], fps: int = 25) -> None:
    import av

    with av.open(path, mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 8
        stream.bit_rate = 2_000_000
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())


def sample_video_folder(
    root: str | None = None, split: str = "train", clips_per_class: int | None = None, frames: int = 32,
    size: int = 96, seed: int = 0, photos: str | None = None,
) -> str:  # fmt: skip
    """Builds (once) a folder of short real-photo clips under camera motion, one class per motion.

    Each clip is a window moving over one of scikit-image's bundled photos (pan left/right/up/down, zoom in/out),
    encoded as MPEG-4 in MP4 with PyAV: a video data set for the demo and tests, made offline, whose labels need
    several frames (one frame alone cannot tell the motion).

    Args:
        root: target folder; default ``<cache>/sample_videos_v2/{split}_k{k}_f{frames}_s{size}_seed{seed}``.
        split: ``"train"`` or ``"val"`` (disjoint random streams of the same seed).
        clips_per_class: clips per motion (default 12 for train, 4 for val).
        frames: frames per clip.
        size: side of the square frames.
        seed: seed of the windows and photos.
        photos: a folder of images (searched recursively) to film instead of scikit-image's photos, one random
            image per clip (e.g. CIFAR-10's, for ``bench/video_motion.py``); the window then covers 55-70% of the
            image's side (these are small images).

    Returns:
        The folder's absolute path (``<root>/<motion>/NNNNN.mp4``).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    k = clips_per_class or (12 if split == "train" else 4)
    params = {"version": _VIDEO_VERSION, "kind": "videos", "split": split, "k": k, "frames": frames, "size": size,
              "seed": seed}  # fmt: skip
    if photos is not None:
        params["photos"] = os.path.abspath(photos)
    root = root or os.path.join(
        default_cache_dir(), f"sample_videos_v{_VIDEO_VERSION}", f"{split}_k{k}_f{frames}_s{size}_seed{seed}"
    )

    def fill(folder: str) -> None:
        if photos is None:
            sources = list(_load_sources().values())
            pick = lambda i: sources[i]  # noqa: E731
            count = len(sources)
        else:
            from .images import IMAGE_EXTENSIONS, find_files

            files = find_files(photos, IMAGE_EXTENSIONS)
            if not files:
                raise ValueError(f"no images found in {photos}")
            pick = lambda i: Image.open(files[i]).convert("RGB")  # noqa: E731
            count = len(files)
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, 7])
        for motion, spec in SAMPLE_MOTIONS.items():
            os.makedirs(os.path.join(folder, motion))
            for i in range(k):
                photo = pick(int(rng.integers(count)))
                window = (0.35, 0.55) if photos is None else (0.55, 0.7)
                clip = _motion_clip(photo, spec, frames, size, rng, window)
                _write_mp4(os.path.join(folder, motion, f"{i:05d}.mp4"), clip)

    return _build_atomically(root, params, fill)
