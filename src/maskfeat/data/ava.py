"""The AVA v2.2 files: label map, ground-truth and predicted-box CSVs, excluded timestamps, and a folder of them.

A folder holds, at its top level, the files as the AVA release names them:
``ava_{train,val}_v2.2.csv`` (ground truth: ``video_id, timestamp, x1, y1, x2, y2, action_id, person_id``,
coordinates in [0, 1], timestamp in seconds from the start of the video file), the label map
``ava_action_list_v2.2_for_activitynet_2019.pbtxt`` (``item { name: "..." id: N }``), optionally
``ava_{train,val}_excluded_timestamps_v2.2.csv`` (``video_id, timestamp``), for evaluation
``ava_val_predicted_boxes.csv`` (``video_id, timestamp, x1, y1, x2, y2, , score``), and the videos
``<video_id>.<ext>`` (ids may start with ``-``), or their extracted frames as the official layout keeps them,
``frames/<video_id>/`` (one image per frame in name order, :mod:`maskfeat.data.frame_folder`; a video file of the
same id is preferred).

A :class:`Keyframe` is one annotated second of one video: its distinct boxes and, per box, the set of actions.
Like the official loader, rows with the same four coordinate strings are one box (a person with several actions);
action ids absent from the label map are dropped (a box left with none is dropped too); excluded timestamps are
left out.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .sources import VIDEO_EXTENSIONS, DataError

__all__ = ["AvaFolder", "Keyframe", "read_exclusions", "read_keyframes", "read_label_map", "write_rows"]

LABEL_MAP = "ava_action_list_v2.2_for_activitynet_2019.pbtxt"
PREDICTED_BOXES = "ava_val_predicted_boxes.csv"
FRAMES = "frames"  # the folder of extracted-frame folders, one per video id


def groundtruth_name(split: str) -> str:
    return f"ava_{split}_v2.2.csv"


def exclusions_name(split: str) -> str:
    return f"ava_{split}_excluded_timestamps_v2.2.csv"


@dataclass
class Keyframe:
    """One annotated second: ``boxes`` float (K, 4) ``x1, y1, x2, y2`` in [0, 1]; ``actions[k]`` the action ids of
    box k (empty for a detected box, whose actions are what the model predicts); ``scores`` (K,) the detector's
    scores (1 for ground truth)."""

    video_id: str
    timestamp: int
    boxes: np.ndarray
    actions: list[list[int]] = field(default_factory=list)
    scores: np.ndarray | None = None


def read_label_map(path: str) -> dict[int, str]:
    """``{action id: name}`` of a ``.pbtxt`` label map (``item { name: "..." id: N }``; ``label_id`` read too)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    out: dict[int, str] = {}
    for body in re.findall(r"item\s*\{(.*?)\}", text, flags=re.S):
        name = re.search(r'name:\s*"([^"]*)"', body)
        ident = re.search(r"\b(?:label_)?id:\s*(\d+)", body)
        if ident is None:
            raise DataError(f"{path}: an item without id: {' '.join(body.split())}")
        out[int(ident.group(1))] = name.group(1) if name else str(ident.group(1))
    if not out:
        raise DataError(f"{path}: no 'item {{ name: ... id: ... }}' entries")
    return dict(sorted(out.items()))


def _rows(path: str) -> Iterable[list[str]]:
    """The non-empty rows of a CSV file, stripped (``csv`` reads ids starting with ``-`` as they are)."""
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if row and any(cell.strip() for cell in row):
                yield [cell.strip() for cell in row]


def read_exclusions(path: str | None) -> set[tuple[str, int]]:
    """``{(video_id, timestamp)}`` of an excluded-timestamps CSV; empty for None or a missing file."""
    if not path or not os.path.isfile(path):
        return set()
    return {(row[0], int(float(row[1]))) for row in _rows(path)}


