"""Clip sampling: pure functions of a video's frame count, as in SlowFast's Kinetics loader.

A clip is ``num_frames`` frames ``stride`` frames apart (16 x 4 by default, spanning ``(num_frames - 1) * stride + 1``
frames). Training draws the start uniformly over every start that keeps the clip inside the video
(:func:`random_clip_start`); evaluation takes ``num_clips`` uniformly spaced clips (:func:`uniform_clip_starts`,
deterministic). A video shorter than the span keeps ``num_frames`` frames by lowering the stride to the largest that
fits, or, when even stride 1 does not fit (fewer frames than ``num_frames``), by looping its frames
(``0, 1, ..., n-1, 0, 1, ...``): :func:`fit_clip_stride`; :func:`fit_and_warn` logs either once per file and process.
``stride`` counts frames of the file as stored (no resampling to a target fps).
"""

from __future__ import annotations

import numpy as np
import torch

from .logs import warn_once

__all__ = [
    "clip_indices",
    "fit_and_warn",
    "fit_clip_stride",
    "random_clip_start",
    "segment_indices",
    "uniform_clip_starts",
]


def _check_clip(num_video_frames: int, num_frames: int, stride: int) -> None:
    if num_video_frames < 1:
        raise ValueError(f"the video has no frames ({num_video_frames})")
    if num_frames < 1 or stride < 1:
        raise ValueError(f"num_frames and stride must be >= 1, got {num_frames} and {stride}")


def fit_clip_stride(num_video_frames: int, num_frames: int, stride: int) -> tuple[int, bool]:
    """The stride a clip actually uses on a video of ``num_video_frames`` frames, and whether it loops.

    A clip spans ``(num_frames - 1) * stride + 1`` frames. If the video is shorter, the stride is lowered to the
    largest that fits; if even stride 1 does not fit (fewer frames than ``num_frames``), the clip loops with stride 1.

    Args:
        num_video_frames: frames in the video.
        num_frames: frames per clip.
        stride: wanted distance between consecutive clip frames.

    Returns:
        ``(stride, loop)``.
    """
    _check_clip(num_video_frames, num_frames, stride)
    if (num_frames - 1) * stride + 1 <= num_video_frames:
        return stride, False
    fitted = (num_video_frames - 1) // (num_frames - 1)  # num_frames >= 2 here
    if fitted >= 1:
        return fitted, False
    return 1, True


def _num_starts(num_video_frames: int, num_frames: int, stride: int) -> int:
    fitted, loop = fit_clip_stride(num_video_frames, num_frames, stride)
    return 1 if loop else num_video_frames - (num_frames - 1) * fitted


def clip_indices(num_video_frames: int, num_frames: int, stride: int, start: int) -> np.ndarray:
    """Frame indices of the clip that starts at frame ``start``.

    The stride is fitted with :func:`fit_clip_stride`; ``start`` is clamped to ``[0, last valid start]`` so the clip
    always lies inside the video. A looping clip (video shorter than ``num_frames``) is ``arange(num_frames) % n``.

    Args:
        num_video_frames: frames in the video (``n``).
        num_frames: frames per clip.
        stride: wanted distance between consecutive clip frames.
        start: first frame.

    Returns:
        int64 array ``(num_frames,)``, non-decreasing unless looping, all in ``[0, n)``.
    """
    fitted, loop = fit_clip_stride(num_video_frames, num_frames, stride)
    if loop:
        return np.arange(num_frames, dtype=np.int64) % num_video_frames
    last_start = num_video_frames - (num_frames - 1) * fitted - 1
    start = min(max(int(start), 0), last_start)
    return start + fitted * np.arange(num_frames, dtype=np.int64)


def random_clip_start(
    num_video_frames: int, num_frames: int, stride: int, generator: torch.Generator | None = None
) -> int:
    """Training start: uniform over every start that keeps the (stride-fitted) clip inside the video.

    Args:
        num_video_frames: frames in the video.
        num_frames: frames per clip.
        stride: wanted distance between consecutive clip frames.
        generator: torch generator (None: torch's global RNG, which :class:`maskfeat.data.video.VideoDataset` seeds
            per sample).

    Returns:
        The first frame index.
    """
    count = _num_starts(num_video_frames, num_frames, stride)
    return int(torch.randint(0, count, (1,), generator=generator).item())


def segment_indices(num_video_frames: int, num_frames: int, train: bool,
                    generator: torch.Generator | None = None) -> np.ndarray:  # fmt: skip
    """Segment sampling (Something-Something v2, as the official implementation samples it): the video is cut into
    ``num_frames`` equal segments, bounded at ``round(i * (n - 1) / num_frames)`` (NumPy's rounding, half to even),
    and one frame is taken from each: uniformly within its bounds, both included, in training; the middle
    (``(start + end) // 2``) in evaluation. The clip spans the whole video whatever its length; a video shorter than
    ``num_frames`` repeats frames.

    Args:
        num_video_frames: frames in the video, ``>= 1``.
        num_frames: frames per clip (segments).
        train: draw within the segments (torch's RNG, or ``generator``) instead of taking their middles.
        generator: torch generator (None: torch's global RNG).

    Returns:
        int64 array ``(num_frames,)``, non-decreasing, all in ``[0, n)``.
    """
    _check_clip(num_video_frames, num_frames, 1)
    size = (num_video_frames - 1) / num_frames
    bounds = np.round(size * np.arange(num_frames + 1)).astype(np.int64)
    starts, ends = bounds[:-1], bounds[1:]
    if not train:
        return (starts + ends) // 2
    offsets = torch.rand(num_frames, generator=generator, dtype=torch.float64).numpy()
    return np.minimum(starts + np.floor(offsets * (ends - starts + 1)).astype(np.int64), ends)


def uniform_clip_starts(num_video_frames: int, num_frames: int, stride: int, num_clips: int) -> list[int]:
    """Evaluation starts: ``num_clips`` clips spread uniformly over the video (SlowFast's offset sampling).

    One clip is centred (``(n - span) // 2``); several clips run from the first valid start to the last, evenly
    spaced (rounded), so together they cover the whole video.

    Args:
        num_video_frames: frames in the video.
        num_frames: frames per clip.
        stride: wanted distance between consecutive clip frames.
        num_clips: number of temporal views, ``>= 1``.

    Returns:
        ``num_clips`` start frames, non-decreasing.
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    free = _num_starts(num_video_frames, num_frames, stride) - 1
    if num_clips == 1:
        return [free // 2]
    return [int(round(i * free / (num_clips - 1))) for i in range(num_clips)]


def fit_and_warn(path: str, num_video_frames: int, num_frames: int, stride: int) -> None:
    """Warns once per file when a clip does not fit at the wanted stride, saying what is done instead."""
    fitted, loop = fit_clip_stride(num_video_frames, num_frames, stride)
    span = (num_frames - 1) * stride + 1
    kind = f"short {num_frames}x{stride}"  # once per file and clip shape (a run uses one shape)
    if loop:
        warn_once(
            path,
            kind,
            "video %s has %d frames, fewer than a %d-frame clip: looping its frames (stride 1)",
            path,
            num_video_frames,
            num_frames,
        )
    elif fitted != stride:
        warn_once(
            path,
            kind,
            "video %s has %d frames, fewer than a %dx%d clip spans (%d): stride lowered to %d",
            path,
            num_video_frames,
            num_frames,
            stride,
            span,
            fitted,
        )
