"""A generated action-detection set in the AVA v2.2 layout, filmed offline from scikit-image's bundled photos.

Each video is a still crop of one photo with two or three "people": upright rectangles textured with crops of
other photos, outlined, each moving on its own for the whole video: left or right, up or down, growing (coming
closer), or standing still, several at once (a box moving left and up has both labels). The actions need
several frames to tell apart (one frame shows none of them), and a box usually has more than one label.

The folders hold what :class:`maskfeat.data.ava.AvaFolder` reads: ``<video_id>.mp4`` (MPEG-4, PyAV, as the other
sample clips; ids starting with ``-`` among them), ``ava_{split}_v2.2.csv`` with a keyframe each second, the label
map, and for ``val`` the excluded timestamps (one keyframe) and ``ava_val_predicted_boxes.csv``: the ground-truth
boxes jittered by up to 5% of their size with scores in [0.85, 1], and one false box per keyframe scoring under 0.8
(the default ``detect.score_threshold`` drops it).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from .ava import LABEL_MAP, PREDICTED_BOXES, exclusions_name, groundtruth_name, write_rows
from .sample import _build_atomically, _load_sources, _write_mp4, default_cache_dir

__all__ = ["SAMPLE_ACTIONS", "sample_ava_folders", "sample_ava_folder"]

_VERSION = 1
#: The actions of the generated set, by id (the label map).
SAMPLE_ACTIONS: dict[int, str] = {1: "move_left", 2: "move_right", 3: "move_up", 4: "move_down", 5: "grow",
                                  6: "stand_still"}  # fmt: skip
FPS, SECONDS, SIZE = 8, 4, 96  # frames per second, video length (keyframes at 1 .. SECONDS - 1), frame side
SPEED, GROWTH = 1.5, 1.015  # pixels per frame of a moving box; size factor per frame of a growing one


def _person(rng: np.random.Generator) -> dict:
    """A person's motion: velocity (vx, vy) px/frame, growth per frame, and its action ids."""
    vx = float(rng.choice([-SPEED, 0.0, SPEED], p=[0.3, 0.4, 0.3]))
    vy = float(rng.choice([-SPEED, 0.0, SPEED], p=[0.2, 0.6, 0.2]))
    grow = bool(rng.random() < 0.25)
    actions = [a for a, on in ((1, vx < 0), (2, vx > 0), (3, vy < 0), (4, vy > 0), (5, grow)) if on] or [6]
    return {"v": (vx, vy), "g": GROWTH if grow else 1.0, "actions": actions}


def _track(person: dict, rng: np.random.Generator, frames: int) -> np.ndarray | None:
    """Boxes (frames, 4) in pixels of a person whose whole path stays inside the frame, or None (does not fit)."""
    w = rng.uniform(16, 24)
    h = w * rng.uniform(1.5, 1.8)
    t = np.arange(frames)
    scale = person["g"] ** t
    widths, heights = w * scale, h * scale
    dx, dy = person["v"][0] * t, person["v"][1] * t
    lo_x, hi_x = (widths / 2 - dx).max(), (SIZE - widths / 2 - dx).min()  # the start centres keeping it inside
    lo_y, hi_y = (heights / 2 - dy).max(), (SIZE - heights / 2 - dy).min()
    if lo_x >= hi_x - 1 or lo_y >= hi_y - 1:
        return None
    cx, cy = rng.uniform(lo_x, hi_x) + dx, rng.uniform(lo_y, hi_y) + dy
    return np.stack([cx - widths / 2, cy - heights / 2, cx + widths / 2, cy + heights / 2], axis=1)


