"""Image folders: scanning, robust decoding, a seeded dataset and a seeded, resumable sampler.

Reproducibility design: the sampler (main process) yields ``(index, sample_seed)`` keys where ``sample_seed`` is a
hash of ``(seed, epoch, index)``; :class:`ImageDataset` seeds torch's and Python's RNGs with it before the random
transform. The augmentation of a sample therefore depends only on ``(seed, epoch, index)``: not on the number of
workers, on which worker handles it, nor on whether the epoch was interrupted and resumed.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

__all__ = [
    "IMAGE_EXTENSIONS",
    "MEAN_RGB_UINT8",
    "DataError",
    "ImageDataset",
    "SeededSampler",
    "load_rgb",
    "sample_seed",
    "scan_image_folder",
]

logger = logging.getLogger("maskfeat")

#: Accepted image file extensions (lower case, with the dot); matching is case-insensitive.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
)

#: Background that transparent pixels are composited over: the ImageNet mean colour, so they normalise to ~0.
MEAN_RGB_UINT8: tuple[int, int, int] = (124, 116, 104)

_MASK64 = (1 << 64) - 1


class DataError(ValueError):
    """Bad data input (missing path, no images, ...); the message is one line and names the path."""


# ----------------------------------------------------------------------------------------------------------------
# Scanning
# ----------------------------------------------------------------------------------------------------------------


def _has_extension(name: str, extensions: Sequence[str]) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions


def find_files(folder: str, extensions: Sequence[str]) -> list[str]:
    """All files with one of ``extensions`` under ``folder`` (recursive, following links, hidden entries
    skipped), sorted."""
    found: list[str] = []
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as exc:  # unreadable sub-folder: skip it rather than fail the whole scan
            logger.warning("skipped unreadable folder %s: %s", current, exc.strerror or exc)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    stack.append(entry.path)
                elif _has_extension(entry.name, extensions) and entry.is_file():
                    found.append(entry.path)
            except OSError:  # dangling link and the like
                continue
    found.sort()
    return found


def scan_folder(
    path: str | os.PathLike[str], extensions: Sequence[str], kind: str = "image"
) -> tuple[list[str], list[int], list[str]]:
    """Lists the ``kind`` files (images, videos) of a folder, in ImageFolder layout or flat.

    If ``path`` has sub-folders that contain such files (at any depth), each such sub-folder is a class
    (``classes`` = their sorted names, label = position in ``classes``) and its files are found recursively.
    Otherwise ``path`` is a flat folder: every label is -1 and ``classes`` is empty.
    Hidden files and folders (name starting with ``.``) are skipped.

    Returns:
        ``(files, labels, classes)``: absolute file paths (sorted within each class), one label per file, class names.

    Raises:
        DataError: ``path`` does not exist, is not a directory, or holds no such files.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.exists(root):
        raise DataError(f"data path does not exist: {root}")
    if not os.path.isdir(root):
        raise DataError(f"data path is not a directory: {root}")

    loose: list[str] = []
    subdirs: list[str] = []
    for entry in os.scandir(root):
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir():
                subdirs.append(entry.name)
            elif _has_extension(entry.name, extensions) and entry.is_file():
                loose.append(entry.path)
        except OSError:
            continue

    per_class = {name: find_files(os.path.join(root, name), extensions) for name in sorted(subdirs)}
    classes = [name for name, found in per_class.items() if found]
    if classes:
        empty = [name for name, found in per_class.items() if not found]
        if empty:
            logger.warning(
                "ignoring %d sub-folder(s) of %s without %ss: %s", len(empty), root, kind, ", ".join(empty[:10])
            )
        if loose:
            logger.warning(
                "ignoring %d %s file(s) at the top level of %s: using its %d class sub-folders",
                len(loose),
                kind,
                root,
                len(classes),
            )
        files: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(classes):
            files.extend(per_class[name])
            labels.extend([label] * len(per_class[name]))
        return files, labels, classes

    if not loose:
        raise DataError(f"no {kind} files found in {root} (accepted extensions: {', '.join(extensions)})")
    loose.sort()
    return loose, [-1] * len(loose), []


