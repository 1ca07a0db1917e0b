"""Tests of maskfeat.data.video: the VideoDataset (bad files, seeded items, repeated augmentation, views)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from video_helpers import (
    VIDEOS,
    fresh_warnings,  # noqa: F401 (autouse fixture)
    link,
    log_messages,
    needs_videos,
)

import maskfeat.data.video as video
from maskfeat.data.collate import MaskCollator
from maskfeat.data.images import SeededSampler
from maskfeat.data.video import (
    VideoDataset,
    scan_video_source,
)
from maskfeat.data.video_transforms import VideoTrainTransform


@needs_videos
def test_folder_with_broken_and_truncated_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "kinetics"
    link(VIDEOS / "h264_340x256_280f.mp4", root / "archery" / "a.mp4")
    link(VIDEOS / "h264_340x256_32f.mp4", root / "archery" / "b.MP4")  # extension case does not matter
    link(VIDEOS / "mpeg4_320x240_164f.avi", root / "bowling" / "c.avi")
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
    messages = log_messages(caplog)
    for bad in (broken, truncated):
        lines = [m for m in messages if str(bad) in m]
        assert len(lines) == 1 and lines[0].startswith("skipped unreadable video") and "\n" not in lines[0]

    # The collator drops the None items and stacks video clips.
    batch = MaskCollator("cube", (2, 2, 2), 0.5)(items)
    assert batch["images"].shape == (3, 3, 4, 32, 32) and batch["num_bad"] == 2
    assert batch["masks"].shape == (3, 2, 2, 2)


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


def test_an_unusable_torchcodec_is_refused_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(video, "torchcodec_available", lambda: False)  # as on a machine without it
    with pytest.raises(ValueError, match="video backend 'torchcodec' cannot decode here.*use 'pyav'"):
        VideoDataset(tmp_path, backend="torchcodec")
