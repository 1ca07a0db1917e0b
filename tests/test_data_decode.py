"""Tests of maskfeat.data.decode and its readers: exact decoding of real and synthetic clips, damaged files."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from video_helpers import (
    REAL_CLIPS,
    VIDEOS,
    count_decoded,
    encode,
    fresh_warnings,  # noqa: F401 (autouse fixture)
    has_encoder,
    keyframe_indices,
    log_messages,
    needs_videos,
    reference_frames,
)

from maskfeat.data.clips import clip_indices
from maskfeat.data.collate import MaskCollator
from maskfeat.data.decode import damaged, decode_clip, decode_frames, probe_video, torchcodec_available
from maskfeat.data.video import VideoDataset
from maskfeat.data.video_transforms import VideoEvalTransform, VideoTrainTransform


@needs_videos
@pytest.mark.parametrize("name", sorted(REAL_CLIPS))
def test_real_clip_metadata_matches_table(name: str) -> None:
    width, height, frames, fps, codec = REAL_CLIPS[name]
    info = probe_video(VIDEOS / name)
    assert (info.width, info.height, info.num_frames, info.codec) == (width, height, frames, codec)
    assert info.declared_frames == frames and damaged(info) is None
    assert info.fps == pytest.approx(fps)
    assert info.duration == pytest.approx(frames / fps, rel=0.1)
    assert reference_frames(VIDEOS / name).shape == (frames, height, width, 3)


@needs_videos
@pytest.mark.parametrize("name", sorted(REAL_CLIPS))
def test_clips_are_exactly_the_frames_of_a_full_decode(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = VIDEOS / name
    reference = reference_frames(path)
    n = len(reference)
    keyframes = keyframe_indices(path)
    # Starts: the first frame, a keyframe and the frame after it, the middle of a GOP, near the end (clamped).
    starts = {0, n // 2, n - 1, n - 5, *keyframes, *(k + 1 for k in keyframes), *((k + 7) % n for k in keyframes)}
    for num_frames, stride in [(8, 3), (4, 1), (1, 1)]:
        for start in sorted(starts):
            clip = decode_clip(path, num_frames, stride, start)
            expected = reference[clip_indices(n, num_frames, stride, start)]
            assert clip.dtype == torch.uint8 and clip.shape == expected.shape
            assert np.array_equal(clip.numpy(), expected), (name, num_frames, stride, start)
    # Arbitrary index sets (unsorted, repeated).
    indices = np.random.default_rng(0).integers(0, n, size=25)
    assert np.array_equal(decode_frames(path, indices).numpy(), reference[indices])
    # Time-based start: the frame shown at that time.
    fps = REAL_CLIPS[name][3]
    assert np.array_equal(decode_clip(path, 2, 1, start=1.0).numpy(), reference[[fps, fps + 1]])

    # A read decodes from the start and stops at the clip's last frame (no keyframe seek: it did not pay, see
    # bench/bench_video_decode.py --kinetics).
    counter = count_decoded(monkeypatch)
    start = keyframes[-1] + 1 if keyframes[-1] + 2 < n else n // 2
    decode_clip(path, 2, 1, start)
    assert counter[0] == start + 2


SYNTHETIC = [
    # file, encoder, frames, size, rate, pix_fmt, options, gop
    ("h264_7fps.mp4", "libx264", 24, (98, 66), 7, "yuv420p", {"preset": "ultrafast"}, None),
    ("h264_ntsc_bframes.mp4", "libx264", 50, (98, 66), Fraction(30000, 1001), "yuv420p", {"preset": "veryfast"}, 10),
    ("h264_gop.mkv", "libx264", 40, (64, 48), 30, "yuv420p", {"preset": "veryfast"}, 8),
    ("mpeg4.avi", "mpeg4", 30, (98, 66), 25, "yuv420p", None, 8),
    ("vp9.webm", "libvpx-vp9", 12, (98, 66), 15, "yuv420p", {"deadline": "realtime", "cpu-used": "8"}, None),
    ("vp8.webm", "libvpx", 12, (98, 66), 15, "yuv420p", {"deadline": "realtime", "cpu-used": "8"}, None),
    ("mjpeg_odd.mkv", "mjpeg", 12, (97, 65), 24, "yuvj420p", None, None),
    ("mjpeg.mov", "mjpeg", 12, (98, 66), 24, "yuvj422p", None, None),
]


@pytest.mark.parametrize("spec", SYNTHETIC, ids=[s[0] for s in SYNTHETIC])
def test_synthetic_clips_decode_exactly(spec: tuple, tmp_path: Path) -> None:
    name, encoder, frames, (width, height), rate, pix_fmt, options, gop = spec
    if not has_encoder(encoder):
        pytest.skip(f"encoder {encoder} not in this PyAV build")
    path = encode(tmp_path / name, encoder, frames, (width, height), rate, pix_fmt, options, gop)
    info = probe_video(path)
    assert (info.num_frames, info.width, info.height) == (frames, width, height)
    assert info.fps == pytest.approx(float(rate), rel=1e-3)
    assert info.declared_frames in (0, frames) and info.declared_duration == pytest.approx(frames / rate, rel=0.05)
    assert damaged(info) is None  # every intact file: nothing declared is missing
    reference = reference_frames(path)
    assert reference.shape == (frames, height, width, 3)
    for start in range(0, frames, 3):  # every third start: inside GOPs, on keyframes, near the end
        clip = decode_clip(path, 4, 2, start)
        assert np.array_equal(clip.numpy(), reference[clip_indices(frames, 4, 2, start)]), (name, start)


@needs_videos
def test_truncated_file_with_index_up_front_is_read_gracefully(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Remux with the index ("moov") first, then cut: the first half of the frames stays readable.
    full = tmp_path / "faststart.mp4"
    src = av.open(str(VIDEOS / "h264_340x256_300f.mp4"))
    dst = av.open(str(full), "w", options={"movflags": "faststart"})
    try:
        out_stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:  # the flush packet at the end has none
                packet.stream = out_stream
                dst.mux(packet)
    finally:
        dst.close()
        src.close()
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    info = probe_video(cut)
    assert 50 < info.num_frames < 300
    with caplog.at_level(logging.WARNING, logger="maskfeat"):
        clip = decode_clip(cut, 8, 4, start=10**6)  # the last clip: runs into the cut
    assert clip.shape == (8, 256, 340, 3)
    reference = reference_frames(full)
    assert np.array_equal(clip[0].numpy(), reference[info.num_frames - 29])  # frames before the cut are exact
    assert all(str(cut) in m for m in log_messages(caplog))  # whatever was done is named


# file, encoder, encoder options, container options (MP4: the index up front, so that a cut file still opens)
TRUNCATED = [
    ("vp9.webm", "libvpx-vp9", {"deadline": "realtime", "cpu-used": "8"}, None),
    ("h264.mp4", "libx264", {"preset": "ultrafast"}, {"movflags": "faststart"}),
]


@pytest.mark.parametrize("spec", TRUNCATED, ids=[s[0] for s in TRUNCATED])
def test_a_truncated_file_is_named_and_counted_as_a_bad_sample(
    spec: tuple, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name, encoder, options, container_options = spec
    if not has_encoder(encoder):
        pytest.skip(f"encoder {encoder} not in this PyAV build")
    whole = encode(tmp_path / "whole" / name, encoder, 81, (98, 66), 24, options=options,
                    container_options=container_options)  # fmt: skip
    cut = tmp_path / "cut" / name  # a download cut short: a quarter of the bytes, the header still says 81 frames
    cut.parent.mkdir()
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 4])
    info = probe_video(cut)
    assert 5 < info.num_frames < 30 and info.duration < 1.5
    if name.endswith(".webm"):  # Matroska records the duration only
        assert info.declared_frames == 0 and info.declared_duration == pytest.approx(81 / 24)
    else:
        assert info.declared_frames == 81
    assert damaged(probe_video(whole)) is None
    assert damaged(info).startswith("truncated or damaged")

    dataset = VideoDataset(tmp_path, files=[str(whole), str(cut)], num_frames=4, stride=2,
                           transform=VideoTrainTransform(32, short_side=(40, 48)))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="maskfeat"):
        items = [dataset[(i, 0)] for i in range(2)]
    assert items[0]["image"].shape == (3, 4, 32, 32) and items[1] == {"unreadable": str(cut)}
    batch = MaskCollator("cube", (2, 2, 2), 0.5)(items)
    assert batch["images"].shape[0] == 1 and batch["num_bad"] == 1 and batch["bad_files"] == [str(cut)]
    lines = [m for m in log_messages(caplog) if str(cut) in m]
    assert len(lines) == 1 and lines[0].startswith(f"skipped unreadable video {cut}: truncated or damaged")

    # The decoding functions give what can be read, and say once that the file is truncated.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="maskfeat"):
        clip = decode_clip(cut, 4, 2, start=0)
        decode_frames(cut, [1, 3])
    assert np.array_equal(clip.numpy(), reference_frames(whole)[[0, 2, 4, 6]])
    lines = [m for m in log_messages(caplog) if str(cut) in m]
    assert len(lines) == 1 and "truncated or damaged" in lines[0]


def test_damaged_data_behind_an_intact_index_is_a_bad_sample(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    whole = encode(tmp_path / "whole.mp4", "libx264", 81, (98, 66), 24, options={"preset": "ultrafast"},
                    container_options={"movflags": "faststart"})  # fmt: skip
    data = bytearray(whole.read_bytes())
    data[len(data) // 5 : len(data) * 4 // 5] = bytes(len(data) * 4 // 5 - len(data) // 5)  # zeros: packets intact
    broken = tmp_path / "zeroed.mp4"
    broken.write_bytes(bytes(data))
    info = probe_video(broken)
    assert info.num_frames == info.declared_frames == 81 and damaged(info) is None  # the index is whole
    dataset = VideoDataset(tmp_path, files=[str(broken)], num_frames=4, stride=2, mode="eval",
                           transform=VideoEvalTransform(32))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="maskfeat"):
        item = dataset[0]  # the centred clip, frames 37..43: past what the decoder gives
    assert item == {"unreadable": str(broken)}
    lines = [m for m in log_messages(caplog) if str(broken) in m]
    assert len(lines) == 1 and "damaged: " in lines[0] and "of its 81 frames can be decoded" in lines[0]
    with av.open(str(broken)) as container:  # every frame the decoder gives, skipping the packets it rejects
        frames = 0
        for packet in container.demux(video=0):
            try:
                frames += len(packet.decode())
            except av.error.InvalidDataError:
                pass
    assert frames < 0.9 * 81 and f"damaged: {frames} of its 81 frames can be decoded" in lines[0]


@pytest.mark.skipif(not torchcodec_available(), reason="torchcodec not installed (or without its FFmpeg libraries)")
@needs_videos
@pytest.mark.parametrize("name", sorted(REAL_CLIPS))
def test_torchcodec_backend_matches_pyav(name: str) -> None:
    path = VIDEOS / name
    frames = REAL_CLIPS[name][2]
    for start in (0, frames // 2, max(frames - 20, 0)):
        ours = decode_clip(path, 8, 2, start)
        assert torch.equal(decode_clip(path, 8, 2, start, backend="auto"), ours), (name, start)
        if path.suffix == ".mp4":  # H.264 in MP4: torchcodec gives PyAV's frames exactly
            assert torch.equal(decode_clip(path, 8, 2, start, backend="torchcodec"), ours), (name, start)
    if path.suffix == ".avi":  # no timestamps: torchcodec's frame order differs, so "auto" keeps PyAV here
        assert not torch.equal(decode_clip(path, 8, 2, 82, backend="torchcodec"), decode_clip(path, 8, 2, 82))