def scan_image_folder(path: str | os.PathLike[str]) -> tuple[list[str], list[int], list[str]]:
    """Lists the images of a folder, in ImageFolder layout or flat: :func:`scan_folder` with image extensions."""
    return scan_folder(path, IMAGE_EXTENSIONS, "image")


# ----------------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------------

# EXIF orientation tag value -> transpose that undoes it: ImageOps.exif_transpose's table, applied here to the
# converted RGB image so that it works the same for every source mode (I;16 and F included).
_EXIF_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _scale_to_uint8(values: np.ndarray, is_float: bool) -> np.ndarray:
    """Maps a single-channel high bit depth array onto 0..255 without clipping the real value range.

    Non-negative integers are divided by the smallest ``2**bits - 1`` (``bits >= 8``) that holds their maximum:
    16-bit data spans 0..255, 12-bit data stored in 16 bits too, 8-bit data stored in 16 bits stays unchanged.
    Floats, and integers with negative values, are stretched from their min..max.
    """
    values = values.astype(np.float64)
    if is_float:
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(values.min()), float(values.max())
    if is_float or lo < 0:
        if hi > lo:
            scaled = (values - lo) * (255.0 / (hi - lo))
        elif 0.0 <= hi <= 1.0:  # constant float image in the usual 0..1 convention
            scaled = values * 255.0
        else:
            scaled = values
    else:
        bits = max(8, math.ceil(math.log2(hi + 1.0))) if hi > 0 else 8
        scaled = values * (255.0 / float(2**bits - 1))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Converts a decoded image of any PIL mode to 8-bit RGB (alpha composited over the mean colour)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ("I", "F") or mode.startswith("I;16"):
        gray = _scale_to_uint8(np.asarray(image), is_float=(mode == "F"))
        return Image.fromarray(gray).convert("RGB")
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info
    if has_alpha:
        # P/L/RGB with a tRNS entry become RGBA through convert(); premultiplied modes are un-premultiplied by it.
        rgba = image.convert("LA").convert("RGBA") if mode == "La" else image.convert("RGBA")
        background = Image.new("RGB", rgba.size, MEAN_RGB_UINT8)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    # 1, L, P, CMYK, YCbCr, LAB, HSV: PIL's own conversions are correct for these.
    return image.convert("RGB")


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Decodes an image file into an 8-bit RGB PIL image.

    EXIF orientation is applied. Every PIL mode is converted properly: palette and grayscale expand, CMYK and
    YCbCr convert, 16/32-bit integer images are scaled from their real bit depth (not clipped at 255), float
    images from their min..max; images with alpha (or a transparent palette entry) are composited over the
    ImageNet mean colour :data:`MEAN_RGB_UINT8`. Animated or multi-page files give their first frame.

    Args:
        path: image file.

    Returns:
        A fully loaded ``PIL.Image.Image`` in mode ``"RGB"``, size ``(W, H)`` after orientation.

    Raises:
        PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError: unreadable.
    """
    with Image.open(path) as image:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()  # decode now, inside the with-block; truncated files raise here
        try:
            orientation = int(image.getexif().get(0x0112, 1))
        except Exception:  # a malformed EXIF block should not make the pixels unreadable
            orientation = 1
        rgb = _to_rgb(image)
        if rgb is image:
            rgb = image.copy()  # detach from the file handle closed by the with-block
    transpose = _EXIF_ORIENTATION.get(orientation)
    if transpose is not None:
        rgb = rgb.transpose(transpose)
    return rgb


# ----------------------------------------------------------------------------------------------------------------
# Seeds
# ----------------------------------------------------------------------------------------------------------------


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _epoch_key(seed: int, epoch: int) -> np.uint64:
    key = _splitmix64(np.array([seed & _MASK64], dtype=np.uint64))
    return _splitmix64(key ^ np.uint64(epoch & _MASK64))[0]


def _sample_seeds(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """63-bit non-negative seeds for ``indices`` (int64 array) in ``epoch``."""
    mixed = _splitmix64(indices.astype(np.uint64) ^ _epoch_key(seed, epoch))
    return (mixed >> np.uint64(1)).astype(np.int64)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` of a run seeded with ``seed``.

    A splitmix64 hash of ``(seed, epoch, index)``, well mixed, in ``[0, 2**63)``.
    """
    return int(_sample_seeds(seed, epoch, np.array([index], dtype=np.int64))[0])


