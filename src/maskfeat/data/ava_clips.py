"""AVA clips: per keyframe a clip centred on it, decoded from its video, with its boxes moved as the frames are.

Training (:class:`BoxClipTransform` with ``train=True``): the official AVA recipe, short-side jitter then a random
square crop, and a horizontal flip; the boxes are cropped, scaled and flipped with the frames (and optionally
jittered first). Evaluation has two views (``detect.eval_view``): ``center``, the short side to the crop size S and
the centre S x S square (the official SlowFast "val" view, used while training), or ``full``, the short side to S
and the whole frame (the official "test" view: 16:9 frames give S x 16S/9 clips, and people at the sides stay in).
Boxes come out in pixels of the clip, clipped to it; their original [0, 1] coordinates travel with them, for the
detections file. Clips of different sizes are batched as detectron2 batches images: zero-padded (the mean colour,
after normalisation) at the bottom and right, which leaves the boxes where they are.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from .ava import Keyframe
from .clips import clip_indices
from .decode import open_reader
from .frame_folder import FrameFolderReader
from .logs import logger
from .sampler import seeded_rngs
from .video_transforms import VideoTrainTransform

__all__ = ["EVAL_VIEWS", "AvaDataset", "BoxClipTransform", "collate_detections", "flip_boxes", "pad_clips"]

EVAL_VIEWS = ("center", "full")  # the evaluation views of BoxClipTransform (detect.eval_view)


def flip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Boxes (K, 4) ``x1, y1, x2, y2`` of a frame ``width`` pixels wide, mirrored left-right."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def jitter_boxes(boxes: torch.Tensor, amount: float) -> torch.Tensor:
    """Each edge of each box (K, 4) moved by up to ``amount`` x the box's width (x) or height (y), uniformly."""
    size = torch.cat([boxes[:, 2:] - boxes[:, :2]] * 2, dim=1)
    return boxes + (torch.rand_like(boxes) * 2 - 1) * amount * size


