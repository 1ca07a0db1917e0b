"""Video clip transforms: the MaskFeat / SlowFast Kinetics training augmentation and multi-view evaluation crops.

Every transform takes a decoded clip as a uint8 tensor ``(T, H, W, 3)`` (what :func:`maskfeat.data.video.decode_clip`
returns) and works on it as one batch ``(T, 3, H, W)`` with torchvision.transforms.v2 kernels: one parameter draw per
clip, so the crop, scale and flip are identical on every frame. The ``(T, 3, H, W)`` view of the decoded buffer is
channels-last in memory, which is the layout torch's uint8 resampling kernels are fastest on; no per-frame PIL.
Outputs are float32, normalised with the ImageNet mean and std, in the model's layout ``(3, T, H, W)``.

The randomness comes from torch's global RNG, which :class:`maskfeat.data.video.VideoDataset` seeds per sample.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import InterpolationMode, RandomErasing
from torchvision.transforms.v2 import functional as F

from .transforms import NormalizeUint8, size_pair

# The normalisation of clips: SlowFast's DATA.MEAN / DATA.STD, which its MaskFeat Kinetics recipes keep (images use
# ImageNet's, as timm). Converted official video models expect their inputs normalised so.
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)

__all__ = [
    "NormalizeVideoUint8",
    "VideoEvalTransform",
    "VideoTrainTransform",
    "erase_clip",
    "spatial_crop_offsets",
]

_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def _interpolation(name: str) -> InterpolationMode:
    try:
        return _INTERPOLATION[name]
    except KeyError:
        raise ValueError(f"unknown interpolation {name!r}; valid: {', '.join(_INTERPOLATION)}") from None


def _as_frames(clip: torch.Tensor) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 -> ``(T, 3, H, W)`` view (channels-last memory), validating the input."""
    if clip.dim() != 4 or clip.shape[-1] != 3:
        raise ValueError(f"expected a clip of shape (T, H, W, 3), got {tuple(clip.shape)}")
    if clip.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 clip, got {clip.dtype}")
    return clip.permute(0, 3, 1, 2)


class NormalizeVideoUint8(NormalizeUint8):
    """uint8 frames ``(T, 3, H, W)`` in 0..255 -> float32 ``(3, T, H, W)``, ``(x / 255 - mean) / std`` per channel
    (:class:`~maskfeat.data.transforms.NormalizeUint8` on the clip in the model's layout)."""

    spatial_dims = 3

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        # Transpose while still uint8 (4x less memory traffic than transposing floats), then one fused sub-mul.
        return super().__call__(frames.permute(1, 0, 2, 3).contiguous())