# ----------------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------------


class _PathArray:
    """Immutable list of strings stored as one bytes buffer + offsets.

    A Python list of millions of ``str`` objects gets copied page by page in every DataLoader worker (reference
    counts are written on access); numpy buffers are not, so worker memory stays flat on ImageNet-size folders.
    """

    def __init__(self, items: Sequence[str]) -> None:
        encoded = [os.fsencode(item) for item in items]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        return os.fsdecode(self._buffer[start:end].tobytes())


@contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seeds torch's CPU RNG, Python's ``random`` and NumPy's global RNG from ``seed`` (the random transforms draw
    from them: timm's RandAugment picks its operations with NumPy); restores their previous states on exit, so a
    ``num_workers=0`` loader does not disturb the training process's streams."""
    torch_state, python_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    try:
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class LabeledFiles(Dataset):
    """What image and video data sets share: a list of files (stored compactly), one label each (-1 = unlabeled)
    and the class names. Subclasses call :meth:`_set_files` and implement ``__getitem__``."""

    def _set_files(
        self,
        scan: Callable[[str], tuple[list[str], list[int], list[str]]],
        files: Sequence[str] | None,
        labels: Sequence[int] | None,
        classes: Sequence[str] | None,
    ) -> None:
        """Use ``files`` / ``labels`` / ``classes`` when given, else ``scan(self.root)``."""
        if files is None:
            files, scanned_labels, scanned_classes = scan(self.root)
            labels = scanned_labels if labels is None else labels
            classes = scanned_classes if classes is None else classes
        if labels is None:
            labels = [-1] * len(files)
        if len(labels) != len(files):
            raise DataError(f"{len(files)} files but {len(labels)} labels for {self.root}")
        self._paths = _PathArray(list(files))
        self._labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.classes: list[str] = list(classes) if classes is not None else []

    # Public views (lists are built on demand: keep them out of hot loops on large data sets).
    @property
    def files(self) -> list[str]:
        """File paths, in index order."""
        return [self._paths[i] for i in range(len(self._paths))]

    @property
    def labels(self) -> list[int]:
        """Labels, in index order (-1 = unlabeled)."""
        return self._labels.tolist()

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for an unlabeled source)."""
        if self.classes:
            return len(self.classes)
        return int(self._labels.max()) + 1 if len(self._labels) and self._labels.max() >= 0 else 0

    def __len__(self) -> int:
        return len(self._paths)


class ImageDataset(LabeledFiles):
    """Images of a folder (ImageFolder or flat layout), augmented with a per-sample seed.

    ``dataset[(index, sample_seed)]`` decodes file ``index`` with :func:`load_rgb`, then applies ``transform``
    with torch's CPU RNG and Python's ``random`` seeded from ``sample_seed`` (their previous states are restored
    afterwards, so a ``num_workers=0`` loader does not disturb the training process's RNG streams).
    ``dataset[index]`` uses ``sample_seed = index``.

    Args:
        root: folder scanned with :func:`scan_image_folder` when ``files`` is not given (also used in messages).
        transform: maps an RGB PIL image to a float tensor ``(3, H, W)``.
        files: explicit list of image paths (skips the scan).
        labels: one label per file (default: -1 for all).
        classes: class names, when ``files`` is given and labels refer to named classes.

    Items are ``{"image": FloatTensor (3, H, W), "label": int (-1 if unlabeled), "seed": int}``, or
    ``{"unreadable": path}`` when the file cannot be decoded (a one-line warning naming the file is logged on the
    ``maskfeat`` logger; the collate function drops and counts it).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Image.Image], torch.Tensor],
        files: Sequence[str] | None = None,
        labels: Sequence[int] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.root = os.fspath(root)
        self.transform = transform
        self._set_files(scan_image_folder, files, labels, classes)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        if isinstance(key, (tuple, list)):
            index, seed = int(key[0]), int(key[1])
        else:
            index = int(key)
            seed = index
        path = self._paths[index]
        try:
            image = load_rgb(path)
        except MemoryError:
            raise
        except Exception as exc:  # any decoder failure on one file must not stop a long run
            # PIL repeats the path in some messages ("cannot identify image file '/x.jpg'"): name it once.
            reason = str(exc).replace(repr(path), "").replace(path, "")
            reason = " ".join(reason.split()) or type(exc).__name__
            logger.warning("skipped unreadable image %s: %s", path, reason)
            return {"unreadable": path}

        with seeded_rngs(seed):
            tensor = self.transform(image)
        return {"image": tensor, "label": int(self._labels[index]), "seed": seed}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root!r}, images={len(self)}, classes={len(self.classes)})"


