"""Tests of maskfeat.data.sources: video lists (CSV / Kinetics), flat folders, single files; image folders."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from PIL import Image
from video_helpers import (
    VIDEOS,
    encode,
    fresh_warnings,  # noqa: F401 (autouse fixture)
    link,
    log_messages,
    needs_videos,
)

from maskfeat.data.images import ImageDataset
from maskfeat.data.sources import DataError, scan_image_folder, scan_video_source
from maskfeat.data.transforms import pretrain_transform
from maskfeat.data.video import VideoDataset
from maskfeat.data.video_transforms import VideoTrainTransform


@needs_videos
def test_csv_and_space_separated_lists(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clips = tmp_path / "clips"
    link(VIDEOS / "h264_340x256_32f.mp4", clips / "x.mp4")
    link(VIDEOS / "mpeg4_320x240_164f.avi", clips / "sub dir" / "y.avi")
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
    assert any("missing.mp4" in m and "train.csv line 6" in m for m in log_messages(caplog))

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
    encode(tmp_path / "one.avi", "mpeg4", 6, (32, 32), 10)
    encode(tmp_path / "two.AVI", "mpeg4", 6, (32, 32), 10)
    files, labels, classes = scan_video_source(tmp_path)
    assert [os.path.basename(f) for f in files] == ["one.avi", "two.AVI"] and labels == [-1, -1] and classes == []
    assert scan_video_source(tmp_path / "one.avi") == ([str(tmp_path / "one.avi")], [-1], [])


def test_scan_image_folder_layouts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tiny = Image.new("RGB", (4, 4))
    # ImageFolder, with nested files, hidden entries and mixed-case extensions
    for cls in ("dog", "cat"):
        (tmp_path / "tree" / cls / "sub").mkdir(parents=True)
        tiny.save(tmp_path / "tree" / cls / "b.JPG", format="JPEG")
        tiny.save(tmp_path / "tree" / cls / "sub" / "a.png")
        tiny.save(tmp_path / "tree" / cls / ".hidden.png")
        (tmp_path / "tree" / cls / "notes.txt").write_text("x")
    (tmp_path / "tree" / ".cache" / "x").mkdir(parents=True)
    tiny.save(tmp_path / "tree" / ".cache" / "x" / "c.png")
    files, labels, classes = scan_image_folder(tmp_path / "tree")
    assert classes == ["cat", "dog"]
    assert labels == [0, 0, 1, 1]
    assert [os.path.relpath(f, tmp_path / "tree") for f in files] == [
        "cat/b.JPG",
        "cat/sub/a.png",
        "dog/b.JPG",
        "dog/sub/a.png",
    ]
    assert all(os.path.isabs(f) for f in files)

    # loose top-level images next to class folders: ignored with a warning
    tiny.save(tmp_path / "tree" / "loose.png")
    with caplog.at_level(logging.WARNING, logger="maskfeat"):
        files2, _, _ = scan_image_folder(tmp_path / "tree")
    assert files2 == files
    assert any("1 image file(s) at the top level" in r.getMessage() for r in caplog.records)

    # flat folder
    (tmp_path / "flat").mkdir()
    for name in ("z.webp", "a.jpeg", ".x.png"):
        tiny.save(tmp_path / "flat" / name)
    files, labels, classes = scan_image_folder(str(tmp_path / "flat"))
    assert [Path(f).name for f in files] == ["a.jpeg", "z.webp"]
    assert labels == [-1, -1] and classes == []
    dataset = ImageDataset(tmp_path / "flat", pretrain_transform(8))
    assert dataset.num_classes == 0 and dataset[0]["label"] == -1


def test_scan_image_folder_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as info:
        scan_image_folder(missing)
    assert str(missing) in str(info.value)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no image files") as info:
        scan_image_folder(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value) and ".jpg" in str(info.value)
    (tmp_path / "file.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="not a directory"):
        scan_image_folder(tmp_path / "file.jpg")
    assert issubclass(DataError, ValueError)