def read_keyframes(path: str, label_map: dict[int, str] | None = None, exclusions: set | None = None,
                   score_threshold: float | None = None) -> list[Keyframe]:  # fmt: skip
    """The keyframes of a ground-truth (``score_threshold`` None) or predicted-box CSV, in file order.

    Ground truth: rows whose action is not in ``label_map`` are dropped. Predicted boxes (column 7 empty, column 8
    the score): boxes scoring below ``score_threshold`` are dropped. ``exclusions`` are left out.
    """
    exclusions = exclusions or set()
    frames: dict[tuple[str, int], dict[tuple[str, ...], list]] = {}
    for row in _rows(path):
        if len(row) < 7:
            raise DataError(f"{path}: a row needs at least 7 columns, got {row}")
        key = (row[0], int(float(row[1])))
        if key in exclusions:
            continue
        if score_threshold is not None:
            score = float(row[7]) if len(row) > 7 and row[7] else 1.0
            if score < score_threshold:
                continue
            action = None
        else:
            score, action = 1.0, int(row[6])
            if label_map is not None and action not in label_map:
                continue
        entry = frames.setdefault(key, {}).setdefault(tuple(row[2:6]), [[float(v) for v in row[2:6]], [], score])
        if action is not None and action not in entry[1]:
            entry[1].append(action)
    return [Keyframe(vid, ts, np.array([b[0] for b in boxes.values()], dtype=np.float32).reshape(-1, 4),
                     [b[1] for b in boxes.values()], np.array([b[2] for b in boxes.values()], dtype=np.float32))
            for (vid, ts), boxes in frames.items()]  # fmt: skip


def write_rows(path: str, rows: Iterable[Iterable]) -> None:
    """Write CSV rows (floats with 3 decimals for coordinates as AVA's files, scores as given)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


class AvaFolder:
    """The files of one AVA-format folder for ``split`` (train or val): paths, label map, videos by id."""

    def __init__(self, root: str, split: str) -> None:
        self.root, self.split = os.fspath(root), split
        self.groundtruth = os.path.join(self.root, groundtruth_name(split))
        self.label_map_path = os.path.join(self.root, LABEL_MAP)
        exclusions = os.path.join(self.root, exclusions_name(split))
        self.exclusions_path = exclusions if os.path.isfile(exclusions) else None
        self.predicted_boxes = os.path.join(self.root, PREDICTED_BOXES)
        for path in (self.groundtruth, self.label_map_path):
            if not os.path.isfile(path):
                raise DataError(f"{self.root} is not an AVA-format folder: {os.path.basename(path)} is missing")
        self.label_map = read_label_map(self.label_map_path)
        self.exclusions = read_exclusions(self.exclusions_path)
        self.videos = self._find_videos()

    def _find_videos(self) -> dict[str, str]:
        """``{video_id: path}`` of the files ``<video_id>.<ext>`` at the folder's top level (a video extension),
        then of the frame folders ``frames/<video_id>/`` for the other ids."""
        videos: dict[str, str] = {}
        for name in sorted(os.listdir(self.root)):
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS and os.path.isfile(os.path.join(self.root, name)):
                videos.setdefault(stem, os.path.join(self.root, name))
        frames = os.path.join(self.root, FRAMES)
        for name in sorted(os.listdir(frames)) if os.path.isdir(frames) else []:
            if os.path.isdir(os.path.join(frames, name)):
                videos.setdefault(name, os.path.join(frames, name))
        return videos

    def keyframes(self, predicted: bool = False, score_threshold: float = 0.8) -> list[Keyframe]:
        """The ground-truth keyframes, or (``predicted``) the detected boxes scoring ``score_threshold`` or more;
        keyframes of videos not in the folder are an error naming the first few."""
        if predicted:
            if not os.path.isfile(self.predicted_boxes):
                raise DataError(f"{self.root}: {PREDICTED_BOXES} is missing (the detected boxes to evaluate on)")
            frames = read_keyframes(self.predicted_boxes, None, self.exclusions, score_threshold)
        else:
            frames = read_keyframes(self.groundtruth, self.label_map, self.exclusions)
        missing = sorted({k.video_id for k in frames} - set(self.videos))
        if missing:
            raise DataError(f"{self.root}: no video file or {FRAMES}/ folder for {len(missing)} video id(s): "
                            f"{', '.join(missing[:5])}")  # fmt: skip
        return frames
