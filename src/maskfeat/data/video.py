"""Video data: source scanning, exact frame-accurate decoding with seeking, SlowFast clip sampling, a seeded dataset.

Frame indices. Frame ``i`` of a file is the ``i``-th frame its decoder outputs when the whole file is decoded from the
start (presentation order). :func:`decode_clip` returns exactly those frames while decoding only what it needs: a
probe demuxes the video packets once (no decoding, ~1% of the cost of decoding them) to learn the frame count, the
presentation timestamp (pts) of every frame and where the keyframes are; a clip is then decoded by seeking to the
last keyframe at or before its first frame (``container.seek`` on the stream's time base, ``any_frame=False``) and
decoding forward, identifying frames by their pts. Every way this could go wrong falls back to decoding from the
start and counting frames: packets without timestamps, duplicate timestamps, a decoder whose output pts disagree
with the packet order (e.g. AVI files with "packed" MPEG-4 B-frames), a seek that lands after the wanted frame.

Clip sampling follows SlowFast's Kinetics loader: a clip is ``num_frames`` frames ``stride`` frames apart (16 x 4 by
default, spanning ``(num_frames - 1) * stride + 1`` frames). Training draws the start uniformly over every start that
keeps the clip inside the video; evaluation takes ``num_clips`` uniformly spaced clips (deterministic). A video
shorter than the span keeps ``num_frames`` frames by lowering the stride to the largest that fits, or, when even
stride 1 does not fit (fewer frames than ``num_frames``), by looping its frames (``0, 1, ..., n-1, 0, 1, ...``); either
is logged once per file and process. ``stride`` counts frames of the file as stored (no resampling to a target fps).

Damaged files. A file whose readable frames fall well short of what its container declares is truncated or damaged
(a download or copy cut short keeps the header that states the full length): :func:`damaged` names it when fewer than
:data:`DAMAGED_BELOW` (90%) of the declared frames can be read. "Declared" is the frame count the container records
(MP4, MOV, AVI), else its recorded duration (Matroska / WebM: the stream's duration, its ``DURATION`` tag or the
container's duration), compared with the time the readable frames cover; "readable" is the frames the probe can
demux, and, once a clip runs past the last frame the decoder gives, the frames it decoded. Both backends read the
declared length from the container header with PyAV, so the rule is the same whichever decodes. :class:`VideoDataset`
skips such a file like an unreadable one (a warning naming it; counted as a bad sample in the batch); the functions
:func:`decode_clip` / :func:`decode_frames` warn once and return what can be read. A file missing only its last few
frames (under 10%) is not damaged: a clip that reaches them repeats the last decoded frame, with a warning.

Reproducibility: like :class:`maskfeat.data.images.ImageDataset`, :class:`VideoDataset` takes ``(index, sample_seed)``
keys from :class:`maskfeat.data.images.SeededSampler` and seeds torch's and Python's RNGs from ``sample_seed`` around
the temporal sampling and the transform, so a sample depends only on ``(seed, epoch, index)``.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from .images import DataError, LabeledFiles, _has_extension, scan_folder, seeded_rngs
from .video_transforms import VideoEvalTransform, VideoTrainTransform

__all__ = [
    "DAMAGED_BELOW",
    "VIDEO_EXTENSIONS",
    "VideoDataset",
    "VideoInfo",
    "clip_indices",
    "damaged",
    "decode_clip",
    "decode_frames",
    "fit_clip_stride",
    "probe_video",
    "random_clip_start",
    "scan_video_source",
    "torchcodec_available",
    "uniform_clip_starts",
]

logger = logging.getLogger("maskfeat")

#: Accepted video file extensions (lower case, with the dot); matching is case-insensitive.
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4",
    ".avi",
    ".mkv",
    ".webm",
    ".mov",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".ogv",
    ".flv",
    ".wmv",
)

# Header names accepted on the first line of a video list ("path,label").
_HEADER_PATH = {"path", "video", "video_path", "file", "filename"}
_HEADER_LABEL = {"label", "class", "class_name", "label_name"}
_MAX_MISSING_WARNINGS = 5

_warned: set[tuple[str, str]] = set()


def _warn_once(path: str, kind: str, message: str, *args: Any) -> None:
    """Logs ``message`` the first time this process sees ``(path, kind)`` (once per file, not once per epoch)."""
    key = (path, kind)
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


# ----------------------------------------------------------------------------------------------------------------
# Scanning
# ----------------------------------------------------------------------------------------------------------------


def _scan_video_folder(root: str) -> tuple[list[str], list[int], list[str]]:
    return scan_folder(root, VIDEO_EXTENSIONS, "video")


def _split_list_line(line: str) -> list[str]:
    """``path,label`` (CSV quoting allowed) or ``path label`` (the label is the last blank-separated token)."""
    if "," in line:
        return [field.strip() for field in next(csv.reader([line]))]
    return line.rsplit(None, 1)


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _read_video_list(list_path: str) -> tuple[list[str], list[int], list[str]]:
    """Parses a ``path,label`` / ``path label`` list; see :func:`scan_video_source`."""
    base = os.path.dirname(list_path)
    try:
        with open(list_path, encoding="utf-8-sig") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DataError(f"cannot read video list {list_path}: {reason}") from None

    entries: list[tuple[str, str | None, int]] = []  # (absolute path, label text or None, line number)
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = _split_list_line(line)
        if not entries and len(fields) == 2:
            name, label = fields[0].lower(), fields[1].lower()
            if name in _HEADER_PATH and label in _HEADER_LABEL and not os.path.exists(os.path.join(base, fields[0])):
                continue  # header line
        if len(fields) == 1:
            file, label_text = fields[0], None
        elif len(fields) == 2:
            file, label_text = fields[0], fields[1]
        else:
            raise DataError(f"{list_path}:{lineno}: expected 'path,label', got {len(fields)} fields: {line[:100]!r}")
        if not file:
            raise DataError(f"{list_path}:{lineno}: empty path: {line[:100]!r}")
        if label_text == "":
            label_text = None
        full = os.path.abspath(os.path.join(base, os.path.expanduser(file)))
        entries.append((full, label_text, lineno))
    if not entries:
        raise DataError(f"video list {list_path} has no entries")

    texts = [label for _, label, _ in entries if label is not None]
    ints = [_parse_int(text) for text in texts]
    classes: list[str] = []
    if all(value is not None for value in ints):
        # Integer labels: used as they are (-1 = unlabeled).
        for (_, label_text, lineno), value in zip((e for e in entries if e[1] is not None), ints):
            if value < -1:
                raise DataError(f"{list_path}:{lineno}: negative label {label_text!r}")
        label_of = dict(zip(texts, ints))
    else:
        # Class names (any non-integer label makes every label a name): sorted names -> 0..C-1. Built from every line,
        # missing files included, so the mapping does not depend on which files happen to be present.
        classes = sorted(set(texts))
        label_of = {name: i for i, name in enumerate(classes)}

    files: list[str] = []
    labels: list[int] = []
    missing: list[tuple[str, int]] = []
    for full, label_text, lineno in entries:
        if not os.path.isfile(full):
            missing.append((full, lineno))
            continue
        files.append(full)
        labels.append(-1 if label_text is None else label_of[label_text])
    for full, lineno in missing[:_MAX_MISSING_WARNINGS]:
        logger.warning("skipped missing video %s (listed in %s line %d)", full, list_path, lineno)
    if len(missing) > _MAX_MISSING_WARNINGS:
        logger.warning("skipped %d more missing videos listed in %s", len(missing) - _MAX_MISSING_WARNINGS, list_path)
    if not files:
        raise DataError(f"none of the {len(entries)} videos listed in {list_path} exist")
    return files, labels, classes


def scan_video_source(path: str | os.PathLike[str]) -> tuple[list[str], list[int], list[str]]:
    """Lists the videos of a source: a folder (class sub-folders or flat), a list file, or a single video.

    - A folder with sub-folders that contain video files (at any depth): each such sub-folder is a class
      (``classes`` = their sorted names, label = position in ``classes``), its videos found recursively.
    - A flat folder of video files: every label is -1 and ``classes`` is empty.
    - A list file (any name that is not a video, e.g. ``train.csv``): one video per line, ``path,label`` (CSV, quoting
      allowed) or ``path label`` (blank-separated, as in SlowFast's Kinetics lists; the label is the last token, so
      paths may contain blanks). Relative paths are relative to the list's folder. Labels are all integers (used as
      they are; -1 = unlabeled) or else class names (mapped to their index in the sorted set of names, returned as
      ``classes``). A line with only a path is unlabeled (-1). An optional header line (``path,label``), blank lines
      and ``#`` comments are skipped. Listed files that do not exist are skipped with a warning naming them.
    - A single video file: one unlabeled entry.

    Hidden files and folders (name starting with ``.``) are skipped; extensions are matched case-insensitively
    against :data:`VIDEO_EXTENSIONS` (list files are taken as they are, whatever the extension).

    Args:
        path: folder, list file or video file.

    Returns:
        ``(files, labels, classes)``: absolute paths, one label per file, class names (empty unless named).

    Raises:
        DataError: the path does not exist, holds no videos, a list line is malformed (the message names the line),
            or none of the listed files exist.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.exists(root):
        raise DataError(f"data path does not exist: {root}")
    if os.path.isdir(root):
        return _scan_video_folder(root)
    if _has_extension(os.path.basename(root), VIDEO_EXTENSIONS):
        return [root], [-1], []
    return _read_video_list(root)


