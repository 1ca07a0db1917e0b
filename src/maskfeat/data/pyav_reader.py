"""The PyAV backend: a demux pass probes the file, then frames are decoded from the start and counted.

Frame ``i`` is the ``i``-th frame the decoder outputs (:mod:`maskfeat.data.probe`), so decoding from the start and
counting is exact for every container, AVI files with "packed" MPEG-4 B-frames included. A read stops at the last
frame it needs. There is no keyframe seek: on Kinetics-like files (10 s at 30 fps, a keyframe every 250 frames) every
16x4 clip starts by frame 239, in the first GOP, so a seek lands on frame 0; seeking measured 0.93x the speed of
decoding from the start there (``bench/bench_video_decode.py --kinetics 4``, BENCHMARKS.md) and saved nothing on the
shared clips either (1-4 keyframes each), so it did not pay for its complexity.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Any

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from .logs import warn_once
from .probe import VideoInfo, damaged, declared_length
from .sources import DataError

__all__ = ["PyAVReader"]


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


class PyAVReader:
    """Reads frames of one file by index with PyAV: probe once (demux pass), then decode from the start per request.

    Implements :class:`maskfeat.data.probe.FrameReader`.

    Args:
        path: video file.
        threads: decoder threads; 1 = single-threaded, 0 = FFmpeg's choice, N = N threads.
    """

    def __init__(self, path: str, threads: int = 1) -> None:
        self.path = path
        self.threads = int(threads)
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
        # Presentation timestamps in presentation order (for ordinal_at), when every packet has a distinct one.
        self._pts = np.sort(np.asarray(pts_list, dtype=np.int64)) if self._index_ok else np.zeros(0, dtype=np.int64)
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
        declared_frames, declared_duration = declared_length(container, stream)
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

    def _decode(self, needed: set[int], last_needed: int) -> tuple[dict[int, np.ndarray], Any, int]:
        """Decodes from the start up to frame ``last_needed``, keeping the frames in ``needed`` as RGB arrays.

        Returns:
            ``(frames by index, last decoded frame, frames decoded in all)``; indices missing from the dict were not
            produced before the end of the stream.
        """
        got: dict[int, np.ndarray] = {}
        last_frame = None
        decoded = 0
        container, stream = self._open_decoder()
        try:
            for ordinal, frame in enumerate(_frames_of(container, stream)):
                decoded += 1
                last_frame = frame
                if ordinal in needed:
                    got[ordinal] = self._to_rgb(frame)
                if ordinal >= last_needed:
                    break
        finally:
            container.close()
        return got, last_frame, decoded

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
        the decoder gave too few for the file to be sound (:func:`~maskfeat.data.probe.damaged`), ``strict`` raises
        :class:`~maskfeat.data.sources.DataError` instead (a warning once per file otherwise).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError("no frame indices given")
        if idx.min() < 0 or idx.max() >= self.info.num_frames:
            raise IndexError(f"frame indices outside 0..{self.info.num_frames - 1} in {self.path}")
        self._size: tuple[int, int] | None = None
        self._reformatter = VideoReformatter()
        got, last_frame, decoded = self._decode(set(idx.tolist()), int(idx.max()))
        if last_frame is None:
            raise DataError(f"no decodable frames in {self.path}")
        missing = sorted(set(idx.tolist()) - got.keys())
        if missing:
            self._fill_missing(got, missing, last_frame, decoded, strict)
        return torch.from_numpy(np.stack([got[int(i)] for i in idx]))

    def _fill_missing(
        self, got: dict[int, np.ndarray], missing: list[int], last_frame: Any, decoded: int, strict: bool
    ) -> None:
        """Fills the frames the decoder did not give with the last one it gave, or raises / warns when the file is
        damaged (see :meth:`get_frames`)."""
        reason = damaged(self.info, decoded)
        if reason and strict:
            raise DataError(reason)
        if reason:
            warn_once(self.path, "damaged", "video %s is %s; using the frames that can be read", self.path, reason)
        else:
            # The decoder gave a few frames fewer than the file has packets: repeat the last frame it gave.
            warn_once(
                self.path,
                "missing",
                "video %s: decoded %d of its %d frames; repeating the last decoded frame for frames %d..",
                self.path,
                decoded,
                self.info.num_frames,
                missing[0],
            )
        filler = self._to_rgb(last_frame)
        for i in missing:
            got[i] = filler
