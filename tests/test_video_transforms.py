"""Tests of maskfeat.data.video_transforms: one draw per clip, RandAugment across frames, random erasing, views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from video_helpers import (
    fresh_warnings,  # noqa: F401 (autouse fixture)
)

from maskfeat.data.video_transforms import VideoEvalTransform, VideoTrainTransform, erase_clip, spatial_crop_offsets


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
    eraser = VideoTrainTransform(32, reprob=1.0).erasing  # torchvision's RandomErasing, as the transform uses it
    torch.manual_seed(0)
    for _ in range(20):
        clip = erase_clip(torch.zeros(3, 4, 40, 50), eraser)
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


def test_clips_are_normalised_with_slowfasts_kinetics_mean_and_std():
    """A clip of grey 0.45 * 255 is ~0 everywhere after either transform; white is (1 - 0.45) / 0.225."""

    for value, expected in ((round(0.45 * 255), 0.0), (255, (1 - 0.45) / 0.225)):
        clip = torch.full((4, 40, 48, 3), value, dtype=torch.uint8)
        for transform in (VideoTrainTransform(32, short_side=(36, 40)), VideoEvalTransform(32)):
            out = transform(clip)
            assert out.abs().max().item() == pytest.approx(abs(expected), abs=0.02), (transform, value)