def _texture(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A crop of ``photo`` with a dark outline: the look of one person."""
    w, h = photo.size
    side = int(min(w, h) * rng.uniform(0.2, 0.4))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    patch = photo.crop((x, y, x + side, int(y + min(h - y, side * 1.7))))
    ImageDraw.Draw(patch).rectangle((0, 0, patch.size[0] - 1, patch.size[1] - 1), outline=(10, 10, 10), width=4)
    return patch


def _video(photos: list[Image.Image], rng: np.random.Generator) -> tuple[list[np.ndarray], list]:
    """The frames of one video and its people: [(boxes (frames, 4) px, action ids)]."""
    frames = FPS * SECONDS
    photo = photos[int(rng.integers(len(photos)))]
    side = int(min(photo.size) * rng.uniform(0.5, 0.9))
    x, y = int(rng.integers(0, photo.size[0] - side + 1)), int(rng.integers(0, photo.size[1] - side + 1))
    background = photo.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=(x, y, x + side, y + side))
    people = []
    while len(people) < int(rng.integers(2, 4)):
        person = _person(rng)
        track = _track(person, rng, frames)
        if track is not None:
            people.append((track, person["actions"], _texture(photos[int(rng.integers(len(photos)))], rng)))
    out = []
    for i in range(frames):
        frame = background.copy()
        for track, _, texture in people:
            x1, y1, x2, y2 = (int(round(v)) for v in track[i])
            frame.paste(texture.resize((max(x2 - x1, 1), max(y2 - y1, 1)), Image.Resampling.BILINEAR), (x1, y1))
        out.append(np.asarray(frame))
    return out, [(track, actions) for track, actions, _ in people]


def _rows(video_id: str, people: list, rng: np.random.Generator, predicted: bool) -> list[list]:
    """Ground-truth rows (one per person and action) or predicted-box rows of one video's keyframes."""
    rows = []
    for ts in range(1, SECONDS):
        for pid, (track, actions) in enumerate(people):
            box = track[ts * FPS]
            if predicted:
                size = np.tile(box[2:] - box[:2], 2)
                box = np.clip(box + rng.uniform(-0.05, 0.05, 4) * size, 0, SIZE)
            coords = [f"{c / SIZE:.3f}" for c in box]
            if predicted:
                rows.append([video_id, ts, *coords, "", f"{rng.uniform(0.85, 1.0):.4f}"])
            else:
                rows += [[video_id, ts, *coords, a, pid] for a in actions]
        if predicted:  # a false detection, under the score threshold
            x, y = rng.uniform(0, 0.7, 2)
            rows.append([video_id, ts, f"{x:.3f}", f"{y:.3f}", f"{x + 0.2:.3f}", f"{y + 0.3:.3f}", "",
                         f"{rng.uniform(0.3, 0.7):.4f}"])  # fmt: skip
    return rows


def sample_ava_folder(root: str | None = None, split: str = "train", num_videos: int | None = None,
                      seed: int = 0) -> str:  # fmt: skip
    """Builds (once) the generated AVA-format folder of ``split`` (train: 128 videos, val: 24, disjoint random
    streams of ``seed``); returns its path (default ``<cache>/sample_ava_v1/{split}_n{num_videos}_seed{seed}``)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    n = num_videos or (128 if split == "train" else 24)
    root = root or os.path.join(default_cache_dir(), f"sample_ava_v{_VERSION}", f"{split}_n{n}_seed{seed}")
    params = {"version": _VERSION, "kind": "ava", "split": split, "n": n, "seed": seed}

    def fill(folder: str) -> None:
        photos = list(_load_sources().values())
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, 14])
        gt, predicted = [], []
        for i in range(n):
            video_id = f"-{split}{i:03d}" if i % 2 == 0 else f"{split}{i:03d}"  # AVA ids may start with '-'
            frames, people = _video(photos, rng)
            _write_mp4(os.path.join(folder, f"{video_id}.mp4"), frames, fps=FPS)
            gt += _rows(video_id, people, rng, predicted=False)
            predicted += _rows(video_id, people, rng, predicted=True)
        write_rows(os.path.join(folder, groundtruth_name(split)), gt)
        with open(os.path.join(folder, LABEL_MAP), "w") as f:
            f.writelines(f'item {{\n  name: "{name}"\n  id: {i}\n}}\n' for i, name in SAMPLE_ACTIONS.items())
        if split == "val":
            write_rows(os.path.join(folder, PREDICTED_BOXES), predicted)
            write_rows(os.path.join(folder, exclusions_name(split)), [[gt[0][0], SECONDS - 1]])

    return _build_atomically(root, params, fill)


def sample_ava_folders(seed: int = 0) -> tuple[str, str]:
    """The (train, val) folders of the generated set."""
    return sample_ava_folder(split="train", seed=seed), sample_ava_folder(split="val", seed=seed)
