"""Image files: robust decoding into 8-bit RGB and a seeded image data set.

The sources (folder scanning, :class:`~maskfeat.data.sources.LabeledFiles`) live in :mod:`maskfeat.data.sources`, the
seeded sampler in :mod:`maskfeat.data.sampler`; their names are re-exported here, where they were first defined.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from .sampler import SeededSampler, sample_seed, seeded_rngs
from .sources import IMAGE_EXTENSIONS, DataError, LabeledFiles, find_files, scan_folder, scan_image_folder

__all__ = [
    "IMAGE_EXTENSIONS",
    "MEAN_RGB_UINT8",
    "DataError",
    "ImageDataset",
    "LabeledFiles",
    "SeededSampler",
    "find_files",
    "load_rgb",
    "sample_seed",
    "scan_folder",
    "scan_image_folder",
    "seeded_rngs",
]

logger = logging.getLogger("maskfeat")

#: Background that transparent pixels are composited over: the ImageNet mean colour, so they normalise to ~0.
MEAN_RGB_UINT8: tuple[int, int, int] = (124, 116, 104)


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
        index, seed = self._split_key(key)
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
