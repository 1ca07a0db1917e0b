"""Video MaskFeat through the command line: real clips (several containers, codecs, sizes), a broken file,
pre-training then fine-tuning with multi-view evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA
from safetensors.torch import load_file
from test_cli import maskfeat, rows

from maskfeat.data import sample_video_folder
from maskfeat.models.registry import create_encoder

REAL = SHARED_DATA / "videos"
TINY_VIDEO = ["model.name=vit_s", "model.depth=1", "model.embed_dim=32", "model.num_heads=2", "data.image_size=32",
              "video.num_frames=4", "video.frame_stride=2", "video.short_side=[36,44]", "train.batch_size=4",
              "train.log_every=2", "data.num_workers=0", "train.warmup_epochs=1"]  # fmt: skip


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Class folders of generated MP4 clips, plus the real shared clips (when present) and a broken file."""
    root = tmp_path_factory.mktemp("clips")
    train = Path(sample_video_folder(root=str(root / "train"), split="train", clips_per_class=3, frames=12, size=40))
    sample_video_folder(root=str(root / "val"), split="val", clips_per_class=1, frames=12, size=40)
    if REAL.is_dir():
        for i, clip in enumerate(sorted(REAL.iterdir())):  # MP4/H.264 and AVI/MPEG-4, 340x256 and 320x240
            shutil.copy(clip, train / ("pan_left", "zoom_in")[i % 2] / clip.name)
    (train / "pan_up" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video at all")
    return root


def test_video_pretrain_then_finetune_with_multiview_evaluation(clips, tmp_path):
    pre = tmp_path / "pre"
    r = maskfeat("pretrain", *TINY_VIDEO, f"data.path={clips / 'train'}", f"output_dir={pre}", "train.epochs=1",
                 "data.max_bad_fraction=0.2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"skipped unreadable video {clips / 'train' / 'pan_up' / 'broken.mp4'}" in r.stderr
    assert "2x2x2 tokens" in r.stderr  # (T/2, H/16, W/16) output grid
    metrics = rows(pre / "metrics.jsonl")
    assert metrics and all(m["loss"] > 0 for m in metrics) and metrics[-1]["bad_images"] >= 1
    meta = json.loads((pre / "encoder.json").read_text())
    assert meta["architecture"] == "vit_s"
    assert meta["pretrained_cfg"] == {"input_size": [3, 32, 32], "mean": [0.45, 0.45, 0.45],  # SlowFast's Kinetics
                                      "std": [0.225, 0.225, 0.225], "interpolation": "bilinear", "crop_pct": 1.0,
                                      "num_frames": 4, "frame_stride": 2, "num_classes": 0}  # fmt: skip
    encoder = create_encoder(meta["architecture"], meta["model_args"])
    encoder.load_state_dict(load_file(pre / "encoder.safetensors"), strict=True)  # the exported loader rebuilds it

    ft = tmp_path / "ft"
    r = maskfeat("finetune", *TINY_VIDEO, f"data.path={clips / 'train'}", f"data.val_path={clips / 'val'}",
                 f"output_dir={ft}", "train.epochs=1", f"model.checkpoint={pre / 'encoder.safetensors'}",
                 "video.num_clips=2", "video.num_crops=3", "data.max_bad_fraction=0.2",
                 "video.repeated_aug=2", "data.auto_augment=rand-m7-n4-mstd0.5-inc1", "data.reprob=0.25")  # fmt: skip
    assert r.returncode == 0, r.stderr
    n_train = sum(1 for p in (clips / "train").rglob("*.*") if p.parent != clips / "train")  # videos (+ broken)
    # repeated augmentation: batches of 4 clips are 2 videos x 2 augmentations, so an epoch has n // 2 steps
    assert rows(ft / "metrics.jsonl")[-2]["step"] == n_train // 2
    (ev,) = [m for m in rows(ft / "metrics.jsonl") if "top1" in m]
    assert ev["top1"] * 6 / 100 == pytest.approx(round(ev["top1"] * 6 / 100))  # k of 6 val videos, one score each
    state = torch.load(ft / "checkpoint-last.pt", weights_only=True)
    assert state["classifier"] == "finetune" and state["encoder"]["model_args"]["num_classes"] == 6


def test_mvit_pretrain_variant_loads_into_the_finetune_variant(clips, tmp_path):
    tiny = [a for a in TINY_VIDEO if not a.startswith(("model.name", "model.depth", "model.embed_dim",
                                                        "model.num_heads"))]  # fmt: skip
    tiny += ["model.name=mvit_v2_s", "model.embed_dim=8", "model.num_heads=1", "data.max_bad_fraction=0.2"]
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    r = maskfeat("pretrain", *tiny, f"data.path={clips / 'train'}", f"output_dir={pre}", "train.epochs=1")
    assert r.returncode == 0, r.stderr
    r = maskfeat("finetune", *tiny, f"data.path={clips / 'train'}", f"data.val_path={clips / 'val'}",
                 f"output_dir={ft}", "train.epochs=1", f"model.checkpoint={pre / 'checkpoint-last.pt'}")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "loaded pre-trained MViT" in r.stderr and "(new: head.1.bias, head.1.weight)" in r.stderr


def test_video_pretrain_with_the_pixel_target(clips, tmp_path):
    out = tmp_path / "pixel"
    # the generated clips alone (a user's clone has no shared clips) make 18 videos: enough for 2 steps of 4
    r = maskfeat("pretrain", *TINY_VIDEO, f"data.path={clips / 'train'}", f"output_dir={out}", "target.name=pixel",
                 "train.max_steps=2", "train.log_every=1", "data.max_bad_fraction=0.2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "target pixel 1536-d" in r.stderr  # 2 frames x 16 x 16 pixels x 3 colours per token
    assert " clips/s " in r.stderr and "img/s" not in r.stderr  # a video model trains on clips
    losses = [m["loss"] for m in rows(out / "metrics.jsonl")]
    assert len(losses) == 2 and all(0.5 < v < 3 for v in losses)  # normalised pixels: about 1 before training