# ----------------------------------------------------------------------------------------------------------------
# Sampler
# ----------------------------------------------------------------------------------------------------------------


class SeededSampler(Sampler):
    """Shuffling, sharding, resumable sampler that yields ``(index, sample_seed)`` keys for :class:`ImageDataset`.

    The order of an epoch is ``torch.randperm`` with a generator seeded from ``(seed, epoch)`` only; it is split
    across ranks as ``torch.utils.data.DistributedSampler`` does (rank ``r`` takes positions ``r, r + W, ...``;
    without ``drop_last`` the order is padded by repeating its start so every rank gets the same count, with it
    the tail is dropped). ``sample_seed`` is :func:`sample_seed` of ``(seed, epoch, index)``.

    Call :meth:`set_epoch` before each epoch. To resume mid-epoch call :meth:`set_start` with the number of
    samples this rank had already consumed, after :meth:`set_epoch`; the next :meth:`set_epoch` resets it to 0.

    Args:
        num_samples: size of the data set.
        seed: base seed of the run.
        shuffle: random order (else ``0..num_samples-1``; seeds still vary by epoch).
        rank: this process's rank.
        world_size: number of processes.
        drop_last: drop the tail instead of padding so ranks get equal counts.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} for world_size {world_size}")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0
        if drop_last:
            self.per_rank = self.num_samples // world_size
        else:
            self.per_rank = math.ceil(self.num_samples / world_size)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch (its order and seeds) and resets the resume position to 0."""
        self.epoch = int(epoch)
        self.start = 0

    def set_start(self, position: int) -> None:
        """Skips the first ``position`` samples of this rank's sequence for the current epoch."""
        if not 0 <= position <= self.per_rank:
            raise ValueError(f"start position {position} outside 0..{self.per_rank}")
        self.start = int(position)

    def rank_indices(self) -> np.ndarray:
        """This rank's full index sequence for the current epoch (before :meth:`set_start`), int64 ``(per_rank,)``."""
        n = self.num_samples
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(int(_epoch_key(self.seed, self.epoch) >> np.uint64(1)))
            order = torch.randperm(n, generator=generator).numpy()
        else:
            order = np.arange(n, dtype=np.int64)
        total = self.per_rank * self.world_size
        if total > n and n > 0:  # pad by repeating the start, as DistributedSampler does
            order = np.resize(order, total)
        order = order[:total]
        return order[self.rank : total : self.world_size].astype(np.int64)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self.rank_indices()[self.start :]
        seeds = _sample_seeds(self.seed, self.epoch, indices)
        return iter(zip(indices.tolist(), seeds.tolist()))

    def __len__(self) -> int:
        return self.per_rank - self.start
