"""The optional torchcodec backend: frames by index through torchcodec's exact seek mode."""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence

import av
import numpy as np
import torch

from .probe import VideoInfo, declared_length_of
from .sources import DataError

__all__ = ["TorchCodecReader", "torchcodec_available"]


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


class TorchCodecReader:
    """Reads frames by index with torchcodec (optional backend; its exact seek mode scans the file once).

    Implements :class:`maskfeat.data.probe.FrameReader`.

    Args:
        path: video file.
        threads: FFmpeg decoder threads (0 = FFmpeg's choice).
    """

    def __init__(self, path: str, threads: int = 1) -> None:
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
        declared_frames, declared_duration = declared_length_of(path)
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
        (whatever ``strict``, kept for the :class:`~maskfeat.data.probe.FrameReader` signature)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError("no frame indices given")
        needed, inverse = np.unique(idx, return_inverse=True)
        batch = self._decoder.get_frames_at(indices=needed.tolist()).data  # (N, H, W, 3) uint8
        return batch[torch.from_numpy(inverse.reshape(-1))].contiguous()
