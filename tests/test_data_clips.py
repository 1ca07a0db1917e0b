"""Tests of maskfeat.data.clips: clip sampling, short-clip stride lowering and looping."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from video_helpers import (
    VIDEOS,
    fresh_warnings,  # noqa: F401 (autouse fixture)
    log_messages,
    needs_videos,
    reference_frames,
)

from maskfeat.data.clips import clip_indices, fit_clip_stride, random_clip_start, uniform_clip_starts
from maskfeat.data.decode import decode_clip


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


@needs_videos
def test_short_clip_lowers_the_stride_or_loops_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    path = VIDEOS / "h264_340x256_32f.mp4"
    reference = reference_frames(path)
    assert fit_clip_stride(32, 16, 4) == (2, False)  # 16 x 4 spans 61 frames: stride 2 spans 31
    with caplog.at_level(logging.WARNING, logger="maskfeat"):
        clip = decode_clip(path, 16, 4, start=5)
        decode_clip(path, 16, 4, start=0)  # warned once per file
    assert clip.shape == (16, 256, 340, 3)
    assert np.array_equal(clip.numpy(), reference[1 + 2 * np.arange(16)])  # start clamped to the last valid, 1
    messages = [m for m in log_messages(caplog) if str(path) in m]
    assert len(messages) == 1 and "stride lowered to 2" in messages[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="maskfeat"):
        looped = decode_clip(path, 40, 4)
    assert np.array_equal(looped.numpy(), reference[np.arange(40) % 32])
    assert any(str(path) in m and "looping" in m for m in log_messages(caplog))


def _reference_segments(n: int, num_frames: int, train_draw=None) -> list[int]:
    """The formula of Something-Something v2 segment sampling, written out: segment i spans
    round(i * (n - 1) / T) .. round((i + 1) * (n - 1) / T); evaluation takes its middle."""
    size = (n - 1) / num_frames
    out = []
    for i in range(num_frames):
        start, end = int(np.round(size * i)), int(np.round(size * (i + 1)))
        out.append(train_draw(start, end) if train_draw else (start + end) // 2)
    return out


@pytest.mark.parametrize("n", [1, 5, 16, 17, 48, 97, 300])
def test_segment_sampling_takes_one_frame_from_each_equal_segment(n):
    from maskfeat.data.clips import segment_indices

    assert segment_indices(n, 16, train=False).tolist() == _reference_segments(n, 16)
    seen = np.zeros(n, dtype=bool)
    for seed in range(200):
        idx = segment_indices(n, 16, train=True, generator=torch.Generator().manual_seed(seed))
        bounds = _reference_segments(n, 16, train_draw=lambda s, e: (s, e))
        assert all(s <= i <= e for i, (s, e) in zip(idx.tolist(), bounds)) and (np.diff(idx) >= 0).all()
        seen[idx] = True
    assert seen.all()  # every frame can be drawn (uniform within the segments, ends included)
