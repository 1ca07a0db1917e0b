"""Shared helpers of the video data tests: the real clips, reference decodes, synthetic encodes, log capture."""

from __future__ import annotations

import functools
import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import SHARED_DATA

from maskfeat.data import logs, pyav_reader

VIDEOS = SHARED_DATA / "videos"


# name: (width, height, frames, fps, codec), from shared/data/README.md
REAL_CLIPS = {
    "h264_340x256_280f.mp4": (340, 256, 280, 28, "h264"),
    "h264_340x256_300f.mp4": (340, 256, 300, 30, "h264"),
    "h264_340x256_32f.mp4": (340, 256, 32, 30, "h264"),
    "mpeg4_320x240_164f.avi": (320, 240, 164, 25, "mpeg4"),
}


needs_videos = pytest.mark.skipif(
    not all((VIDEOS / name).is_file() for name in REAL_CLIPS), reason=f"real clips not found in {VIDEOS}"
)


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the once-per-file warnings afresh."""
    monkeypatch.setattr(logs, "_warned", set())


def reference_frames(path: Path | str) -> np.ndarray:
    """Every frame of a file, decoded from the start with plain PyAV: the ground truth for frame indices."""
    return _cached_reference(str(path)).copy()


@functools.lru_cache(maxsize=4)
def _cached_reference(path: str) -> np.ndarray:
    with av.open(path) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def log_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "maskfeat"]


def count_decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the frames the reader decodes (wraps pyav_reader._frames_of)."""
    counter = [0]
    original = pyav_reader._frames_of

    def counting(container, stream):
        for frame in original(container, stream):
            counter[0] += 1
            yield frame

    monkeypatch.setattr(pyav_reader, "_frames_of", counting)
    return counter


def keyframe_indices(path: Path) -> list[int]:
    """Frame indices of the keyframes (from the packets' flags, in presentation order)."""
    with av.open(str(path)) as container:
        packets = [(p.pts, p.is_keyframe) for p in container.demux(video=0) if p.size]
    return [i for i, (_, key) in enumerate(sorted(packets)) if key]


def encode(
    path: Path,
    codec: str,
    num_frames: int,
    size: tuple[int, int],
    rate: int | Fraction,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    gop: int | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Writes a synthetic clip with PyAV: moving gradients and a moving white bar (distinct frames)."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=container_options) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if options:
            stream.options = options
        if gop:
            stream.codec_context.gop_size = gop
        for i in range(num_frames):
            image = np.stack([(xx * 4 + i * 9) % 256, (yy * 4 + i * 5) % 256, ((xx + yy) * 2 + i * 13) % 256], -1)
            image = image.astype(np.uint8)
            image[(i * 3) % height : (i * 3) % height + 8, 10:30] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


def link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src, dst)
    except OSError:
        shutil.copy(src, dst)
    return dst
