"""What a video file holds: :class:`VideoInfo`, the length its header declares, the damaged-file rule, and the small
interface every decoding backend implements (:class:`FrameReader`).

Frame indices. Frame ``i`` of a file is the ``i``-th frame its decoder outputs when the whole file is decoded from the
start (presentation order); every backend returns exactly those frames.

Damaged files. A file whose readable frames fall well short of what its container declares is truncated or damaged
(a download or copy cut short keeps the header that states the full length): :func:`damaged` names it when fewer than
:data:`DAMAGED_BELOW` (90%) of the declared frames can be read. "Declared" is the frame count the container records
(MP4, MOV, AVI), else its recorded duration (Matroska / WebM: the stream's duration, its ``DURATION`` tag or the
container's duration), compared with the time the readable frames cover; "readable" is the frames the probe can
demux, and, once a clip runs past the last frame the decoder gives, the frames it decoded. Both backends read the
declared length from the container header with PyAV (:func:`declared_length_of`), so the rule is the same whichever
decodes. A file missing only its last few frames (under 10%) is not damaged: a clip that reaches them repeats the
last decoded frame, with a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import av
import numpy as np
import torch

__all__ = ["DAMAGED_BELOW", "FrameReader", "VideoInfo", "damaged", "declared_length", "declared_length_of"]


@dataclass(frozen=True)
class VideoInfo:
    """What a probe of a video file found.

    Attributes:
        path: the file.
        num_frames: frames in the video stream (video packets holding data; exact for every real container).
        fps: average frame rate (the stream's ``average_rate``, else derived from the timestamps); 0.0 if unknown.
        duration: seconds (from the first frame's pts to the last's, plus one frame), 0.0 if unknown.
        width: frame width in pixels (from the stream header).
        height: frame height in pixels.
        codec: decoder name, e.g. ``"h264"``.
        seekable: the packets carry distinct timestamps (frames can be found by time).
        num_keyframes: keyframes found by the probe.
        declared_frames: frame count the container's header records (MP4, MOV, AVI); 0 if it records none.
        declared_duration: seconds the container's header records for the video (stream duration, Matroska
            ``DURATION`` tag, else the container's duration); 0.0 if none. ``num_frames`` and ``duration`` are what
            can be read; a truncated file keeps declaring its full length (see :func:`damaged`).
    """

    path: str
    num_frames: int
    fps: float
    duration: float
    width: int
    height: int
    codec: str
    seekable: bool
    num_keyframes: int
    declared_frames: int = 0
    declared_duration: float = 0.0


#: A file is damaged when fewer than this share of the frames its container declares can be read.
DAMAGED_BELOW = 0.9


def declared_length(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> tuple[int, float]:
    """``(frames, seconds)`` that the header of ``container`` declares for ``stream`` (0 where it records none)."""
    frames = int(stream.frames or 0)
    if stream.duration and stream.time_base:
        return frames, float(stream.duration * stream.time_base)
    tag = (stream.metadata or {}).get("DURATION", "")  # Matroska / WebM, "HH:MM:SS.nnnnnnnnn"
    try:
        hours, minutes, seconds = tag.split(":")
        return frames, int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        pass
    return frames, (container.duration / av.time_base if container.duration and container.duration > 0 else 0.0)


def declared_length_of(path: str) -> tuple[int, float]:
    """:func:`declared_length` of a file's first video stream (reads the header only); (0, 0.0) if unreadable."""
    try:
        with av.open(path) as container:
            return declared_length(container, container.streams.video[0])
    except (av.error.FFmpegError, OSError, IndexError):
        return 0, 0.0


def damaged(info: VideoInfo, decoded: int | None = None) -> str | None:
    """Why a video file looks truncated or damaged, or None when it does not.

    The rule (see the module docstring): damaged when the readable frames are fewer than :data:`DAMAGED_BELOW`
    (90%) of what the container declares: its frame count when it records one, else its duration, compared with the
    time the readable frames cover. ``decoded``, the number of frames a decode from the start produced before the
    stream ended, is held against ``max(declared, demuxed)`` frames (damaged data inside a file whose index is intact).

    Args:
        info: the probe of the file (:func:`probe_video`).
        decoded: frames the decoder gave over the whole file, when known.

    Returns:
        A one-line reason (without the path), or None.
    """
    frames, seconds = info.declared_frames, info.declared_duration
    if frames and info.num_frames < DAMAGED_BELOW * frames:
        return f"truncated or damaged: {info.num_frames} of the {frames} frames its container declares can be read"
    if not frames and seconds > 0 and info.duration < DAMAGED_BELOW * seconds:
        about = f" (about {round(seconds * info.fps)} frames)" if info.fps > 0 else ""
        return (f"truncated or damaged: its container declares {seconds:.1f} s{about}, the {info.num_frames} "
                f"frames that can be read cover {info.duration:.1f} s")  # fmt: skip
    expected = max(frames, info.num_frames)
    if decoded is not None and decoded < DAMAGED_BELOW * expected:
        return f"damaged: {decoded} of its {expected} frames can be decoded"
    return None


class FrameReader(Protocol):
    """Reads frames of one video file by index; built by :func:`maskfeat.data.decode.open_reader`.

    Attributes:
        info: the probe of the file, read when the reader is built.
    """

    info: VideoInfo

    def ordinal_at(self, seconds: float) -> int:
        """Index of the frame shown at ``seconds`` after the first frame, clamped to ``[0, num_frames)``."""
        ...

    def get_frames(self, indices: Sequence[int] | np.ndarray, strict: bool = False) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 ``(len(indices), H, W, 3)``, RGB; ``strict``
        raises :class:`maskfeat.data.sources.DataError` where the decoder gives too few frames for a sound file."""
        ...
