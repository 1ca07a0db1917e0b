"""maskfeat detect: the box head on a known feature map, boxes moved with the frames, the whole-frame evaluation view
(wide and upright videos, padded batches), the AVA readers, and tiny end-to-end runs that write mAP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import maskfeat, rows
from torchvision.transforms.v2 import functional as TF

from maskfeat.data.ava import AvaFolder, read_exclusions, read_keyframes, read_label_map
from maskfeat.data.ava_clips import AvaDataset, BoxClipTransform, collate_detections, flip_boxes
from maskfeat.data.decode import decode_frames, probe_video
from maskfeat.data.sample import _write_mp4
from maskfeat.data.sample_ava import FPS, sample_ava_folder
from maskfeat.evaluation.ava import frame_map
from maskfeat.models.detector import ActionDetector
from maskfeat.models.registry import create_encoder, video_encoder_args


class GridEncoder(torch.nn.Module):
    """A stand-in encoder whose tokens are a given feature map (C, T', H', W'), class token first."""

    num_prefix_tokens, num_features = 1, 2

    def __init__(self, fmap: torch.Tensor, clip_size=(4, 64, 64)):
        super().__init__()
        self.fmap, self.clip_size, self.output_grid = fmap, clip_size, tuple(fmap.shape[1:])

    def forward_features(self, x):
        tokens = self.fmap.flatten(1).T[None].expand(len(x), -1, -1)  # (B, T'H'W', C)
        return torch.cat([torch.full_like(tokens[:, :1], 1e6), tokens], dim=1)  # the class token must be dropped


def test_roi_head_pools_the_time_averaged_map_inside_each_box():
    t, h, w = 2, 4, 4  # stride 16 on 64 x 64 clips
    fmap = torch.zeros(2, t, h, w)
    fmap[0, 0, 1, 2] = 4.0  # cell (row 1, col 2): pixels x 32..48, y 16..32; averaged over time -> 2
    fmap[1] = torch.arange(h * w, dtype=torch.float).view(h, w)  # channel 1: a ramp, the same at every time
    det = ActionDetector(GridEncoder(fmap), num_classes=3, dropout=0.0)
    assert det.stride == 16
    boxes = torch.tensor([[0, 32, 16, 48, 32], [0, 0, 0, 16, 16], [1, 0, 0, 64, 64.0]])  # (batch index, x1 y1 x2 y2)
    pooled = det.pool(det.feature_map(torch.zeros(2, 3, 4, 64, 64)), boxes)
    assert pooled.shape == (3, 2)
    # aligned RoIAlign: the box is x 1.5..2.5, y 0.5..1.5 in cell-centre coordinates, one sample at each of the 7 x 7
    # bin centres; the middle sample is the cell's centre (the delta's value), the last the ramp's largest
    last_x, last_y = 1.5 + 6.5 / 7, 0.5 + 6.5 / 7
    assert pooled[0].tolist() == pytest.approx([2.0, 4 * last_y + last_x])
    assert pooled[1].tolist() == pytest.approx([0.0, 5 * (-0.5 + 6.5 / 7)])  # cell (0, 0): the delta is not in it
    assert pooled[2, 1] == pytest.approx(15.0, abs=1e-5)  # the whole clip: the ramp's maximum
    logits = det(torch.zeros(2, 3, 4, 64, 64), boxes)
    assert logits.shape == (3, 3)
    assert det.token_grid(torch.zeros(1, 3, 4, 64, 128)) == (2, 4, 8)  # the grid follows the input's shape
    with pytest.raises(ValueError, match=r"32 tokens for clips of \(4, 64, 128\).*2x4x8 grid"):
        det.feature_map(torch.zeros(1, 3, 4, 64, 128))  # this encoder's tokens are always 2x4x4


@pytest.mark.parametrize("name, stride", [("vit_s", 16), ("mvit_v2_s", 32)])
def test_detector_on_our_encoders_gives_one_logit_row_per_box_and_trains(name, stride):
    sizes = {"embed_dim": 16, "num_heads": 1} if name.startswith("mvit") else {"embed_dim": 32, "depth": 1,
                                                                                "num_heads": 2}  # fmt: skip
    if name.startswith("mvit"):
        sizes.update(depths=[1, 1, 1, 1], global_pool="avg", fc_norm=False)
    encoder = create_encoder(name, video_encoder_args(name, img_size=64, num_frames=4, **sizes))
    det = ActionDetector(encoder, num_classes=5)
    assert det.stride == stride
    boxes = torch.tensor([[0, 1, 2, 30, 40], [1, 10, 10, 60, 60], [1, 0, 0, 64, 64.0]])
    logits = det(torch.randn(2, 3, 4, 64, 64), boxes)
    assert logits.shape == (3, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in det.parameters() if p.requires_grad)


def test_flip_moves_boxes_with_the_frames():
    boxes = torch.tensor([[10.0, 5.0, 30.0, 50.0]])
    assert flip_boxes(boxes, 96).tolist() == [[66.0, 5.0, 86.0, 50.0]]
    # a bright box in the clip is found at its flipped box after a flip (the transform draws the flip itself)
    clip = torch.zeros(4, 96, 96, 3, dtype=torch.uint8)
    clip[:, 20:60, 10:30] = 255
    transform = BoxClipTransform(96, train=True, short_side=(96, 96), hflip=1.0)
    image, moved = transform(clip, np.array([[10 / 96, 20 / 96, 30 / 96, 60 / 96]]))
    x1, y1, x2, y2 = (int(round(v)) for v in moved[0].tolist())
    assert (x1, y1, x2, y2) == (66, 20, 86, 60)
    assert image[:, :, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].min() > 1.5  # normalised white inside
    assert image[:, :, :, :60].max() < -1.5  # and black where the box was before the flip


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_ava_readers(tmp_path):
    _write(tmp_path / "map.pbtxt", ["item {", '  name: "walk"', "  id: 3", "}", 'item { name: "sit" id: 1 }'])
    assert read_label_map(str(tmp_path / "map.pbtxt")) == {1: "sit", 3: "walk"}
    _write(tmp_path / "gt.csv", ["-5KQ66BBWC4,0902,0.1,0.2,0.3,0.4,3,0",
                                 "-5KQ66BBWC4,0902,0.1,0.2,0.3,0.4,1,0",  # the same box: a second action
                                 "-5KQ66BBWC4,0902,0.5,0.5,0.9,0.9,77,1",  # an action not in the label map
                                 "-5KQ66BBWC4,0903,0.1,0.2,0.3,0.4,1,0",  # excluded
                                 "abc,0904,0.0,0.0,1.0,1.0,3,0"])  # fmt: skip
    _write(tmp_path / "excl.csv", ["-5KQ66BBWC4,0903"])
    exclusions = read_exclusions(str(tmp_path / "excl.csv"))
    assert exclusions == {("-5KQ66BBWC4", 903)}
    frames = read_keyframes(str(tmp_path / "gt.csv"), {1: "sit", 3: "walk"}, exclusions)
    assert [(k.video_id, k.timestamp) for k in frames] == [("-5KQ66BBWC4", 902), ("abc", 904)]
    assert frames[0].boxes[0].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4]) and frames[0].actions == [[3, 1]]
    _write(tmp_path / "pred.csv", ["-5KQ66BBWC4,0902,0.1,0.2,0.3,0.4,,0.95", "-5KQ66BBWC4,0902,0.5,0.5,0.6,0.6,,0.5"])
    (pred,) = read_keyframes(str(tmp_path / "pred.csv"), score_threshold=0.8)
    assert pred.boxes.shape == (1, 4) and pred.scores.tolist() == pytest.approx([0.95])