class VideoTrainTransform:
    """MaskFeat Kinetics training augmentation: short-side jitter + random resized crop + flip + normalise.

    Per clip, one draw (torch's global RNG): a short side ``s ~ U{short_side[0]..short_side[1]}`` (the frame is
    conceptually resized so that its short side is ``s``), then on that jittered frame a crop box whose area is
    ``U(scale)`` of the frame and whose aspect ratio is log-uniform in ``ratio`` (torchvision's ``RandomResizedCrop``
    sampling: 10 tries, then a centre crop clamped to ``ratio``), resized to ``crop_size``; then a horizontal flip
    with probability ``hflip``. With ``scale=None`` the box is a plain ``crop_size`` square at a uniform position on
    the jittered frame (SlowFast's classic short-side-jitter + random-crop recipe).

    The jitter resize and the crop resize are fused into one resampling: the box drawn on the jittered frame is mapped
    back to the source frame and resized from there directly, which gives the same geometry with one interpolation
    instead of two (sharper and cheaper). The same box and flip apply to every frame of the clip.

    Args:
        crop_size: output side (or ``(height, width)``).
        short_side: inclusive range of the jittered short side, in pixels.
        scale: range of the crop's area relative to the jittered frame, or None for a fixed ``crop_size`` crop.
        ratio: range of the crop's aspect ratio (width / height).
        hflip: probability of a horizontal flip.
        interpolation: "bilinear" (SlowFast's choice, the default) or "bicubic"; antialiased when downsampling.
        mean: normalisation mean (RGB, 0..1 scale).
        std: normalisation std.
        auto_augment: timm RandAugment spec (e.g. ``rand-m7-n4-mstd0.5-inc1``, the MViTv2/MaskFeat Kinetics
            fine-tuning recipe) applied **consistently across the clip's frames**: one draw of operations,
            magnitudes and signs per clip, replayed on every frame. None = off (pre-training).
        reprob: probability of random erasing (fine-tuning): one box per clip, the same in every frame (a cube),
            filled with per-pixel normal noise in the normalised space (timm's ``pixel`` mode); see :func:`erase_clip`.

    Call with a uint8 clip ``(T, H, W, 3)``; returns float32 ``(3, T, crop_h, crop_w)``.
    """

    def __init__(
        self,
        crop_size: int | Sequence[int] = 224,
        short_side: tuple[int, int] = (256, 320),
        scale: tuple[float, float] | None = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        interpolation: str = "bilinear",
        mean: Sequence[float] = KINETICS_MEAN,
        std: Sequence[float] = KINETICS_STD,
        auto_augment: str | None = None,
        reprob: float = 0.0,
    ) -> None:
        self.size = size_pair(crop_size)
        lo, hi = int(short_side[0]), int(short_side[1])
        if not 0 < lo <= hi:
            raise ValueError(f"short_side must be a range 0 < min <= max, got {short_side}")
        self.short_side = (lo, hi)
        if scale is not None and not 0.0 < float(scale[0]) <= float(scale[1]):
            raise ValueError(f"scale must be a range 0 < min <= max, got {scale}")
        self.scale = None if scale is None else (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = float(hflip)
        self.interpolation = interpolation
        self._mode = _interpolation(interpolation)
        self.normalize = NormalizeVideoUint8(mean, std)
        self.auto_augment = auto_augment
        self.rand_augment = None
        if auto_augment:
            from timm.data.auto_augment import rand_augment_transform

            hparams = {"translate_const": int(min(self.size) * 0.45),
                       "img_mean": tuple(min(255, round(255 * m)) for m in mean)}  # fmt: skip
            self.rand_augment = rand_augment_transform(auto_augment, hparams)
        if not 0.0 <= reprob <= 1.0:
            raise ValueError(f"reprob must be in [0, 1], got {reprob}")
        self.reprob = float(reprob)
        # timm's RandomErasing defaults (area 2%-1/3, aspect 0.3-3.3, 10 tries), per-pixel noise; None when off.
        self.erasing = RandomErasing(self.reprob, (0.02, 1 / 3), (0.3, 1 / 0.3), "random") if self.reprob > 0 else None

    def get_params(self, height: int, width: int) -> tuple[int, int, int, int, bool]:
        """Draws one clip's parameters from torch's global RNG.

        Args:
            height: source frame height.
            width: source frame width.

        Returns:
            ``(top, left, box_height, box_width, flip)``: the crop box in source-frame pixels and the flip decision.
        """
        side = int(torch.randint(self.short_side[0], self.short_side[1] + 1, (1,)).item())
        factor = side / min(height, width)  # source -> jittered frame
        jit_h, jit_w = max(1, round(height * factor)), max(1, round(width * factor))
        if self.scale is None:
            box_h, box_w = min(self.size[0], jit_h), min(self.size[1], jit_w)
            top = int(torch.randint(0, jit_h - box_h + 1, (1,)).item())
            left = int(torch.randint(0, jit_w - box_w + 1, (1,)).item())
        else:
            frame = torch.empty(1, 1, 1).expand(1, jit_h, jit_w)  # get_params reads only the size
            top, left, box_h, box_w = RandomResizedCrop.get_params(frame, list(self.scale), list(self.ratio))
        flip = bool(torch.rand(1).item() < self.hflip)
        # Map the box back to the source frame (float edges rounded, then clamped inside the frame).
        y0, x0 = round(top / factor), round(left / factor)
        y1, x1 = round((top + box_h) / factor), round((left + box_w) / factor)
        y0, x0 = min(max(y0, 0), height - 1), min(max(x0, 0), width - 1)
        y1, x1 = min(max(y1, y0 + 1), height), min(max(x1, x0 + 1), width)
        return y0, x0, y1 - y0, x1 - x0, flip

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        frames = _as_frames(clip)
        top, left, box_h, box_w, flip = self.get_params(frames.shape[-2], frames.shape[-1])
        out = F.resized_crop(
            frames, top, left, box_h, box_w, list(self.size), interpolation=self._mode, antialias=True
        ).as_subclass(torch.Tensor)
        if flip:
            out = out.flip(-1)
        if self.rand_augment is not None:
            out = self._rand_augment_clip(out)
        out = self.normalize(out)
        if self.erasing is not None:
            out = erase_clip(out, self.erasing)
        return out

    def _rand_augment_clip(self, frames: torch.Tensor) -> torch.Tensor:
        """timm's RandAugment on every frame of a uint8 ``(T, 3, H, W)`` clip with the same draws: it picks its
        operations with NumPy and its probabilities, magnitudes and signs with Python's ``random``, never from the
        pixels, so replaying both generators' states per frame replays the same operations."""
        py_state, np_state = random.getstate(), np.random.get_state()
        out = []
        for frame in frames:
            random.setstate(py_state)
            np.random.set_state(np_state)
            image = self.rand_augment(Image.fromarray(frame.permute(1, 2, 0).numpy()))
            out.append(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        return torch.stack(out)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(crop_size={self.size}, short_side={self.short_side}, scale={self.scale}, "
            f"ratio={self.ratio}, hflip={self.hflip}, interpolation={self.interpolation}, "
            f"auto_augment={self.auto_augment!r}, reprob={self.reprob})"
        )


def erase_clip(clip: torch.Tensor, erasing: RandomErasing) -> torch.Tensor:
    """torchvision's ``RandomErasing`` on a normalised clip ``(C, T, H, W)``, as a ``tv_tensors.Video``: with its
    probability, one box (the same in every frame: a cube) filled with its values (``"random"``: per-pixel standard
    normal noise, the same in every frame). Returns the clip, erased or not, in the same layout."""
    video = tv_tensors.Video(clip.transpose(0, 1))  # (T, C, H, W)
    return erasing(video).as_subclass(torch.Tensor).transpose(0, 1)


def spatial_crop_offsets(length: int, size: int, num_crops: int) -> list[int]:
    """Offsets of ``num_crops`` crops of ``size`` spread uniformly along a side of ``length``.

    One crop is centred (``round((length - size) / 2)``, torchvision's centre crop); for several crops the first
    touches the start, the last the end and the others are evenly spaced between (for 3: SlowFast's
    left/centre/right, or top/centre/bottom).

    Args:
        length: side length, ``>= size``.
        size: crop side.
        num_crops: number of crops, ``>= 1``.

    Returns:
        ``num_crops`` offsets, non-decreasing.
    """
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    free = max(length - size, 0)
    if num_crops == 1:
        return [int(round(free / 2.0))]
    return [int(round(i * free / (num_crops - 1))) for i in range(num_crops)]


class VideoEvalTransform:
    """Deterministic evaluation views: short-side resize to the crop size, then ``num_crops`` spatial crops.

    The short side is resized to ``crop_size`` (SlowFast's test-time scale for Kinetics: ``TEST_CROP_SIZE``); the
    crops are square and spread along the long side with :func:`spatial_crop_offsets` (3 crops: left/centre/right
    for landscape frames, top/centre/bottom for portrait ones; 1 crop: the centre).

    Args:
        crop_size: output side.
        num_crops: spatial views per clip.
        interpolation: "bilinear" (default) or "bicubic"; antialiased.
        mean: normalisation mean (RGB, 0..1 scale).
        std: normalisation std.

    Call with a uint8 clip ``(T, H, W, 3)``; returns float32 ``(num_crops, 3, T, crop_size, crop_size)``
    (views in the order of their offsets).
    """

    def __init__(
        self,
        crop_size: int = 224,
        num_crops: int = 1,
        interpolation: str = "bilinear",
        mean: Sequence[float] = KINETICS_MEAN,
        std: Sequence[float] = KINETICS_STD,
    ) -> None:
        if int(crop_size) < 1:
            raise ValueError(f"crop_size must be >= 1, got {crop_size}")
        if int(num_crops) < 1:
            raise ValueError(f"num_crops must be >= 1, got {num_crops}")
        self.crop_size = int(crop_size)
        self.num_crops = int(num_crops)
        self.interpolation = interpolation
        self._mode = _interpolation(interpolation)
        self.normalize = NormalizeVideoUint8(mean, std)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        frames = _as_frames(clip)
        height, width = frames.shape[-2:]
        size = self.crop_size
        # Short side -> crop_size; the long side keeps the aspect ratio (at least crop_size).
        if height <= width:
            new_h, new_w = size, max(size, round(width * size / height))
        else:
            new_h, new_w = max(size, round(height * size / width)), size
        resized = F.resize(frames, [new_h, new_w], interpolation=self._mode, antialias=True).as_subclass(torch.Tensor)
        views = []
        if new_w >= new_h:
            for x in spatial_crop_offsets(new_w, size, self.num_crops):
                views.append(self.normalize(resized[..., :, x : x + size]))
        else:
            for y in spatial_crop_offsets(new_h, size, self.num_crops):
                views.append(self.normalize(resized[..., y : y + size, :]))
        return torch.stack(views)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(crop_size={self.crop_size}, num_crops={self.num_crops}, "
            f"interpolation={self.interpolation})"
        )
