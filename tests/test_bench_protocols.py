"""The data of the small-scale protocols in bench/: nested class-balanced CIFAR-10 subsets, and filmed clips."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_images
from PIL import Image

from maskfeat.data.decode import open_reader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import cifar10_small  # noqa: E402
import video_cifar10  # noqa: E402


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory) -> Path:
    """train/ (3 classes of 30, 20, 25 images) and test/ (3 of 10) image folders."""
    root = tmp_path_factory.mktemp("cifar_like")
    for c, n in enumerate((30, 20, 25)):
        write_images(root / "train" / f"class{c}", n, size=(32, 32), seed=c)
        write_images(root / "test" / f"class{c}", 10, size=(32, 32), seed=10 + c)
    return root


def _files(folder: str) -> set[tuple[str, str]]:
    return {(c, n) for c in os.listdir(folder) if not c.startswith(".") for n in os.listdir(os.path.join(folder, c))}


def test_subsets_are_nested_class_balanced_and_link_the_originals(cifar_like, tmp_path):
    folders = cifar10_small.make_subsets(str(cifar_like), str(tmp_path), [30, 60], [15], test=12, seed=3)
    small, large, labeled, test = (_files(folders[k]) for k in ("u30", "u60", "l15", "test"))
    assert len(small) == 30 and len(large) == 60 and len(labeled) == 15 and len(test) == 12
    assert labeled < small < large  # the labels are among the unlabeled images, the smaller set inside the larger
    for subset, per_class in ((small, 10), (large, 20), (labeled, 5), (test, 4)):
        assert all(sum(c == k for c, _ in subset) == per_class for k in ("class0", "class1", "class2"))
    link = Path(folders["u30"]) / next(iter(small))[0] / next(iter(small))[1]
    assert link.is_symlink() and link.resolve().parent.parent == (cifar_like / "train").resolve()
    other = cifar10_small.make_subsets(str(cifar_like), str(tmp_path / "s4"), [30], [15], test=12, seed=4)
    assert _files(other["u30"]) != small  # another seed, other images


def test_filmed_clips_move_over_the_image_and_decode_as_16_frames(cifar_like, tmp_path):
    rng = np.random.default_rng(0)
    image = np.asarray(Image.open(next((cifar_like / "train" / "class0").iterdir())))
    path = {**video_cifar10.camera(rng), "speed": 0.6, "turn": 0.02}
    frames = video_cifar10.film(image, path)
    assert len(frames) == 16 and all(f.shape == (32, 32, 3) and f.dtype == np.uint8 for f in frames)
    diffs = [np.abs(frames[i + 1].astype(int) - frames[i]).mean() for i in range(15)]
    assert min(diffs) > 0  # the camera moves at every frame
    still = video_cifar10.film(image, {**path, "speed": 0.0, "zoom": 1.0, "turn": 0.0})
    assert all(np.array_equal(still[0], f) for f in still)  # no motion, no change
    out = video_cifar10.make_clips(str(cifar_like / "test"), str(tmp_path / "clips"), 6, seed=0)
    clips = sorted(Path(out).rglob("*.mp4"))
    assert len(clips) == 6 and {p.parent.name for p in clips} == {"class0", "class1", "class2"}
    reader = open_reader(str(clips[0]))
    assert reader.info.num_frames == 16 and (reader.info.width, reader.info.height) == (32, 32)
    assert video_cifar10.make_clips(str(cifar_like / "test"), out, 6, seed=0) == out  # made once, then reused
    with pytest.raises(SystemExit, match="holds 6 clips, not 9"):  # never a folder of another size
        video_cifar10.make_clips(str(cifar_like / "test"), out, 9, seed=0)


def test_the_two_video_fine_tunes_differ_only_in_their_start_and_folder():
    """The scratch baseline is the pre-trained fine-tune's command without model.checkpoint, and pre-training never
    sees the labels: what the appearance table compares."""
    import argparse

    args = argparse.Namespace(runs_dir="runs/x", label_fraction=0.1, extra=["seed=3"])
    runs = video_cifar10.plan(args, "clips/train", "clips/test")
    (pre, _), (scratch, _), (ft, need) = runs["pretrain"], runs["scratch"], runs["finetune"]
    assert need == "pretrain" and runs["scratch"][1] is None
    assert set(ft) - set(scratch) == {
        "output_dir=runs/x/finetune",
        "model.checkpoint=runs/x/pretrain/encoder.safetensors",
    }
    assert set(scratch) - set(ft) == {"output_dir=runs/x/scratch"}
    assert "output_dir=runs/x/pretrain" in pre and "seed=3" in pre and "seed=3" in ft
    assert not any(a.startswith(("data.val_path", "data.label_fraction")) for a in pre)