@pytest.fixture(scope="module")
def ava(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ava")
    return (Path(sample_ava_folder(str(root / "train"), "train", num_videos=4, seed=3)),
            Path(sample_ava_folder(str(root / "val"), "val", num_videos=2, seed=3)))  # fmt: skip


def test_ava_folder_finds_videos_with_dash_ids_and_gives_clips_with_boxes(ava):
    train = AvaFolder(str(ava[0]), "train")
    assert any(v.startswith("-") for v in train.videos) and len(train.videos) == 4
    frames = train.keyframes()
    dataset = AvaDataset(frames, train.videos, list(train.label_map), 4, 2, BoxClipTransform(64, train=False))
    batch = collate_detections([dataset[0], dataset[1], {"unreadable": "x.mp4"}])
    assert batch["images"].shape == (2, 3, 4, 64, 64) and batch["num_bad"] == 1
    k = len(frames[0].boxes) + len(frames[1].boxes)
    assert batch["boxes"].shape == (k, 5) and batch["labels"].shape == (k, 6)
    assert batch["boxes"][:, 0].tolist() == [0.0] * len(frames[0].boxes) + [1.0] * len(frames[1].boxes)
    assert batch["boxes"][0, 1:].tolist() == pytest.approx((frames[0].boxes[0] * 64).tolist(), abs=1e-4)
    assert (batch["labels"].sum(1) >= 1).all()
    val = AvaFolder(str(ava[1]), "val")
    assert val.exclusions and len(val.keyframes(predicted=True)) == len(val.keyframes()) == 2 * 3 - 1


def _stretched(src: Path, dst: Path, height: int, width: int) -> Path:
    """A copy of the AVA-format folder ``src`` whose videos are stretched to ``height`` x ``width`` (the [0, 1] boxes
    of its CSV files stay right)."""
    shutil.copytree(src, dst)
    for video in dst.glob("*.mp4"):
        frames = decode_frames(video, range(probe_video(video).num_frames))  # (T, H, W, 3) uint8
        frames = TF.resize(frames.permute(0, 3, 1, 2), [height, width], antialias=True).permute(0, 2, 3, 1)
        _write_mp4(str(video), list(frames.numpy()), fps=FPS)
    return dst


@pytest.fixture(scope="module")
def wide_val(ava, tmp_path_factory) -> Path:
    """The generated validation set filmed 16:9 (96 x 170 frames)."""
    return _stretched(ava[1], tmp_path_factory.mktemp("wide") / "val", 96, 170)


@pytest.fixture(scope="module")
def tall_val(ava, tmp_path_factory) -> Path:
    """The generated validation set filmed upright (150 x 96 frames)."""
    return _stretched(ava[1], tmp_path_factory.mktemp("tall") / "val", 150, 96)


def _clips(folder: Path, view: str) -> AvaDataset:
    val = AvaFolder(str(folder), "val")
    transform = BoxClipTransform(64, train=False, view=view)
    return AvaDataset(val.keyframes(predicted=True), val.videos, list(val.label_map), 4, 2, transform)


def test_full_view_keeps_every_box_of_a_wide_frame_where_the_centre_view_clips_the_sides(wide_val):
    full, centre = _clips(wide_val, "full"), _clips(wide_val, "center")
    frames = full.keyframes
    index = max(range(len(frames)), key=lambda i: frames[i].boxes[:, 2].max())  # the keyframe of the rightmost box
    right = int(frames[index].boxes[:, 2].argmax())
    x1, x2 = (frames[index].boxes[right, [0, 2]] * 170).tolist()
    assert x2 > (170 + 96) / 2 + 8  # it reaches well past the right edge of the centre square (frame pixels)
    item = full[index]
    assert item["image"].shape == (3, 4, 64, 113)  # short side 96 -> 64, long side 170 -> floor(113.3)
    scaled = item["norm_boxes"] * torch.tensor([113, 64, 113, 64.0])
    assert torch.allclose(item["boxes"], scaled, atol=1e-4)  # every box scaled with the frame, none clipped
    resized = TF.resize(full.clip(index).permute(0, 3, 1, 2), [64, 113], antialias=True)
    assert torch.equal(item["image"], full.transform.params.normalize(resized))  # the whole frame, no crop
    cropped = centre[index]
    assert cropped["image"].shape == (3, 4, 64, 64)
    scale = 64 / 96  # the centre square is frame pixels 37..133, at 64 / 96
    assert cropped["boxes"][right, 2] == 64 and (x2 - 37) * scale > 64 + 5  # clipped at the crop's edge
    assert cropped["boxes"][right, 2] - cropped["boxes"][right, 0] < (x2 - x1) * scale - 5


@pytest.mark.parametrize("name", ["vit_s", "mvit_v2_s"])
def test_two_aspect_ratios_collate_padded_and_the_detector_gives_one_logit_row_per_box(wide_val, tall_val, name):
    items = [_clips(wide_val, "full")[0], _clips(tall_val, "full")[1]]
    assert [tuple(it["image"].shape[2:]) for it in items] == [(64, 113), (100, 64)]
    sizes = {"embed_dim": 16, "num_heads": 1, "depths": [1, 1, 1, 1], "global_pool": "avg", "fc_norm": False}
    if name == "vit_s":
        sizes = {"embed_dim": 32, "depth": 1, "num_heads": 2}
    det = ActionDetector(create_encoder(name, video_encoder_args(name, img_size=64, num_frames=4, **sizes)), 6)
    stride = det.strides[1]
    batch = collate_detections(items, size_divisibility=stride)
    height, width = -(-100 // stride) * stride, -(-113 // stride) * stride  # 112 x 128 (ViT), 128 x 128 (MViT)
    images = batch["images"]
    assert images.shape == (2, 3, 4, height, width)
    for image, item in zip(images, items):  # each clip at the top left, zeros (the mean colour) below and right
        h, w = item["image"].shape[2:]
        assert torch.equal(image[..., :h, :w], item["image"])
        assert not image[..., h:, :].any() and not image[..., w:].any()
    assert torch.equal(batch["boxes"][:, 1:], torch.cat([it["boxes"] for it in items]))  # padding moves no box
    assert det.token_grid(images) == (2, height // stride, width // stride)
    logits = det.eval()(images, batch["boxes"])
    assert logits.shape == (len(batch["boxes"]), 6) and torch.isfinite(logits).all()


def test_frame_map_placeholder_perfect_and_chance(ava):
    val = AvaFolder(str(ava[1]), "val")
    gt = [line.split(",") for line in Path(val.groundtruth).read_text().splitlines()]
    det = ava[1] / "det.csv"
    _write(det, [",".join([*r[:7], "1.0"]) for r in gt])
    assert frame_map(val.groundtruth, str(det), val.label_map_path)["mAP"] == pytest.approx(1.0)
    _write(det, [",".join([*r[:6], str(int(r[6]) % 6 + 1), "1.0"]) for r in gt])  # every action wrong
    assert frame_map(val.groundtruth, str(det), val.label_map_path)["mAP"] < 0.5


def test_detect_command_writes_map(ava, tmp_path):
    out = tmp_path / "run"
    r = maskfeat("detect", f"data.path={ava[0]}", f"data.val_path={ava[1]}", f"output_dir={out}", "model.name=vit_s",
                 "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "data.image_size=64", "video.num_frames=4",
                 "video.frame_stride=2", "video.short_side=[64,72]", "train.batch_size=4", "train.epochs=2",
                 "train.warmup_epochs=1", "data.num_workers=0", "detect.box_jitter=0.05",
                 "train.log_every=1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    evals = [m for m in rows(out / "metrics.jsonl") if "mAP" in m]
    assert len(evals) == 2 and all(0 <= m["mAP"] <= 100 and 0 <= m["chance_mAP"] <= 100 for m in evals)
    assert "frame mAP@0.5" in r.stderr and "chance" in r.stderr
    lines = (out / "detections.csv").read_text().splitlines()
    assert len(lines) == 6 * sum(len(k.boxes) for k in AvaFolder(str(ava[1]), "val").keyframes(predicted=True))
    per_class = json.loads((out / "ava_per_class.json").read_text())
    assert per_class["mAP"] * 100 == pytest.approx(evals[-1]["mAP"])
    best = torch.load(out / "checkpoint-best.pt", weights_only=False)
    assert best["best"]["mAP"] == max(m["mAP"] for m in evals) and best["classifier"] == "detect"


def test_detect_command_with_the_full_view_writes_map(ava, wide_val, tmp_path):
    out = tmp_path / "run"
    r = maskfeat("detect", f"data.path={ava[0]}", f"data.val_path={wide_val}", f"output_dir={out}", "model.name=vit_s",
                 "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "data.image_size=64", "video.num_frames=4",
                 "video.frame_stride=2", "video.short_side=[64,72]", "train.batch_size=4", "train.epochs=1",
                 "train.warmup_epochs=0", "data.num_workers=0", "detect.eval_view=full")  # fmt: skip
    assert r.returncode == 0, r.stderr
    (evaluation,) = [m for m in rows(out / "metrics.jsonl") if "mAP" in m]
    assert 0 <= evaluation["mAP"] <= 100 and "frame mAP@0.5" in r.stderr
    lines = (out / "detections.csv").read_text().splitlines()
    assert len(lines) == 6 * sum(len(k.boxes) for k in AvaFolder(str(wide_val), "val").keyframes(predicted=True))
    assert "eval_view: full" in (out / "config.yaml").read_text()


def test_detect_needs_a_video_encoder():
    r = maskfeat("detect", "model.name=vit_tiny_patch16_224")
    assert r.returncode == 2 and "detect needs a video encoder" in r.stderr
