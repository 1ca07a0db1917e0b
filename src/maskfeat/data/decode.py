"""Decoding video frames behind one small reader interface (:class:`~maskfeat.data.probe.FrameReader`).

:func:`open_reader` picks the backend: PyAV (:mod:`maskfeat.data.pyav_reader`, the default) or the optional torchcodec
(:mod:`maskfeat.data.torchcodec_reader`). Both return exactly the frames a full decode from the start gives at the
requested indices (see :mod:`maskfeat.data.probe` for what a frame index is and when a file counts as damaged).
:func:`probe_video`, :func:`decode_frames` and :func:`decode_clip` are the functional entry points; a truncated or
damaged file gives what can be read, with a warning once per file naming it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from .clips import clip_indices, fit_and_warn
from .logs import warn_once
from .probe import DAMAGED_BELOW, FrameReader, VideoInfo, damaged
from .pyav_reader import PyAVReader
from .torchcodec_reader import TorchCodecReader, torchcodec_available

__all__ = [
    "BACKENDS",
    "DAMAGED_BELOW",
    "FrameReader",
    "VideoInfo",
    "check_backend",
    "damaged",
    "decode_clip",
    "decode_frames",
    "open_reader",
    "probe_video",
    "torchcodec_available",
]

#: Valid ``backend`` values.
BACKENDS = ("pyav", "torchcodec", "auto")
# Containers whose packets carry real presentation timestamps. torchcodec indexes frames by timestamp; an AVI has
# none (FFmpeg makes them up from packet order), and on an MPEG-4 AVI with packed B-frames torchcodec's frame i is
# not the i-th displayed frame and its last frame fails to decode (tests/test_video_data.py): "auto" keeps PyAV,
# which counts frames in the decoder's output order, for every other container.
TORCHCODEC_CONTAINERS = (".mp4", ".m4v", ".mov", ".mkv", ".webm")


def check_backend(backend: str) -> None:
    """Raises ValueError (one line) for an unknown backend."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; valid: {', '.join(BACKENDS)}")


def open_reader(path: str, backend: str = "pyav", threads: int = 1) -> FrameReader:
    """A reader of ``path``: PyAV, torchcodec, or ("auto") torchcodec when usable for a timestamped container.

    Args:
        path: video file.
        backend: "pyav", "torchcodec" or "auto".
        threads: decoder threads; 1 = single-threaded, 0 = FFmpeg's choice, N = N threads.

    Raises:
        DataError, av.error.FFmpegError, OSError: unreadable file or no video stream.
    """
    check_backend(backend)
    timestamped = os.fspath(path).lower().endswith(TORCHCODEC_CONTAINERS)
    if backend == "torchcodec" or (backend == "auto" and timestamped and torchcodec_available()):
        return TorchCodecReader(path, threads)
    return PyAVReader(path, threads)


def _warn_if_damaged(info: VideoInfo) -> None:
    reason = damaged(info)
    if reason:
        warn_once(info.path, "damaged", "video %s is %s; using the frames that can be read", info.path, reason)


def probe_video(path: str | os.PathLike[str], backend: str = "pyav") -> VideoInfo:
    """Frame count, frame rate, duration, size and codec of a video file (demuxes the file; decodes nothing).

    Args:
        path: video file.
        backend: "pyav" (default), "torchcodec" (optional dependency) or "auto" (torchcodec when usable, for MP4,
            MOV, MKV and WebM; PyAV otherwise).

    Returns:
        A :class:`~maskfeat.data.probe.VideoInfo`.

    Raises:
        DataError, av.error.FFmpegError, OSError: unreadable file or no video stream.
    """
    return open_reader(os.fspath(path), backend).info


def decode_frames(
    path: str | os.PathLike[str], indices: Sequence[int] | np.ndarray, *, threads: int = 1, backend: str = "pyav"
) -> torch.Tensor:
    """Decodes the frames at ``indices`` of a video (see :mod:`maskfeat.data.probe` for what a frame index is).

    Args:
        path: video file.
        indices: frame indices in ``[0, num_frames)``, any order, repeats allowed.
        threads: decoder threads; 1 (default) = single-threaded, 0 = FFmpeg's choice, N = N threads.
        backend: "pyav", "torchcodec" or "auto".

    Returns:
        uint8 tensor ``(len(indices), H, W, 3)``, RGB.
    """
    reader = open_reader(os.fspath(path), backend, threads)
    _warn_if_damaged(reader.info)
    return reader.get_frames(indices)


def decode_clip(
    path: str | os.PathLike[str],
    num_frames: int = 16,
    stride: int = 4,
    start: int | float | None = None,
    *,
    threads: int = 1,
    backend: str = "pyav",
) -> torch.Tensor:
    """Decodes one clip of ``num_frames`` frames ``stride`` frames apart.

    The file is decoded up to the clip's last frame, giving exactly the frames a full decode would give at those
    indices. A video too short for ``num_frames x stride`` gets a lowered stride or loops (see
    :func:`~maskfeat.data.clips.fit_clip_stride`), with a warning once per file naming it. A truncated or damaged
    file (:func:`~maskfeat.data.probe.damaged`) gives a clip of the frames that can be read, with a warning once per
    file naming it.

    Args:
        path: video file.
        num_frames: frames per clip (``T``).
        stride: distance between consecutive clip frames, in frames of the file.
        start: first frame: an ``int`` frame index, a ``float`` time in seconds from the first frame (the frame shown
            at that time), or None for frame 0. Clamped so that the clip lies inside the video.
        threads: decoder threads; 1 (default) = single-threaded, 0 = FFmpeg's choice, N = N threads.
        backend: "pyav" (default), "torchcodec" (optional dependency) or "auto".

    Returns:
        uint8 tensor ``(T, H, W, 3)``, RGB.

    Raises:
        DataError, av.error.FFmpegError, OSError: unreadable file.
    """
    path = os.fspath(path)
    reader = open_reader(path, backend, threads)
    _warn_if_damaged(reader.info)
    total = reader.info.num_frames
    if start is None:
        first = 0
    elif isinstance(start, (float, np.floating)):
        first = reader.ordinal_at(float(start))
    else:
        first = int(start)
    fit_and_warn(path, total, num_frames, stride)
    return reader.get_frames(clip_indices(total, num_frames, stride, first))
