"""A folder of extracted frames read as a video: the :class:`~maskfeat.data.probe.FrameReader` interface over images.

Large video data sets are often stored as the frames an extraction wrote, one image per frame (AVA's official
layout: ``frames/<video_id>/<video_id>_000001.jpg``, extracted at 30 frames a second from each video's 15-minute
segment that starts at second 900). Frame ``k`` of such a folder is its ``k``-th image in name order (names
zero-padded as extractions write them), shown at ``start + k / fps`` seconds of the video's own time, so the
timestamps of the annotation files apply unchanged: the official AVA frames have ``fps=30, start=900``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from .probe import VideoInfo
from .sources import DataError

__all__ = ["FRAME_EXTENSIONS", "FrameFolderReader", "frame_files"]

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


@lru_cache(maxsize=256)
def frame_files(folder: str) -> tuple[str, ...]:
    """The image files of ``folder`` in name order (listed once per process: an AVA video has 27,000)."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(FRAME_EXTENSIONS))
    if not names:
        raise DataError(f"{folder}: no frames ({', '.join(FRAME_EXTENSIONS)} images)")
    return tuple(os.path.join(folder, n) for n in names)


class FrameFolderReader:
    """Reads the frames of a folder of images by index, as the video readers read a file.

    Args:
        path: the folder.
        fps: frames per second of the extraction.
        start: the video time, in seconds, of the first image.
    """

    def __init__(self, path: str, fps: float = 30.0, start: float = 0.0) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path, self.fps, self.start = os.fspath(path), float(fps), float(start)
        self.files = frame_files(self.path)
        with Image.open(self.files[0]) as first:
            width, height = first.size
        n = len(self.files)
        self.info = VideoInfo(path=self.path, num_frames=n, fps=self.fps, duration=n / self.fps, width=width,
                              height=height, codec="images", seekable=True, num_keyframes=n)  # fmt: skip

    def ordinal_at(self, seconds: float) -> int:
        """Index of the frame shown at video time ``seconds``: ``floor((seconds - start) * fps)``, clamped."""
        position = int(math.floor((float(seconds) - self.start) * self.fps + 1e-9))
        return min(max(position, 0), self.info.num_frames - 1)

    def get_frames(self, indices: Sequence[int] | np.ndarray, strict: bool = False) -> torch.Tensor:
        """Frames at ``indices`` as uint8 ``(len(indices), H, W, 3)`` RGB (each image decoded once). Every image
        must have the first one's size (DataError otherwise); ``strict`` is accepted for the interface."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError("no frame indices given")
        if idx.min() < 0 or idx.max() >= self.info.num_frames:
            raise IndexError(f"frame indices outside 0..{self.info.num_frames - 1} in {self.path}")
        decoded = {}
        for i in np.unique(idx).tolist():
            with Image.open(self.files[i]) as image:
                frame = np.asarray(image.convert("RGB"))
            if frame.shape[:2] != (self.info.height, self.info.width):
                raise DataError(f"{self.files[i]}: {frame.shape[1]}x{frame.shape[0]} pixels where the folder's first "
                                f"frame has {self.info.width}x{self.info.height}")  # fmt: skip
            decoded[i] = frame
        return torch.from_numpy(np.stack([decoded[i] for i in idx.tolist()]))