class BoxClipTransform:
    """A uint8 clip (T, H, W, 3) and its boxes (K, 4) in [0, 1] -> float (3, T, H', W') normalised, boxes (K, 4) in
    pixels of the output clip, clipped to it. Draws from torch's global RNG (seeded per sample by the data set).

    Args:
        crop_size: S.
        train: short-side jitter in ``short_side`` + random S x S crop + flip (``hflip``); else the ``view``.
        box_jitter: training: edges moved by up to this fraction of the box's size before the crop (0 = off).
        view: evaluation: ``"center"`` (short side S, the centre S x S crop) or ``"full"`` (short side S, the long
            side in proportion rounded down to a whole pixel as the official test scaling does, no crop).
    """

    def __init__(self, crop_size: int, train: bool, short_side: tuple[int, int] = (256, 320), hflip: float = 0.5,
                 box_jitter: float = 0.0, view: str = "center") -> None:  # fmt: skip
        if view not in EVAL_VIEWS:
            raise ValueError(f"view must be one of {', '.join(EVAL_VIEWS)}, got {view!r}")
        if train and view != "center":
            raise ValueError(f"view={view!r} is an evaluation view; training takes random S x S crops")
        size = int(crop_size)
        # scale=None: a plain S x S crop of the jittered frame (SlowFast's AVA recipe), drawn as Kinetics draws it
        self.params = VideoTrainTransform(size, short_side=short_side if train else (size, size), scale=None,
                                          hflip=hflip if train else 0.0)  # fmt: skip
        self.size, self.train, self.box_jitter, self.view = size, train, float(box_jitter), view

    def _box(self, height: int, width: int) -> tuple[int, int, int, int, bool]:
        if self.train:
            return self.params.get_params(height, width)
        side = min(height, width)  # the centre square: resized to S, it is the centre crop of the short side at S
        return (height - side) // 2, (width - side) // 2, side, side, False

    def full_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H', W') of the full view of a ``height`` x ``width`` frame: short side S, long side rounded down."""
        if height <= width:
            return self.size, width * self.size // height
        return height * self.size // width, self.size

    def _crop(self, frames: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training's random crop or the centre crop: frames (T, 3, S, S), boxes in pixels of the crop."""
        top, left, box_h, box_w, flip = self._box(*frames.shape[-2:])
        out = F.resized_crop(frames, top, left, box_h, box_w, [self.size, self.size], antialias=True)  # bilinear
        out = out.as_subclass(torch.Tensor)
        if self.train and self.box_jitter > 0:
            b = jitter_boxes(b, self.box_jitter)
        b = (b - torch.tensor([left, top] * 2)) * torch.tensor([self.size / box_w, self.size / box_h] * 2)
        b = b.clamp(0, self.size)
        if flip:
            out, b = out.flip(-1), flip_boxes(b, self.size)
        return out, b

    def _full(self, frames: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole frame, short side S: frames (T, 3, H', W'), boxes scaled with it."""
        height, width = frames.shape[-2:]
        out_h, out_w = self.full_size(height, width)
        out = F.resize(frames, [out_h, out_w], antialias=True).as_subclass(torch.Tensor)  # bilinear
        b = b * torch.tensor([out_w / width, out_h / height] * 2)
        limit = torch.tensor([out_w, out_h] * 2, dtype=b.dtype)
        return out, torch.minimum(b.clamp(min=0), limit)

    def __call__(self, clip: torch.Tensor, boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        frames = clip.permute(0, 3, 1, 2)  # (T, 3, H, W)
        height, width = frames.shape[-2:]
        b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4) * torch.tensor([width, height] * 2)
        out, b = self._full(frames, b) if not self.train and self.view == "full" else self._crop(frames, b)
        return self.params.normalize(out), b


class AvaDataset(torch.utils.data.Dataset):
    """One item per keyframe: a clip of ``num_frames`` frames ``stride`` apart centred on it, and its boxes.

    ``dataset[(index, seed)]`` (keys of :class:`~maskfeat.data.sampler.SeededSampler`): ``{"image": (3, T, S, S)
    (the full view: (3, T, H', W')), "boxes": (K, 4) clip pixels, "labels": float (K, num_classes) multi-hot over
    ``classes``, "norm_boxes": (K, 4) the original [0, 1] boxes, "index": keyframe index, "seed"}``; an unreadable
    video gives ``{"unreadable": path}``.

    Args:
        keyframes: from :meth:`maskfeat.data.ava.AvaFolder.keyframes`.
        videos: ``{video_id: path}``: a video file, or a folder of extracted frames.
        classes: the label map's action ids, in output order.
        transform: a :class:`BoxClipTransform`.
        backend: the video decoder (files).
        frame_rate, frames_start: frame folders: frames per second, and the video time of the first frame (the
            official AVA frames: 30 and 900).
    """

    def __init__(self, keyframes: list[Keyframe], videos: dict[str, str], classes: list[int], num_frames: int,
                 stride: int, transform: BoxClipTransform, backend: str = "pyav", frame_rate: float = 30.0,
                 frames_start: float = 0.0) -> None:  # fmt: skip
        self.keyframes, self.videos = keyframes, videos
        self.classes = list(classes)
        self.column = {c: i for i, c in enumerate(self.classes)}
        self.num_frames, self.stride, self.transform, self.backend = int(num_frames), int(stride), transform, backend
        self.frame_rate, self.frames_start = float(frame_rate), float(frames_start)

    def __len__(self) -> int:
        return len(self.keyframes)

    def clip(self, index: int) -> torch.Tensor:
        """The uint8 clip (T, H, W, 3) centred on keyframe ``index`` (clamped inside the video, stride fitted)."""
        frame = self.keyframes[index]
        path = self.videos[frame.video_id]
        if os.path.isdir(path):
            reader = FrameFolderReader(path, self.frame_rate, self.frames_start)
        else:
            reader = open_reader(path, self.backend)
        total = reader.info.num_frames
        centre = reader.ordinal_at(float(frame.timestamp))
        start = centre - (self.num_frames // 2) * self.stride
        return reader.get_frames(clip_indices(total, self.num_frames, self.stride, start), strict=True)

    def labels(self, frame: Keyframe) -> torch.Tensor:
        out = torch.zeros(len(frame.boxes), len(self.classes))
        for k, actions in enumerate(frame.actions):
            out[k, [self.column[a] for a in actions if a in self.column]] = 1.0
        return out

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        index, seed = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), int(key))
        frame = self.keyframes[index]
        with seeded_rngs(seed):
            try:
                clip = self.clip(index)
            except MemoryError:
                raise
            except Exception as exc:  # one bad file must not stop a long run
                path = self.videos[frame.video_id]
                reason = " ".join(str(exc).split()) or type(exc).__name__
                logger.warning("skipped unreadable video %s: %s", path, reason)
                return {"unreadable": path}
            image, boxes = self.transform(clip, frame.boxes)
        return {"image": image, "boxes": boxes, "labels": self.labels(frame), "index": index, "seed": seed,
                "norm_boxes": torch.as_tensor(frame.boxes, dtype=torch.float32).reshape(-1, 4)}  # fmt: skip


def pad_clips(images: Sequence[torch.Tensor], size_divisibility: int = 1) -> torch.Tensor:
    """Clips (C, T, H_i, W_i) -> one (B, C, T, H, W), each zero-padded at the bottom and right to the largest H and
    W, rounded up to a multiple of ``size_divisibility`` (detectron2's ``ImageList``). Clips of one shape that is
    already a multiple are only stacked."""
    height = max(int(im.shape[-2]) for im in images)
    width = max(int(im.shape[-1]) for im in images)
    step = max(int(size_divisibility), 1)
    height, width = -(-height // step) * step, -(-width // step) * step
    if all(tuple(im.shape[-2:]) == (height, width) for im in images):
        return torch.stack(list(images))
    out = images[0].new_zeros(len(images), *images[0].shape[:-2], height, width)
    for padded, im in zip(out, images):
        padded[..., : im.shape[-2], : im.shape[-1]] = im
    return out


def collate_detections(batch: list[dict[str, Any] | None], size_divisibility: int = 1) -> dict[str, Any]:
    """Clips with any number of boxes each: ``{"images": (B, 3, T, H, W), "boxes": (K, 5) rows (batch index, x1, y1,
    x2, y2), "labels": (K, C), "norm_boxes": (K, 4), "index": int64 (K,) keyframe of each box, "num_bad",
    "bad_files"}``; images None when every item was unreadable. Clips of different sizes (the full view) are padded
    by :func:`pad_clips` to the largest, a multiple of ``size_divisibility`` (give the encoder's stride)."""
    items = [item for item in batch if item is not None and "image" in item]
    bad = [item["unreadable"] for item in batch if item is not None and "unreadable" in item]
    out: dict[str, Any] = {"num_bad": len(batch) - len(items), "bad_files": bad}
    if not items:
        return {**out, "images": None, "boxes": None, "labels": None}
    counts = [len(item["boxes"]) for item in items]
    batch_index = torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts)).float()
    out.update(
        images=pad_clips([item["image"] for item in items], size_divisibility),
        boxes=torch.cat([batch_index[:, None], torch.cat([item["boxes"] for item in items])], dim=1),
        labels=torch.cat([item["labels"] for item in items]),
        norm_boxes=torch.cat([item["norm_boxes"] for item in items]),
        index=torch.repeat_interleave(torch.tensor([item["index"] for item in items]), torch.tensor(counts)),
    )
    return out