# ----------------------------------------------------------------------------------------------------------------
# Clip sampling (pure functions of the frame count)
# ----------------------------------------------------------------------------------------------------------------


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
        generator: torch generator (None: torch's global RNG, which :class:`VideoDataset` seeds per sample).

    Returns:
        The first frame index.
    """
    count = _num_starts(num_video_frames, num_frames, stride)
    return int(torch.randint(0, count, (1,), generator=generator).item())


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


def _fit_and_warn(path: str, num_video_frames: int, num_frames: int, stride: int) -> None:
    """Warns once per file when a clip does not fit at the wanted stride, saying what is done instead."""
    fitted, loop = fit_clip_stride(num_video_frames, num_frames, stride)
    span = (num_frames - 1) * stride + 1
    kind = f"short {num_frames}x{stride}"  # once per file and clip shape (a run uses one shape)
    if loop:
        _warn_once(
            path,
            kind,
            "video %s has %d frames, fewer than a %d-frame clip: looping its frames (stride 1)",
            path,
            num_video_frames,
            num_frames,
        )
    elif fitted != stride:
        _warn_once(
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


# ----------------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------------


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
        seekable: the packets carry distinct timestamps, so frames can be found by pts after a seek.
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


def _declared_length(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> tuple[int, float]:
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


def _declared_length_of(path: str) -> tuple[int, float]:
    """:func:`_declared_length` of a file's first video stream (reads the header only); (0, 0.0) if unreadable."""
    try:
        with av.open(path) as container:
            return _declared_length(container, container.streams.video[0])
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


class _SeekFailed(Exception):
    """A seeking pass met something it cannot trust: redo the read decoding from the start."""


def _frames_of(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[Any]:
    """Decoded frames of ``stream`` from the container's current position, tolerating damaged data.

    A packet the decoder rejects is skipped; a demuxing error (a truncated file) ends the stream after flushing the
    frames the decoder still holds.
    """
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError:
            try:
                yield from stream.codec_context.decode(None)  # flush: frames still in the reorder buffer
            except av.error.FFmpegError:
                pass
            return
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            continue
        yield from frames


class _PyAVReader:
    """Reads frames of one file by index with PyAV: probe once (demux pass), then seek + decode per request."""

    def __init__(self, path: str, threads: int = 1, seek: bool = True) -> None:
        self.path = path
        self.threads = int(threads)
        self.seek = bool(seek)
        container = av.open(path)
        try:
            if not container.streams.video:
                raise DataError(f"no video stream in {path}")
            stream = container.streams.video[0]
            self._stream_index = stream.index
            self._probe(container, stream)
        finally:
            container.close()

    def _probe(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> None:
        pts_list: list[int | None] = []
        key_flags: list[bool] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end, or an empty (dropped-frame) chunk
                    continue
                pts_list.append(packet.pts)
                key_flags.append(bool(packet.is_keyframe))
        except av.error.FFmpegError:
            pass  # truncated or damaged after some point: the packets read so far are the video
        count = len(pts_list)
        if count == 0:
            raise DataError(f"no video frames in {self.path}")
        time_base = stream.time_base or Fraction(1, 1)
        self._index_ok = all(p is not None for p in pts_list) and len(set(pts_list)) == count
        if self._index_ok:
            pts = np.asarray(pts_list, dtype=np.int64)
            order = np.argsort(pts, kind="stable")
            self._pts = pts[order]  # presentation order
            self._ordinal_of = {int(p): i for i, p in enumerate(self._pts.tolist())}
            keys = np.sort(np.asarray([self._ordinal_of[int(p)] for p, k in zip(pts, key_flags) if k], np.int64))
            self._key_ordinals = keys
        else:
            self._pts = np.zeros(0, dtype=np.int64)
            self._ordinal_of = {}
            self._key_ordinals = np.zeros(0, dtype=np.int64)
        self._seconds_per_tick = float(time_base)

        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if self._index_ok and count > 1:
            span = float(self._pts[-1] - self._pts[0]) * self._seconds_per_tick
            if not fps > 0 and span > 0:
                fps = (count - 1) / span
            duration = span + (1.0 / fps if fps > 0 else 0.0)
        elif stream.duration:
            duration = float(stream.duration * time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            duration = count / fps if fps > 0 else 0.0
        codec = stream.codec_context
        declared_frames, declared_duration = _declared_length(container, stream)
        self.info = VideoInfo(
            path=self.path,
            num_frames=count,
            fps=fps,
            duration=duration,
            width=int(codec.width or 0),
            height=int(codec.height or 0),
            codec=str(codec.name),
            seekable=self._index_ok,
            num_keyframes=int(sum(key_flags)),
            declared_frames=declared_frames,
            declared_duration=declared_duration,
        )

    def ordinal_at(self, seconds: float) -> int:
        """Index of the frame shown at ``seconds`` after the first frame (the last frame with pts <= that time)."""
        if self._index_ok:
            times = (self._pts - self._pts[0]).astype(np.float64) * self._seconds_per_tick
            position = int(np.searchsorted(times, float(seconds) + 1e-9, side="right")) - 1
        else:
            position = int(math.floor(float(seconds) * self.info.fps + 1e-9)) if self.info.fps > 0 else 0
        return min(max(position, 0), self.info.num_frames - 1)

    def _open_decoder(self) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
        container = av.open(self.path)
        stream = container.streams[self._stream_index]
        codec = stream.codec_context
        if self.threads == 1:
            codec.thread_count = 1  # data-loader workers already run in parallel: one thread each
        else:
            codec.thread_type = "AUTO"  # frame + slice threads
            codec.thread_count = max(self.threads, 0)  # 0: FFmpeg picks
        return container, stream

    def _decode(self, needed: list[int], allow_seek: bool) -> tuple[dict[int, Any], Any, int]:
        """Decodes the frames ``needed`` (sorted, unique ordinals).

        Returns:
            ``(frames by ordinal, last decoded frame, frames decoded in all)``; ordinals missing from the dict were
            not produced before the end of the stream (only when decoding from the start).

        Raises:
            _SeekFailed: a pass that seeked saw timestamps it cannot map to frame indices.
        """
        need = set(needed)
        got: dict[int, Any] = {}
        container, stream = self._open_decoder()
        try:
            frames: Iterator[Any] | None = None
            counting = True  # from the file start: frame index = output counter; after a seek: index = rank of pts
            next_ordinal = 0  # index the decoder's next output frame should have
            last = -1
            first = True
            decoded = 0
            last_frame = None
            for target in needed:
                if target in got:
                    continue
                if allow_seek and self._index_ok and len(self._key_ordinals):
                    position = int(np.searchsorted(self._key_ordinals, target, side="right")) - 1
                    keyframe = int(self._key_ordinals[position]) if position >= 0 else 0
                    if keyframe > next_ordinal:
                        # Seeking skips decoding frames next_ordinal..keyframe-1.
                        container.seek(int(self._pts[keyframe]), stream=stream, backward=True, any_frame=False)
                        frames = _frames_of(container, stream)
                        counting, last, first = False, -1, True
                if frames is None:
                    frames = _frames_of(container, stream)
                while True:
                    frame = next(frames, None)
                    if frame is None:
                        if not counting:
                            raise _SeekFailed(f"end of stream before frame {target}")
                        return got, last_frame, decoded
                    decoded += 1
                    last_frame = frame
                    if counting:
                        ordinal = next_ordinal
                        if self._index_ok and self._ordinal_of.get(frame.pts) != ordinal:
                            self._index_ok = False  # output pts do not follow packet order: never seek in this file
                    else:
                        ordinal = self._ordinal_of.get(frame.pts, -1)
                        if ordinal <= last or (first and ordinal > target):
                            raise _SeekFailed(f"frame pts {frame.pts} after a seek to frame {target}")
                    first = False
                    last = ordinal
                    next_ordinal = ordinal + 1
                    if ordinal in need and ordinal not in got:
                        got[ordinal] = self._to_rgb(frame)
                    if ordinal >= target:
                        break
            return got, last_frame, decoded
        finally:
            container.close()

    def _to_rgb(self, frame: Any) -> np.ndarray:
        """Decoded frame -> uint8 ``(H, W, 3)`` RGB, through one swscale context kept for the whole read."""
        if self._size is None:
            self._size = (frame.width, frame.height)
        # One reformatter for all frames (frame.to_ndarray builds a scaler per frame) and single-threaded scaling
        # (swscale's default spins up threads per call): ~10x cheaper per frame, bit-identical output.
        rgb = self._reformatter.reformat(
            frame,
            width=self._size[0],  # a resolution change mid-stream is scaled back to the first frame's size
            height=self._size[1],
            format="rgb24",
            threads=self.threads,
        )
        return rgb.to_ndarray()

    def get_frames(self, indices: Sequence[int] | np.ndarray, strict: bool = False) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 ``(len(indices), H, W, 3)``.

        Frames past the last one the decoder gives are filled with that last frame (a warning once per file); when
        the decoder gave too few for the file to be sound (:func:`damaged`), ``strict`` raises :class:`DataError`
        instead (a warning once per file otherwise).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError("no frame indices given")
        if idx.min() < 0 or idx.max() >= self.info.num_frames:
            raise IndexError(f"frame indices outside 0..{self.info.num_frames - 1} in {self.path}")
        needed = np.unique(idx).tolist()
        self._size: tuple[int, int] | None = None
        self._reformatter = VideoReformatter()
        got: dict[int, Any] | None = None
        if self.seek and self._index_ok:
            try:
                got, last_frame, decoded = self._decode(needed, allow_seek=True)
            except _SeekFailed:
                got = None
        if got is None or len(got) < len(needed):
            self._size = None
            got, last_frame, decoded = self._decode(needed, allow_seek=False)
        if not got:
            if last_frame is None:
                raise DataError(f"no decodable frames in {self.path}")
            got = {}
        missing = [i for i in needed if i not in got]
        reason = damaged(self.info, decoded) if missing else None
        if reason and strict:
            raise DataError(reason)
        if reason:
            _warn_once(self.path, "damaged", "video %s is %s; using the frames that can be read", self.path, reason)
        elif missing:
            # The decoder gave a few frames fewer than the file has packets: repeat the last frame it gave.
            _warn_once(
                self.path,
                "missing",
                "video %s: decoded %d of its %d frames; repeating the last decoded frame for frames %d..",
                self.path,
                decoded,
                self.info.num_frames,
                missing[0],
            )
        if missing:
            filler = self._to_rgb(last_frame)
            for i in missing:
                got[i] = filler
        out = np.stack([got[int(i)] for i in idx])
        return torch.from_numpy(out)


@functools.cache
def torchcodec_available() -> bool:
    """Whether the optional torchcodec backend can decode here: it imports, and it decodes a tiny MPEG-4 clip made
    with PyAV in memory (torchcodec imports fine without its FFmpeg libraries, or against another PyTorch, and
    fails only when it first decodes)."""
    try:
        from torchcodec.decoders import VideoDecoder

        buffer = io.BytesIO()
        with av.open(buffer, "w", format="mp4") as container:
            stream = container.add_stream("mpeg4", rate=8)
            stream.width = stream.height = 16
            stream.pix_fmt = "yuv420p"
            for _ in range(2):
                frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        return VideoDecoder(buffer.getvalue()).get_frame_at(0).data.shape[-1] == 16
    except Exception:  # ImportError, missing FFmpeg libraries, a build for another torch
        return False


class _TorchCodecReader:
    """Reads frames by index with torchcodec (optional backend; its exact seek mode scans the file once)."""

    def __init__(self, path: str, threads: int = 1, seek: bool = True) -> None:
        from torchcodec.decoders import VideoDecoder

        self.path = path
        self._decoder = VideoDecoder(
            path, dimension_order="NHWC", num_ffmpeg_threads=max(int(threads), 0), seek_mode="exact"
        )
        meta = self._decoder.metadata
        num_frames = len(self._decoder)
        if num_frames < 1:
            raise DataError(f"no video frames in {path}")
        fps = float(meta.average_fps or 0.0)
        # The declared length from the header, read with PyAV as the PyAV reader does: one rule for both backends
        # (torchcodec's own header fields leave out Matroska's DURATION tag and the container's duration).
        declared_frames, declared_duration = _declared_length_of(path)
        self.info = VideoInfo(
            path=path,
            num_frames=num_frames,
            fps=fps,
            duration=float(meta.duration_seconds or (num_frames / fps if fps > 0 else 0.0)),
            width=int(meta.width or 0),
            height=int(meta.height or 0),
            codec=str(meta.codec or ""),
            seekable=True,
            num_keyframes=0,  # not reported by torchcodec
            declared_frames=declared_frames,
            declared_duration=declared_duration,
        )

    def ordinal_at(self, seconds: float) -> int:
        position = int(math.floor(float(seconds) * self.info.fps + 1e-9)) if self.info.fps > 0 else 0
        return min(max(position, 0), self.info.num_frames - 1)

    def get_frames(self, indices: Sequence[int] | np.ndarray, strict: bool = False) -> torch.Tensor:
        """Frames at ``indices`` as uint8 ``(len(indices), H, W, 3)``; a frame torchcodec cannot decode raises
        (whatever ``strict``, kept for the PyAV reader's signature)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError("no frame indices given")
        needed, inverse = np.unique(idx, return_inverse=True)
        batch = self._decoder.get_frames_at(indices=needed.tolist()).data  # (N, H, W, 3) uint8
        return batch[torch.from_numpy(inverse.reshape(-1))].contiguous()


_BACKENDS = ("pyav", "torchcodec", "auto")
# Containers whose packets carry real presentation timestamps. torchcodec indexes frames by timestamp; an AVI has
# none (FFmpeg makes them up from packet order), and on an MPEG-4 AVI with packed B-frames torchcodec's frame i is
# not the i-th displayed frame and its last frame fails to decode (tests/test_video_data.py): "auto" keeps PyAV,
# which counts frames in the decoder's output order, for every other container.
_TORCHCODEC_CONTAINERS = (".mp4", ".m4v", ".mov", ".mkv", ".webm")


def _open_reader(path: str, backend: str = "pyav", threads: int = 1, seek: bool = True) -> Any:
    if backend not in _BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; valid: {', '.join(_BACKENDS)}")
    timestamped = os.fspath(path).lower().endswith(_TORCHCODEC_CONTAINERS)
    if backend == "torchcodec" or (backend == "auto" and timestamped and torchcodec_available()):
        return _TorchCodecReader(path, threads, seek)
    return _PyAVReader(path, threads, seek)


def _warn_if_damaged(info: VideoInfo) -> None:
    reason = damaged(info)
    if reason:
        _warn_once(info.path, "damaged", "video %s is %s; using the frames that can be read", info.path, reason)


def probe_video(path: str | os.PathLike[str], backend: str = "pyav") -> VideoInfo:
    """Frame count, frame rate, duration, size and codec of a video file (demuxes the file; decodes nothing).

    Args:
        path: video file.
        backend: "pyav" (default), "torchcodec" (optional dependency) or "auto" (torchcodec when usable, for MP4,
            MOV, MKV and WebM; PyAV otherwise).

    Returns:
        A :class:`VideoInfo`.

    Raises:
        DataError, av.error.FFmpegError, OSError: unreadable file or no video stream.
    """
    return _open_reader(os.fspath(path), backend).info


def decode_frames(
    path: str | os.PathLike[str],
    indices: Sequence[int] | np.ndarray,
    *,
    seek: bool = True,
    threads: int = 1,
    backend: str = "pyav",
) -> torch.Tensor:
    """Decodes the frames at ``indices`` of a video (see the module docstring for what a frame index is).

    Args:
        path: video file.
        indices: frame indices in ``[0, num_frames)``, any order, repeats allowed.
        seek: seek to the keyframe before each wanted stretch (False: always decode from the start).
        threads: decoder threads; 1 (default) = single-threaded, 0 = FFmpeg's choice, N = N threads.
        backend: "pyav", "torchcodec" or "auto".

    Returns:
        uint8 tensor ``(len(indices), H, W, 3)``, RGB.
    """
    reader = _open_reader(os.fspath(path), backend, threads, seek)
    _warn_if_damaged(reader.info)
    return reader.get_frames(indices)


def decode_clip(
    path: str | os.PathLike[str],
    num_frames: int = 16,
    stride: int = 4,
    start: int | float | None = None,
    *,
    seek: bool = True,
    threads: int = 1,
    backend: str = "pyav",
) -> torch.Tensor:
    """Decodes one clip of ``num_frames`` frames ``stride`` frames apart.

    Only the stretch of the file that the clip needs is decoded: the reader seeks to the last keyframe at or before
    the clip's first frame and decodes forward, frames identified by pts, giving exactly the frames a full decode
    would give at those indices. A video too short for ``num_frames x stride`` gets a lowered stride or loops (see
    :func:`fit_clip_stride`), with a warning once per file naming it. A truncated or damaged file (:func:`damaged`)
    gives a clip of the frames that can be read, with a warning once per file naming it.

    Args:
        path: video file.
        num_frames: frames per clip (``T``).
        stride: distance between consecutive clip frames, in frames of the file.
        start: first frame: an ``int`` frame index, a ``float`` time in seconds from the first frame (the frame shown
            at that time), or None for frame 0. Clamped so that the clip lies inside the video.
        seek: seek (default) or decode from the start of the file.
        threads: decoder threads; 1 (default) = single-threaded, 0 = FFmpeg's choice, N = N threads.
        backend: "pyav" (default), "torchcodec" (optional dependency) or "auto".

    Returns:
        uint8 tensor ``(T, H, W, 3)``, RGB.

    Raises:
        DataError, av.error.FFmpegError, OSError: unreadable file.
    """
    path = os.fspath(path)
    reader = _open_reader(path, backend, threads, seek)
    _warn_if_damaged(reader.info)
    total = reader.info.num_frames
    if start is None:
        first = 0
    elif isinstance(start, (float, np.floating)):
        first = reader.ordinal_at(float(start))
    else:
        first = int(start)
    _fit_and_warn(path, total, num_frames, stride)
    return reader.get_frames(clip_indices(total, num_frames, stride, first))


# ----------------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------------


def _failure_reason(exc: BaseException, path: str) -> str:
    """One-line reason for a decoding failure, without repeating the path."""
    if isinstance(exc, av.error.FFmpegError) and exc.strerror:
        reason = exc.strerror
    else:
        reason = str(exc).replace(repr(path), "").replace(path, "")
    reason = " ".join(reason.split()).strip(" :") or type(exc).__name__
    return reason


class VideoDataset(LabeledFiles):
    """Videos of a source (class folders, flat folder or list file), one clip (or several views) per item.

    ``dataset[(index, sample_seed)]`` (keys from :class:`maskfeat.data.images.SeededSampler`) decodes the needed frames
    of video ``index`` and applies ``transform`` with torch's CPU RNG and Python's ``random`` seeded from
    ``sample_seed`` (their previous states are restored afterwards). ``dataset[index]`` uses ``sample_seed = index``.

    - ``mode="train"``: one clip of ``num_frames`` frames ``stride`` apart from a uniformly random start, augmented
      with :class:`~maskfeat.data.video_transforms.VideoTrainTransform` (short-side jitter, random resized crop, flip).
      Item: ``{"image": FloatTensor (3, T, H, W), "label": int, "seed": int}``. With ``repeats`` R > 1 (repeated
      augmentation: one decode, R independently augmented clips of it), ``"image"`` is ``(R, 3, T, H, W)`` and the
      item has ``"repeats": R``; :class:`maskfeat.masking.MaskCollator` puts the R clips into the batch as samples.
    - ``mode="eval"``: ``num_clips`` uniformly spaced clips (:func:`uniform_clip_starts`) x ``num_crops`` spatial crops
      (:class:`~maskfeat.data.video_transforms.VideoEvalTransform`), deterministic. With ``V = num_clips * num_crops
      > 1`` views the item is ``{"image": FloatTensor (V, 3, T, H, W), "label", "seed", "video_index": index}``, views
      ordered clip-major (``view = clip * num_crops + crop``), so predictions are averaged per ``video_index`` over the
      ``V`` views; with ``V == 1``, ``"image"`` is ``(3, T, H, W)`` as in training.

    An unreadable, truncated or damaged file (see :func:`damaged`: fewer than 90% of the frames its container
    declares can be read, or a clip runs past the end of what the decoder gives of such a file) gives
    ``{"unreadable": path}`` (one warning line naming the file on the ``maskfeat`` logger);
    :class:`maskfeat.masking.MaskCollator` drops such items and counts them (``num_bad``, ``bad_files``).

    Args:
        source: folder or list file scanned with :func:`scan_video_source` (unless ``files`` is given).
        num_frames: frames per clip (``T``).
        stride: distance between consecutive clip frames.
        transform: train mode: uint8 ``(T, H, W, 3)`` -> float ``(3, T, H, W)``; eval mode: uint8 ``(T, H, W, 3)`` ->
            float ``(num_crops, 3, T, H, W)`` or ``(3, T, H, W)``. Default: the MaskFeat transform of the mode.
        mode: "train" or "eval".
        num_clips: temporal views per video (eval).
        num_crops: spatial views per clip (eval; 1 = centre crop, 3 = left/centre/right).
        crop_size: output side of the default transforms.
        files: explicit list of video paths (skips the scan).
        labels: one label per file (default: the scan's, or -1).
        classes: class names.
        backend: "pyav" (default), "torchcodec" or "auto".
        threads: decoder threads per item (1 = single-threaded: loader workers already run in parallel).
        seek: seek to the needed stretch (default) instead of decoding from the start.
        repeats: train mode: augmented clips per decoded clip (repeated augmentation, SlowFast's ``NUM_SAMPLE``).
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        num_frames: int = 16,
        stride: int = 4,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        mode: str = "train",
        num_clips: int = 1,
        num_crops: int = 1,
        *,
        crop_size: int = 224,
        files: Sequence[str] | None = None,
        labels: Sequence[int] | None = None,
        classes: Sequence[str] | None = None,
        backend: str = "pyav",
        threads: int = 1,
        seek: bool = True,
        repeats: int = 1,
    ) -> None:
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        if num_frames < 1 or stride < 1:
            raise ValueError(f"num_frames and stride must be >= 1, got {num_frames} and {stride}")
        if num_clips < 1 or num_crops < 1:
            raise ValueError(f"num_clips and num_crops must be >= 1, got {num_clips} and {num_crops}")
        if mode == "train" and (num_clips != 1 or num_crops != 1):
            raise ValueError("num_clips and num_crops (multi-view) apply to mode='eval' only")
        if repeats < 1 or (repeats > 1 and mode != "train"):
            raise ValueError(f"repeats must be >= 1 and applies to mode='train' only, got {repeats} in {mode!r}")
        self.repeats = int(repeats)
        if backend not in _BACKENDS:
            raise ValueError(f"unknown video backend {backend!r}; valid: {', '.join(_BACKENDS)}")
        if backend == "torchcodec" and not torchcodec_available():
            raise ValueError("video backend 'torchcodec' cannot decode here (not installed, or its FFmpeg libraries or "
                             "PyTorch version do not match); use 'pyav'")  # fmt: skip
        self.root = os.fspath(source)
        self.num_frames = int(num_frames)
        self.stride = int(stride)
        self.mode = mode
        self.num_clips = int(num_clips)
        self.num_crops = int(num_crops)
        self.backend = backend
        self.threads = int(threads)
        self.seek = bool(seek)
        if transform is None:
            transform = VideoTrainTransform(crop_size) if mode == "train" else VideoEvalTransform(crop_size, num_crops)
        self.transform = transform
        self._set_files(scan_video_source, files, labels, classes)

    @property
    def num_views(self) -> int:
        """Views per item: 1 in training, ``num_clips * num_crops`` in evaluation."""
        return self.num_clips * self.num_crops

    def _read(self, path: str) -> torch.Tensor:
        """The frames of this item's clip(s), uint8 ``(num_clips * T, H, W, 3)``; train starts use torch's RNG."""
        reader = _open_reader(path, self.backend, self.threads, self.seek)
        reason = damaged(reader.info)
        if reason:
            raise DataError(reason)
        total = reader.info.num_frames
        _fit_and_warn(path, total, self.num_frames, self.stride)
        if self.mode == "train":
            starts = [random_clip_start(total, self.num_frames, self.stride)]
        else:
            starts = uniform_clip_starts(total, self.num_frames, self.stride, self.num_clips)
        indices = np.concatenate([clip_indices(total, self.num_frames, self.stride, s) for s in starts])
        return reader.get_frames(indices, strict=True)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        if isinstance(key, (tuple, list)):
            index, seed = int(key[0]), int(key[1])
        else:
            index = int(key)
            seed = index
        path = self._paths[index]
        with seeded_rngs(seed):
            try:
                frames = self._read(path)
            except MemoryError:
                raise
            except Exception as exc:  # any decoder failure on one file must not stop a long run
                logger.warning("skipped unreadable video %s: %s", path, _failure_reason(exc, path))
                return {"unreadable": path}
            if self.mode == "train":
                if self.repeats == 1:
                    return {"image": self.transform(frames), "label": int(self._labels[index]), "seed": seed}
                clips = torch.stack([self.transform(frames) for _ in range(self.repeats)])
                return {"image": clips, "label": int(self._labels[index]), "seed": seed, "repeats": self.repeats}
            views = []
            for clip in frames.split(self.num_frames):
                out = self.transform(clip)
                views.append(out.unsqueeze(0) if out.dim() == 4 else out)
            image = torch.cat(views)
            if image.shape[0] == 1:
                image = image[0]
        return {"image": image, "label": int(self._labels[index]), "seed": seed, "video_index": index}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={self.root!r}, videos={len(self)}, classes={len(self.classes)}, "
            f"mode={self.mode!r}, clip={self.num_frames}x{self.stride}, views={self.num_views})"
        )
