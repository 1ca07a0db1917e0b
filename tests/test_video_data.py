"""Tests of maskfeat.data.video: exact seeking decode on real clips, clip sampling, sources, dataset, transforms."""

from __future__ import annotations

import functools
import logging
import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

import maskfeat.data.video as video
from maskfeat.data.images import DataError, SeededSampler
from maskfeat.data.video import (
    VideoDataset,
    clip_indices,
    decode_clip,
    decode_frames,
    fit_clip_stride,
    probe_video,
    random_clip_start,
    scan_video_source,
    torchcodec_available,
    uniform_clip_starts,
)
from maskfeat.data.video_transforms import VideoEvalTransform, VideoTrainTransform, erase_cube, spatial_crop_offsets
from maskfeat.masking import MaskCollator

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
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the once-per-file warnings afresh."""
    monkeypatch.setattr(video, "_warned", set())


def _reference_frames(path: Path | str) -> np.ndarray:
    """Every frame of a file, decoded from the start with plain PyAV: the ground truth for frame indices."""
    return _cached_reference(str(path)).copy()


@functools.lru_cache(maxsize=4)
def _cached_reference(path: str) -> np.ndarray:
    with av.open(path) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "maskfeat"]


def _count_decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the frames the reader decodes (wraps video._frames_of)."""
    counter = [0]
    original = video._frames_of

    def counting(container, stream):
        for frame in original(container, stream):
            counter[0] += 1
            yield frame

    monkeypatch.setattr(video, "_frames_of", counting)
    return counter


