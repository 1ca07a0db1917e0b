"""Something-Something v2 in its release layout: the lists, the templates as classes, no flip, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import maskfeat, rows
from test_video_cli import TINY_VIDEO
from video_helpers import encode, has_encoder

from maskfeat.config import load_config
from maskfeat.data.sources import scan_video_source
from maskfeat.data.ssv2 import is_ssv2_list
from maskfeat.errors import DataError

TEMPLATES = ["Pushing [something] from left to right", "Pushing [something] from right to left",
             "Putting [something] on a surface"]  # fmt: skip


def write_release(root: Path, n_train: int = 6, n_val: int = 3, short_names: bool = False) -> Path:
    """A small release: the labels file, the two lists, webm (or mp4) videos in a sub-folder as the release has."""
    names = ("labels.json", "train.json", "validation.json") if short_names else tuple(
        f"something-something-v2-{n}.json" for n in ("labels", "train", "validation"))  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    (root / names[0]).write_text(json.dumps({t: str(i) for i, t in enumerate(TEMPLATES)}))
    codec, ext = ("libvpx", "webm") if has_encoder("libvpx") else ("mpeg4", "mp4")
    for name, count, start in ((names[1], n_train, 100), (names[2], n_val, 900)):
        entries = []
        for k in range(count):
            vid = str(start + k)
            template = TEMPLATES[k % len(TEMPLATES)]
            entries.append({"id": vid, "template": template, "label": template.replace("[something]", "a cup"),
                            "placeholders": ["a cup"]})  # fmt: skip
            encode(root / "20bn-something-something-v2" / f"{vid}.{ext}", codec, 12, (48, 40), 12)
        (root / name).write_text(json.dumps(entries))
    return root


def test_a_release_list_gives_the_templates_as_classes_in_index_order(tmp_path):
    root = write_release(tmp_path / "ssv2")
    train = root / "something-something-v2-train.json"
    assert is_ssv2_list(str(train)) and not is_ssv2_list(str(tmp_path / "other.json"))
    files, labels, classes = scan_video_source(train)
    assert classes == [t.replace("[", "").replace("]", "") for t in TEMPLATES]  # as the official lists map them
    assert labels == [0, 1, 2, 0, 1, 2] and [Path(f).stem for f in files] == [str(100 + k) for k in range(6)]
    assert scan_video_source(root / "something-something-v2-validation.json")[2] == classes


def test_missing_videos_are_skipped_and_unknown_templates_are_one_line(tmp_path, caplog):
    root = write_release(tmp_path / "ssv2", short_names=True)
    entries = json.loads((root / "train.json").read_text())
    (root / "train.json").write_text(json.dumps([*entries, {"id": "7", "template": TEMPLATES[0]}]))
    files, _, _ = scan_video_source(root / "train.json")
    assert len(files) == 6 and "skipped 1 videos listed in" in caplog.text
    (root / "train.json").write_text(json.dumps([{"id": "100", "template": "Dropping [something]"}]))
    with pytest.raises(DataError, match="video 100 has the template 'Dropping something', not in the labels file"):
        scan_video_source(root / "train.json")


def test_flip_is_off_for_something_something_unless_set(tmp_path):
    from maskfeat.builder import hflip

    root = write_release(tmp_path / "ssv2", n_train=1, n_val=1)
    cfg = load_config("finetune", None, ["model.name=vit_s", f"data.path={root / 'something-something-v2-train.json'}"])
    assert cfg.data.hflip is None and hflip(cfg, cfg.data.path) == 0.0
    assert hflip(cfg, str(tmp_path)) == 0.5  # any other data: the usual flip
    cfg.data.hflip = 0.3
    assert hflip(cfg, cfg.data.path) == 0.3


def test_something_something_folders_fine_tune_and_evaluate_end_to_end(tmp_path):
    root = write_release(tmp_path / "ssv2")
    out = tmp_path / "ft"
    r = maskfeat("finetune", *TINY_VIDEO, f"data.path={root / 'something-something-v2-train.json'}",
                 f"data.val_path={root / 'something-something-v2-validation.json'}", f"output_dir={out}",
                 "train.epochs=1", "train.batch_size=2", "train.mixup=0", "train.cutmix=0", "video.sampling=segments",
                 "video.num_crops=3")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "3 classes" in r.stderr
    assert load_config("finetune", str(out / "config.yaml"), check_paths=False).data.hflip == 0.0  # resolved
    assert [m for m in rows(out / "metrics.jsonl") if "top1" in m]
    r = maskfeat("evaluate", f"model.checkpoint={out / 'checkpoint-last.pt'}", "video.num_frames=4",
                 "video.sampling=segments", f"data.val_path={root / 'something-something-v2-validation.json'}",
                 f"output_dir={out}")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "top1" in rows(out / "eval-1" / "metrics.jsonl")[-1]
