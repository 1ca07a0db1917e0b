"""maskfeat detect on data it has never seen: AVA folders of extracted frames (the official layout, timestamps from
second 900), another label map (other ids, a class left out), a run stopped mid-epoch, and the evaluation of its
checkpoint by ``maskfeat evaluate``."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_cli import ROOT, maskfeat, rows

from maskfeat.data.ava import LABEL_MAP, PREDICTED_BOXES, AvaFolder, exclusions_name, groundtruth_name
from maskfeat.data.ava_clips import AvaDataset, BoxClipTransform
from maskfeat.data.decode import open_reader
from maskfeat.data.frame_folder import FrameFolderReader
from maskfeat.data.sample_ava import sample_ava_folder
from maskfeat.evaluation.ava import frame_map

START = 900  # the official AVA frames start at second 900 of each video
IDS = {1: 11, 2: 17, 3: 23, 4: 42, 5: 5, 6: 60}  # the generated set's actions renamed; 60 is left out of the map
NAMES = {11: "walk left", 17: "walk right", 23: "climb", 42: "fall", 5: "approach"}


def _frames_folder(src: Path, dst: Path, split: str) -> Path:
    """The AVA folder ``src`` (videos) as extracted frames ``frames/<id>/<id>_%06d.png`` (lossless), timestamps
    shifted by START, action ids renamed by IDS and a label map of NAMES."""
    dst.mkdir(parents=True)
    for name in sorted(os.listdir(src)):
        stem, ext = os.path.splitext(name)
        if ext == ".mp4":
            reader = open_reader(str(src / name))
            frames = reader.get_frames(range(reader.info.num_frames)).numpy()
            (dst / "frames" / stem).mkdir(parents=True)
            for k, frame in enumerate(frames):
                Image.fromarray(frame).save(dst / "frames" / stem / f"{stem}_{k + 1:06d}.png")
    for name in (groundtruth_name(split), PREDICTED_BOXES, exclusions_name(split)):
        if (src / name).exists():
            with open(src / name, newline="") as f:
                table = list(csv.reader(f))
            for row in table:
                row[1] = str(int(row[1]) + START)
                if name == groundtruth_name(split):
                    row[6] = str(IDS[int(row[6])])
            with open(dst / name, "w", newline="") as f:
                csv.writer(f).writerows(table)
    (dst / LABEL_MAP).write_text("".join(f'item {{\n  name: "{n}"\n  id: {i}\n}}\n' for i, n in NAMES.items()))
    return dst


@pytest.fixture(scope="module")
def unseen(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("unseen")
    videos = Path(sample_ava_folder(str(root / "videos_train"), "train", num_videos=4, seed=11))
    val = Path(sample_ava_folder(str(root / "videos_val"), "val", num_videos=2, seed=11))
    return _frames_folder(videos, root / "train", "train"), _frames_folder(val, root / "val", "val"), videos


def test_frame_folder_reads_the_frames_a_video_decodes_at_the_same_times(unseen):
    train, _, videos = unseen
    folder = AvaFolder(str(train), "train")
    assert all(os.path.isdir(p) for p in folder.videos.values()) and any(v.startswith("-") for v in folder.videos)
    video_id = sorted(folder.videos)[0]
    reader = FrameFolderReader(folder.videos[video_id], fps=8, start=START)
    assert reader.info.num_frames == 32 and (reader.info.width, reader.info.height) == (96, 96)
    assert [reader.ordinal_at(START + s) for s in (-1, 0, 1, 2.5, 99)] == [0, 0, 8, 20, 31]
    from_video = open_reader(str(videos / f"{video_id}.mp4")).get_frames([5, 0, 5, 31])
    assert torch.equal(reader.get_frames([5, 0, 5, 31]), from_video)

    # the same keyframes give the same clips from the frames (timestamps + 900, start 900) as from the video file
    original = AvaFolder(str(videos), "train")
    kf_frames, kf_video = folder.keyframes(), original.keyframes()
    assert [k.timestamp - START for k in kf_frames] == [k.timestamp for k in kf_video]
    args = (4, 2, BoxClipTransform(64, train=False))
    a = AvaDataset(kf_frames, folder.videos, list(folder.label_map), *args, frame_rate=8, frames_start=START)
    b = AvaDataset(kf_video, original.videos, list(original.label_map), *args)
    for i in range(len(a)):
        assert torch.equal(a.clip(i), b.clip(i))
    assert torch.equal(a[(1, 7)]["image"], b[(1, 7)]["image"]) and torch.equal(a[(1, 7)]["boxes"], b[(1, 7)]["boxes"])


def test_frame_folder_errors_name_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="empty: no frames"):
        FrameFolderReader(str(tmp_path / "empty"))
    (tmp_path / "mixed").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "mixed" / "a.png")
    Image.new("RGB", (8, 6)).save(tmp_path / "mixed" / "b.png")
    with pytest.raises(Exception, match=r"b.png: 8x6 pixels where the folder's first frame has 8x8"):
        FrameFolderReader(str(tmp_path / "mixed")).get_frames([0, 1])


TINY_DETECT = ["model.name=vit_s", "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "data.image_size=64",
               "video.num_frames=4", "video.frame_stride=2", "video.short_side=[64,72]", "train.batch_size=4",
               "train.warmup_epochs=1", "data.num_workers=0", "train.log_every=1", "detect.frame_rate=8",
               f"detect.frames_start={START}"]  # fmt: skip


def test_detect_trains_and_evaluates_an_unseen_frames_folder_with_its_own_label_map(unseen, tmp_path):
    train, val, _ = unseen
    out = tmp_path / "run"
    # 4 videos x 3 keyframes = 12 keyframes, 3 steps an epoch: max_steps=5 stops in the middle of the second epoch
    r = maskfeat("detect", *TINY_DETECT, f"data.path={train}", f"data.val_path={val}", f"output_dir={out}",
                 "train.epochs=3", "train.max_steps=5")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "5 actions" in r.stderr  # the label map's classes, the action left out of it is not trained
    evals = [m for m in rows(out / "metrics.jsonl") if "mAP" in m]
    assert [m["step"] for m in evals] == [3, 5]  # the epoch's end, and the stop in the middle of the next epoch
    detections = list(csv.reader(open(out / "detections.csv")))
    assert {int(row[6]) for row in detections} == set(NAMES) and all(int(row[1]) > START for row in detections)
    per_class = json.loads((out / "ava_per_class.json").read_text())
    folder = AvaFolder(str(val), "val")
    with_truth = sorted({a for k in folder.keyframes() for actions in k.actions for a in actions})  # AP needs them
    assert 3 <= len(with_truth) < len(NAMES) and set(with_truth) < set(NAMES)
    assert [c["id"] for c in per_class["per_class"]] == with_truth
    assert [c["name"] for c in per_class["per_class"]] == [NAMES[i] for i in with_truth]
    again = frame_map(folder.groundtruth, str(out / "detections.csv"), folder.label_map_path, folder.exclusions_path)
    assert 100 * again["mAP"] == pytest.approx(evals[-1]["mAP"])

    # maskfeat evaluate reads the detect checkpoint and scores the same boxes the same way
    ev = maskfeat("evaluate", *TINY_DETECT, f"data.val_path={val}", f"output_dir={tmp_path / 'ev'}",
                  f"model.checkpoint={out / 'checkpoint-last.pt'}")  # fmt: skip
    assert ev.returncode == 0, ev.stderr
    (row,) = rows(tmp_path / "ev" / "metrics.jsonl")
    assert row["mAP"] == pytest.approx(evals[-1]["mAP"]) and (tmp_path / "ev" / "ava_per_class.json").is_file()


def test_detect_names_a_missing_frames_folder(unseen, tmp_path):
    train = tmp_path / "train"
    shutil.copytree(unseen[0], train)
    missing = sorted(os.listdir(train / "frames"))[0]
    shutil.rmtree(train / "frames" / missing)
    r = maskfeat("detect", *TINY_DETECT, f"data.path={train}", f"data.val_path={unseen[1]}",
                 f"output_dir={tmp_path / 'run'}", "train.max_steps=1")  # fmt: skip
    assert r.returncode != 0 and f"no video file or frames/ folder for 1 video id(s): {missing}" in r.stderr


def test_two_processes_score_their_shares_and_report_the_map_of_one(unseen, tmp_path):
    """Under torchrun each process scores its share of the 5 evaluated keyframes (padded to 3 + 3: one is scored
    twice); the gathered detections and the mAP equal those of one process evaluating the same checkpoint."""
    train, val, _ = unseen
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "maskfeat",
           "detect", *TINY_DETECT, f"data.path={train}", f"data.val_path={val}", f"output_dir={out}",
           "train.epochs=1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (last,) = [m for m in rows(out / "metrics.jsonl") if "mAP" in m]
    assert len(AvaFolder(str(val), "val").keyframes(predicted=True)) == 5
    ev = maskfeat("evaluate", *TINY_DETECT, f"data.val_path={val}", f"output_dir={tmp_path / 'one'}",
                  f"model.checkpoint={out}")  # fmt: skip
    assert ev.returncode == 0, ev.stderr
    (row,) = rows(tmp_path / "one" / "metrics.jsonl")
    assert row["mAP"] == pytest.approx(last["mAP"], abs=1e-9) and row["chance_mAP"] == pytest.approx(last["chance_mAP"])
    assert (out / "detections.csv").read_text() == (tmp_path / "one" / "detections.csv").read_text()