def _encode(
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


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


# ----------------------------------------------------------------------------------------------------------------
# Real clips: metadata and exact seeking
# ----------------------------------------------------------------------------------------------------------------


@needs_videos
@pytest.mark.parametrize("name", sorted(REAL_CLIPS))
def test_real_clip_metadata_matches_table(name: str) -> None:
    width, height, frames, fps, codec = REAL_CLIPS[name]
    info = probe_video(VIDEOS / name)
    assert (info.width, info.height, info.num_frames, info.codec) == (width, height, frames, codec)
    assert info.declared_frames == frames and video.damaged(info) is None
    assert info.fps == pytest.approx(fps)
    assert info.duration == pytest.approx(frames / fps, rel=0.1)
    assert _reference_frames(VIDEOS / name).shape == (frames, height, width, 3)


@needs_videos
@pytest.mark.parametrize("name", sorted(REAL_CLIPS))
def test_seeking_returns_exactly_the_frames_of_a_full_decode(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = VIDEOS / name
    reference = _reference_frames(path)
    n = len(reference)
    keyframes = [int(k) for k in video._PyAVReader(str(path))._key_ordinals]
    # Starts: the first frame, a keyframe and the frame after it, the middle of a GOP, near the end (clamped).
    starts = {0, n // 2, n - 1, n - 5, *keyframes, *(k + 1 for k in keyframes), *((k + 7) % n for k in keyframes)}
    for num_frames, stride in [(8, 3), (4, 1), (1, 1)]:
        for start in sorted(starts):
            clip = decode_clip(path, num_frames, stride, start)
            expected = reference[clip_indices(n, num_frames, stride, start)]
            assert clip.dtype == torch.uint8 and clip.shape == expected.shape
            assert np.array_equal(clip.numpy(), expected), (name, num_frames, stride, start)
    # Arbitrary index sets (unsorted, repeated) and the same with seeking off.
    indices = np.random.default_rng(0).integers(0, n, size=25)
    assert np.array_equal(decode_frames(path, indices).numpy(), reference[indices])
    assert np.array_equal(decode_frames(path, indices, seek=False).numpy(), reference[indices])
    # Time-based start: the frame shown at that time.
    fps = REAL_CLIPS[name][3]
    assert np.array_equal(decode_clip(path, 2, 1, start=1.0).numpy(), reference[[fps, fps + 1]])

    # The seek is real where the file has a keyframe past the start: fewer frames decoded than from the start.
    if keyframes[-1] > 0:
        counter = _count_decoded(monkeypatch)
        start = keyframes[-1] + 1
        decode_clip(path, 2, 1, start)
        seeking = counter[0]
        counter[0] = 0
        decode_clip(path, 2, 1, start, seek=False)
        assert seeking <= start - keyframes[-1] + 2 < counter[0] == start + 2


@needs_videos
def test_short_clip_lowers_the_stride_or_loops_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    path = VIDEOS / "h264_340x256_32f.mp4"
    reference = _reference_frames(path)
    assert fit_clip_stride(32, 16, 4) == (2, False)  # 16 x 4 spans 61 frames: stride 2 spans 31
    with caplog.at_level(logging.WARNING, logger="maskfeat"):
        clip = decode_clip(path, 16, 4, start=5)
        decode_clip(path, 16, 4, start=0)  # warned once per file
    assert clip.shape == (16, 256, 340, 3)
    assert np.array_equal(clip.numpy(), reference[1 + 2 * np.arange(16)])  # start clamped to the last valid, 1
    messages = [m for m in _messages(caplog) if str(path) in m]
    assert len(messages) == 1 and "stride lowered to 2" in messages[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="maskfeat"):
        looped = decode_clip(path, 40, 4)
    assert np.array_equal(looped.numpy(), reference[np.arange(40) % 32])
    assert any(str(path) in m and "looping" in m for m in _messages(caplog))


def test_clip_sampling_functions() -> None:
    assert fit_clip_stride(300, 16, 4) == (4, False)
    assert fit_clip_stride(61, 16, 4) == (4, False)
    assert fit_clip_stride(60, 16, 4) == (3, False)
    assert fit_clip_stride(10, 16, 4) == (1, True)
    assert clip_indices(100, 4, 2, 95).tolist() == [93, 95, 97, 99]  # clamped inside the video
    assert clip_indices(3, 5, 4, 0).tolist() == [0, 1, 2, 0, 1]
    assert uniform_clip_starts(300, 16, 4, 1) == [(300 - 61) // 2]
    assert uniform_clip_starts(300, 16, 4, 3) == [0, 120, 239]  # first to last valid start
    starts = {random_clip_start(100, 16, 4, torch.Generator().manual_seed(s)) for s in range(300)}
    assert starts == set(range(100 - 61 + 1))  # uniform over every valid start
    assert random_clip_start(10, 16, 4) == 0


# ----------------------------------------------------------------------------------------------------------------
# Synthetic clips of other codecs / containers / sizes / rates
# ----------------------------------------------------------------------------------------------------------------

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
    if not _has_encoder(encoder):
        pytest.skip(f"encoder {encoder} not in this PyAV build")
    path = _encode(tmp_path / name, encoder, frames, (width, height), rate, pix_fmt, options, gop)
    info = probe_video(path)
    assert (info.num_frames, info.width, info.height) == (frames, width, height)
    assert info.fps == pytest.approx(float(rate), rel=1e-3)
    assert info.declared_frames in (0, frames) and info.declared_duration == pytest.approx(frames / rate, rel=0.05)
    assert video.damaged(info) is None  # every intact file: nothing declared is missing
    reference = _reference_frames(path)
    assert reference.shape == (frames, height, width, 3)
    for start in range(0, frames, 3):  # every third start: inside GOPs, on keyframes, near the end
        clip = decode_clip(path, 4, 2, start)
        assert np.array_equal(clip.numpy(), reference[clip_indices(frames, 4, 2, start)]), (name, start)


# ----------------------------------------------------------------------------------------------------------------
# Sources: folders and lists
# ----------------------------------------------------------------------------------------------------------------


def _link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src, dst)
    except OSError:
        shutil.copy(src, dst)
    return dst


@needs_videos
def test_folder_with_broken_and_truncated_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "kinetics"
    _link(VIDEOS / "h264_340x256_280f.mp4", root / "archery" / "a.mp4")
    _link(VIDEOS / "h264_340x256_32f.mp4", root / "archery" / "b.MP4")  # extension case does not matter
    _link(VIDEOS / "mpeg4_320x240_164f.avi", root / "bowling" / "c.avi")
    broken = root / "bowling" / "broken.mp4"
    broken.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    truncated = root / "bowling" / "truncated.mp4"  # moov at the end: cut, the file has no index at all
    data = (VIDEOS / "h264_340x256_300f.mp4").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    (root / "bowling" / "notes.txt").write_text("not a video")

    files, labels, classes = scan_video_source(root)
    assert classes == ["archery", "bowling"]
    assert [os.path.basename(f) for f in files] == ["a.mp4", "b.MP4", "broken.mp4", "c.avi", "truncated.mp4"]
    assert labels == [0, 0, 1, 1, 1]

    dataset = VideoDataset(root, num_frames=4, stride=2, transform=VideoTrainTransform(32, short_side=(40, 48)))
    with caplog.at_level(logging.WARNING, logger="maskfeat"):
        items = [dataset[(i, 7)] for i in range(len(dataset))]
    assert ["unreadable" in item for item in items] == [False, False, True, False, True]
    for i in (0, 1, 3):
        assert items[i]["image"].shape == (3, 4, 32, 32) and items[i]["label"] == labels[i]
    messages = _messages(caplog)
    for bad in (broken, truncated):
        lines = [m for m in messages if str(bad) in m]
        assert len(lines) == 1 and lines[0].startswith("skipped unreadable video") and "\n" not in lines[0]

    # The collator drops the None items and stacks video clips.
    batch = MaskCollator("cube", (2, 2, 2), 0.5)(items)
    assert batch["images"].shape == (3, 3, 4, 32, 32) and batch["num_bad"] == 2
    assert batch["masks"].shape == (3, 2, 2, 2)


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
    reference = _reference_frames(full)
    assert np.array_equal(clip[0].numpy(), reference[info.num_frames - 29])  # frames before the cut are exact
    assert all(str(cut) in m for m in _messages(caplog))  # whatever was done is named


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
    if not _has_encoder(encoder):
        pytest.skip(f"encoder {encoder} not in this PyAV build")
    whole = _encode(tmp_path / "whole" / name, encoder, 81, (98, 66), 24, options=options,
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
    assert video.damaged(probe_video(whole)) is None
    assert video.damaged(info).startswith("truncated or damaged")

    dataset = VideoDataset(tmp_path, files=[str(whole), str(cut)], num_frames=4, stride=2,
                           transform=VideoTrainTransform(32, short_side=(40, 48)))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="maskfeat"):
        items = [dataset[(i, 0)] for i in range(2)]
    assert items[0]["image"].shape == (3, 4, 32, 32) and items[1] == {"unreadable": str(cut)}
    batch = MaskCollator("cube", (2, 2, 2), 0.5)(items)
    assert batch["images"].shape[0] == 1 and batch["num_bad"] == 1 and batch["bad_files"] == [str(cut)]
    lines = [m for m in _messages(caplog) if str(cut) in m]
    assert len(lines) == 1 and lines[0].startswith(f"skipped unreadable video {cut}: truncated or damaged")

    # The decoding functions give what can be read, and say once that the file is truncated.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="maskfeat"):
        clip = decode_clip(cut, 4, 2, start=0)
        decode_frames(cut, [1, 3])
    assert np.array_equal(clip.numpy(), _reference_frames(whole)[[0, 2, 4, 6]])
    lines = [m for m in _messages(caplog) if str(cut) in m]
    assert len(lines) == 1 and "truncated or damaged" in lines[0]


def test_damaged_data_behind_an_intact_index_is_a_bad_sample(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    whole = _encode(tmp_path / "whole.mp4", "libx264", 81, (98, 66), 24, options={"preset": "ultrafast"},
                    container_options={"movflags": "faststart"})  # fmt: skip
    data = bytearray(whole.read_bytes())
    data[len(data) // 5 : len(data) * 4 // 5] = bytes(len(data) * 4 // 5 - len(data) // 5)  # zeros: packets intact
    broken = tmp_path / "zeroed.mp4"
    broken.write_bytes(bytes(data))
    info = probe_video(broken)
    assert info.num_frames == info.declared_frames == 81 and video.damaged(info) is None  # the index is whole
    dataset = VideoDataset(tmp_path, files=[str(broken)], num_frames=4, stride=2, mode="eval",
                           transform=VideoEvalTransform(32))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="maskfeat"):
        item = dataset[0]  # the centred clip, frames 37..43: past what the decoder gives
    assert item == {"unreadable": str(broken)}
    lines = [m for m in _messages(caplog) if str(broken) in m]
    assert len(lines) == 1 and "damaged: " in lines[0] and "of its 81 frames can be decoded" in lines[0]
    with av.open(str(broken)) as container:  # every frame the decoder gives, skipping the packets it rejects
        frames = 0
        for packet in container.demux(video=0):
            try:
                frames += len(packet.decode())
            except av.error.InvalidDataError:
                pass
    assert frames < 0.9 * 81 and f"damaged: {frames} of its 81 frames can be decoded" in lines[0]


@needs_videos
def test_csv_and_space_separated_lists(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clips = tmp_path / "clips"
    _link(VIDEOS / "h264_340x256_32f.mp4", clips / "x.mp4")
    _link(VIDEOS / "mpeg4_320x240_164f.avi", clips / "sub dir" / "y.avi")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.csv").write_text(
        "path,label\n"
        "../clips/x.mp4,riding bike\n"
        f"{clips / 'sub dir' / 'y.avi'},archery\n"
        "\n# a comment\n"
        "../clips/missing.mp4,zumba\n"
    )
    with caplog.at_level(logging.WARNING, logger="maskfeat"):
        files, labels, classes = scan_video_source(lists / "train.csv")
    assert classes == ["archery", "riding bike", "zumba"]  # every listed class, present or not
    assert files == [str(clips / "x.mp4"), str(clips / "sub dir" / "y.avi")]
    assert labels == [1, 0]
    assert any("missing.mp4" in m and "train.csv line 6" in m for m in _messages(caplog))

    (lists / "val.txt").write_text("../clips/x.mp4 3\n../clips/sub dir/y.avi 0\n../clips/x.mp4\n")  # SlowFast style
    files, labels, classes = scan_video_source(lists / "val.txt")
    assert labels == [3, 0, -1] and classes == [] and files[1] == str(clips / "sub dir" / "y.avi")

    dataset = VideoDataset(lists / "train.csv", num_frames=2, stride=1, transform=VideoTrainTransform(16, (16, 20)))
    assert dataset.classes == ["archery", "riding bike", "zumba"] and dataset.num_classes == 3
    assert dataset[(1, 0)]["label"] == 0

    (lists / "bad.csv").write_text("a.mp4,1,extra\n")
    with pytest.raises(DataError, match=r"bad\.csv:1: expected 'path,label'"):
        scan_video_source(lists / "bad.csv")
    (lists / "empty.csv").write_text("path,label\n\n")
    with pytest.raises(DataError, match="no entries"):
        scan_video_source(lists / "empty.csv")
    (lists / "gone.csv").write_text("nothing.mp4,1\n")
    with pytest.raises(DataError, match="none of the 1 videos"):
        scan_video_source(lists / "gone.csv")
    with pytest.raises(DataError, match="does not exist"):
        scan_video_source(tmp_path / "nope")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="no video files"):
        scan_video_source(tmp_path / "empty_dir")


def test_flat_folder_and_single_file(tmp_path: Path) -> None:
    _encode(tmp_path / "one.avi", "mpeg4", 6, (32, 32), 10)
    _encode(tmp_path / "two.AVI", "mpeg4", 6, (32, 32), 10)
    files, labels, classes = scan_video_source(tmp_path)
    assert [os.path.basename(f) for f in files] == ["one.avi", "two.AVI"] and labels == [-1, -1] and classes == []
    assert scan_video_source(tmp_path / "one.avi") == ([str(tmp_path / "one.avi")], [-1], [])


# ----------------------------------------------------------------------------------------------------------------
# Transforms and the dataset
# ----------------------------------------------------------------------------------------------------------------


def test_train_transform_applies_one_crop_to_every_frame() -> None:
    torch.manual_seed(0)
    frame = torch.randint(0, 256, (1, 256, 340, 3), dtype=torch.uint8)
    clip = frame.expand(16, -1, -1, -1).contiguous()  # 16 identical frames
    transform = VideoTrainTransform(224)
    for seed in range(5):
        torch.manual_seed(seed)
        out = transform(clip)
        assert out.shape == (3, 16, 224, 224) and out.dtype == torch.float32 and out.is_contiguous()
        assert torch.equal(out, out[:, :1].expand_as(out))  # identical frames stay identical
    torch.manual_seed(3)
    a = transform(clip)
    torch.manual_seed(3)
    assert torch.equal(a, transform(clip))

    # Normalisation: a mid-grey clip maps to (0.5 - mean) / std.
    grey = torch.full((2, 64, 80, 3), 128, dtype=torch.uint8)
    out = VideoTrainTransform(32, short_side=(64, 64))(grey)
    expected = (128 / 255 - torch.tensor(transform.normalize.mean)) / torch.tensor(transform.normalize.std)
    assert torch.allclose(out.mean(dim=(1, 2, 3)), expected, atol=1e-5)


def _seeded(transform, clip: torch.Tensor, seed: int) -> torch.Tensor:
    import random

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    return transform(clip)


def test_rand_augment_is_applied_consistently_across_a_clips_frames() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(0, 256, (1, 48, 64, 3), dtype=torch.uint8, generator=g) for _ in range(2))
    mixed = torch.cat([a, b, a])  # frames A, B, A
    transform = VideoTrainTransform(32, short_side=(40, 48), auto_augment="rand-m9-n3-mstd0.5-inc1")
    plain = VideoTrainTransform(32, short_side=(40, 48))
    changed = 0
    for seed in range(12):
        out = _seeded(transform, mixed, seed)
        assert out.shape == (3, 3, 32, 32)
        assert torch.equal(out[:, 0], out[:, 2])  # the same frame gets the same operations, wherever it is
        # each frame is what the same draw gives on a clip of that frame alone: the draws ignore the pixels
        assert torch.equal(out[:, 1], _seeded(transform, b.expand(3, -1, -1, -1), seed)[:, 1])
        changed += not torch.equal(out, _seeded(plain, mixed, seed))
    assert changed >= 10  # RandAugment did change the clips (3 ops at magnitude ~9; few draws are identities)


def test_random_erasing_cuts_the_same_box_through_every_frame() -> None:
    torch.manual_seed(0)
    for _ in range(20):
        clip = torch.zeros(3, 4, 40, 50)
        erase_cube(clip)
        erased = clip.ne(0).any(0)  # (T, H, W)
        assert torch.equal(erased, erased[:1].expand_as(erased))  # the same pixels in every frame
        rows, cols = erased[0].any(1).nonzero(), erased[0].any(0).nonzero()
        h, w = len(rows), len(cols)
        assert int(erased[0].sum()) == h * w and 0.015 * 2000 <= h * w <= 2000 / 3 + 60  # one box, area 2%-1/3
        assert rows.max() - rows.min() + 1 == h and cols.max() - cols.min() + 1 == w
    transform = VideoTrainTransform(32, short_side=(40, 48), reprob=1.0)
    grey = torch.full((4, 48, 64, 3), 128, dtype=torch.uint8)
    torch.manual_seed(1)
    out = transform(grey)
    assert out[:, 0].std() > 0.1 and torch.equal(out[:, 0], out[:, 3])


def test_train_transform_crop_geometry() -> None:
    transform = VideoTrainTransform(224, short_side=(256, 320), scale=(0.5, 1.0))
    torch.manual_seed(0)
    for _ in range(200):
        top, left, h, w, _flip = transform.get_params(256, 340)
        assert 0 <= top and top + h <= 256 and 0 <= left and left + w <= 340
        assert 0.45 <= h * w / (256 * 340) <= 1.0  # relative area in (0.5, 1), up to rounding
    fixed = VideoTrainTransform(224, short_side=(256, 320), scale=None)  # SlowFast's classic jitter + crop
    for _ in range(50):
        top, left, h, w, _flip = fixed.get_params(256, 340)
        side = 224 * 256 / h  # the jittered short side this box corresponds to
        assert 254 <= side <= 322 and abs(w - h) <= 2


def test_eval_transform_views() -> None:
    clip = torch.arange(6 * 240 * 320, dtype=torch.int64).remainder(256).to(torch.uint8).view(6, 240, 320, 1)
    clip = clip.expand(-1, -1, -1, 3).contiguous()
    views = VideoEvalTransform(224, num_crops=3)(clip)
    assert views.shape == (3, 3, 6, 224, 224)
    assert not torch.equal(views[0], views[2])  # left and right crops differ
    assert VideoEvalTransform(224, num_crops=1)(clip).shape == (1, 3, 6, 224, 224)
    assert spatial_crop_offsets(299, 224, 3) == [0, 38, 75]
    assert spatial_crop_offsets(299, 224, 1) == [38]
    tall = torch.zeros(2, 300, 200, 3, dtype=torch.uint8)
    assert VideoEvalTransform(112, num_crops=3)(tall).shape == (3, 3, 2, 112, 112)


@needs_videos
def test_dataset_train_item_is_deterministic_per_seed() -> None:
    root = VIDEOS
    dataset = VideoDataset(
        root, num_frames=16, stride=4, transform=VideoTrainTransform(112, short_side=(128, 160)), mode="train"
    )
    assert len(dataset) == 4 and dataset.num_classes == 0  # a flat folder: unlabeled
    a = dataset[(0, 1234)]
    assert a["image"].shape == (3, 16, 112, 112) and a["label"] == -1 and a["seed"] == 1234
    state = torch.get_rng_state()
    b = dataset[(0, 1234)]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left as it was
    assert torch.equal(a["image"], b["image"])
    assert not torch.equal(a["image"], dataset[(0, 1235)]["image"])
    sampler = SeededSampler(len(dataset), seed=3)
    keys = list(sampler)
    assert torch.equal(dataset[keys[0]]["image"], dataset[keys[0]]["image"])


@needs_videos
def test_repeated_augmentation_gives_several_clips_of_one_decode() -> None:
    transform = VideoTrainTransform(48, short_side=(56, 64))
    dataset = VideoDataset(VIDEOS, num_frames=4, stride=2, transform=transform, repeats=3)
    item = dataset[(0, 77)]
    assert item["image"].shape == (3, 3, 4, 48, 48) and item["repeats"] == 3
    assert not torch.equal(item["image"][0], item["image"][1])  # independently augmented
    batch = MaskCollator("cube", (2, 3, 3), 0.4)([item, dataset[(1, 5)]])
    assert batch["images"].shape == (6, 3, 4, 48, 48) and batch["labels"].tolist() == [-1] * 6
    assert batch["masks"].shape == (6, 2, 3, 3) and not torch.equal(batch["masks"][0], batch["masks"][1])
    assert torch.equal(batch["images"][3:], dataset[(1, 5)]["image"])  # the second video's clips, in order
    with pytest.raises(ValueError, match="mode='train' only"):
        VideoDataset(VIDEOS, mode="eval", repeats=2)


@needs_videos
def test_dataset_eval_multi_view() -> None:
    dataset = VideoDataset(VIDEOS, num_frames=8, stride=2, mode="eval", num_clips=2, num_crops=3, crop_size=64)
    item = dataset[(1, 99)]
    assert item["image"].shape == (6, 3, 8, 64, 64) and item["video_index"] == 1
    again = dataset[(1, 5)]
    assert torch.equal(item["image"], again["image"])  # evaluation views do not depend on the seed
    single = VideoDataset(VIDEOS, num_frames=8, stride=2, mode="eval", crop_size=64)
    assert single[0]["image"].shape == (3, 8, 64, 64)
    with pytest.raises(ValueError, match="mode='eval' only"):
        VideoDataset(VIDEOS, mode="train", num_clips=2)
    # The centre single view is the middle clip of the multi-view's 3 crops when clips agree.
    centre = VideoDataset(VIDEOS, num_frames=8, stride=2, mode="eval", num_clips=1, num_crops=3, crop_size=64)
    assert torch.equal(centre[1]["image"][1], single[1]["image"])


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


def test_an_unusable_torchcodec_is_refused_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(video, "torchcodec_available", lambda: False)  # as on a machine without it
    with pytest.raises(ValueError, match="video backend 'torchcodec' cannot decode here.*use 'pyav'"):
        VideoDataset(tmp_path, backend="torchcodec")
