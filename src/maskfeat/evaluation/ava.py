"""AVA v2.2 frame-level mean average precision, as the official AVA evaluation code computes it.

    result = frame_map("ava_val_v2.2.csv", "detections.csv", "ava_action_list_v2.2_for_activitynet_2019.pbtxt",
                       "ava_val_excluded_timestamps_v2.2.csv")
    result["mAP"]        # in [0, 1]
    result["per_class"]  # {class_id: AP}, only for the label map's classes that have ground truth

The metric is PASCAL VOC average precision at IoU >= 0.5 per class, averaged over classes. "The official code" is
the one SlowFast evaluates AVA with (``slowfast/utils/ava_eval_helper.py`` and ``ava_evaluation/``, adapted from
ActivityNet's ``get_ava_performance.py`` and the TensorFlow object-detection API); this module is an independent
implementation of what it computes, with every one of its choices kept:

* **Frames.** A frame is keyed ``"%s,%04d" % (video_id, int(timestamp))``: ``vid,902`` and ``vid,0902`` are one
  frame. The video id is kept verbatim (it may start with ``-``). Timestamps must be whole seconds; the official
  code calls ``int()`` on the text, which this also does, and it accepts ``902.0`` too (the official code raises).
* **Label map.** ``item { name: "..." id: N }`` entries: every ``id:`` (or ``label_id:``) field makes a class named
  by the latest ``name:`` field before it (``display_name`` and ``label_type`` are ignored). The official reader is
  line-based and needs each field on its own line with a two-space indent, as the AVA release writes it; on that
  layout this reader gives the same classes, and it also accepts other layouts (e.g. one item per line). Ids must be
  >= 1 (the official code raises otherwise); a duplicate id is one class, the last name wins.
* **Rows.** CSV rows of 7 or 8 columns (blank lines skipped; the official code fails on them). A row whose action id
  is not in the label map is dropped, ground truth and detections alike, before anything else. Ground truth ignores
  an 8th column (``person_id``); detections need it (the score). No top-k limit per frame or per box: every
  detection row counts (ActivityNet's script keeps the 50 best-scored per frame; SlowFast's does not).
* **Excluded timestamps.** Frames listed in the exclusions file are dropped from ground truth and detections.
* **Invalid detections.** A detected box with ``x1 >= x2`` or ``y1 >= y2`` is dropped. A ground-truth box with
  ``x1 > x2`` or ``y1 > y2`` is an error (the official code raises when such a box is compared); zero-area ones
  count. No box is difficult or group-of: every ground-truth box counts once in the number of positives.
* **Matching, per frame and class.** IoU is ``inter / (area_d + area_g - inter)``. Detections are taken in the order
  their rows appear in the file, not by score: SlowFast's code does not sort them (ActivityNet's script sorts each
  frame's rows by descending score first; SlowFast writes a frame's rows box by box). Each takes the ground-truth
  box of highest IoU with it (the first in file order on ties); it is a true positive if that IoU is >= 0.5 and that
  box was not taken by an earlier detection, else a false positive. It does not fall back to another box: a
  detection whose best box is taken is a false positive even if it overlaps another free box by 0.5 or more.
  Detections in frames without ground truth of their class are false positives.
* **AP, per class.** The detections of a class, concatenated frame by frame in the order frames first appear in the
  detections file, are ranked by ``np.argsort(scores)[::-1]`` (numpy's default sort, as the official code does;
  among equal scores this sets the order, which is why the concatenation order is kept). Precision and recall are
  cumulated over that ranking (recall over the class's number of ground-truth boxes); precision is made
  non-increasing from the right, and AP is the sum over the points where recall grows of ``(r_i - r_{i-1}) *
  p_i``, starting from recall 0 (VOC 2010+ "all points" integration, no 11-point sampling). A class with ground
  truth and no detection has AP 0.
* **Mean.** Classes without ground truth (after exclusions) have no AP: they are absent from ``per_class`` and from
  the mean. When no class has ground truth, ``mAP`` is NaN (as with the official code).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict

import numpy as np

IOU_THRESHOLD = 0.5

# a quoted string (skipped, so fields inside names do not count) or a `name:` / `id:` / `label_id:` field
_PBTXT_FIELD = re.compile(r'"(?:[^"\\]|\\.)*"|\b(name|id|label_id)\s*:\s*("(?:[^"\\]|\\.)*"|[^\s{}"]+)')


def frame_key(video_id: str, timestamp: str) -> str:
    """The official frame key: ``"<video_id>,<seconds as %04d>"``."""
    return f"{video_id},{_seconds(timestamp):04d}"


def _seconds(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        value = float(text)
    if not value.is_integer():
        raise ValueError(f"timestamp {text!r} is not a whole number of seconds")
    return int(value)


def read_label_map(path: str) -> dict[int, str]:
    """``{class_id: name}`` of a ``.pbtxt`` label map, in file order (see the module docstring)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    classes: dict[int, str] = {}
    name = ""
    for m in _PBTXT_FIELD.finditer(text):
        field, value = m.group(1), m.group(2)
        if field == "name":
            name = value[1:-1] if value.startswith('"') else value
        elif field is not None:
            class_id = int(value)
            if class_id < 1:
                raise ValueError(f"{path}: class ids must be >= 1, got {class_id}")
            classes.pop(class_id, None)
            classes[class_id] = name
    if not classes:
        raise ValueError(f"{path}: no `item {{ name: ... id: N }}` entries in the label map")
    return classes


def read_exclusions(path: str | None) -> set[str]:
    """The frame keys of an excluded-timestamps CSV (``video_id, timestamp`` rows); empty for ``None``."""
    excluded: set[str] = set()
    if path is None:
        return excluded
    for line, row in _numbered_rows(path):
        if len(row) != 2:
            raise ValueError(f"{path}:{line}: expected 2 columns (video_id, timestamp), got {len(row)}")
        excluded.add(_parse(path, line, frame_key, row[0], row[1]))
    return excluded


def _numbered_rows(path: str):
    """``(line_number, row)`` for every non-blank CSV row."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        for row in reader:
            if row and any(cell.strip() for cell in row):
                yield reader.line_num, row


def _parse(path: str, line: int, fn, *args):
    try:
        return fn(*args)
    except ValueError as e:
        raise ValueError(f"{path}:{line}: {e}") from None


def _box_row(row: list[str], scored: bool) -> tuple[str, list[float], int, float]:
    key = frame_key(row[0], row[1])
    box = [float(v) for v in row[2:6]]
    action = int(row[6])
    return key, box, action, float(row[7]) if scored else 1.0


def read_boxes(path: str, class_ids, scored: bool) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{frame_key: (boxes (n, 4) as x1, y1, x2, y2, action ids (n,), scores (n,))}`` of an AVA CSV.

    Frames are in the order they first appear and boxes in file order; rows whose action id is not in
    ``class_ids`` are dropped. ``scored``: detections (8 columns, the last the score); else ground truth
    (7 or 8 columns, scores 1).
    """
    frames: dict[str, list] = defaultdict(list)
    for line, row in _numbered_rows(path):
        if len(row) not in ((8,) if scored else (7, 8)):
            want = "8 (video_id, timestamp, x1, y1, x2, y2, action_id, score)" if scored else "7 or 8"
            raise ValueError(f"{path}:{line}: expected {want} columns, got {len(row)}")
        key, box, action, score = _parse(path, line, _box_row, row, scored)
        if action in class_ids:
            frames[key].append((*box, action, score))
    out = {}
    for key, rows in frames.items():
        table = np.array(rows, dtype=float).reshape(-1, 6)
        out[key] = (table[:, :4].copy(), table[:, 4].astype(int), table[:, 5].copy())
    return out


def _check_ground_truth(path: str, frames: dict) -> None:
    for key, (boxes, _, _) in frames.items():
        bad = (boxes[:, 0] > boxes[:, 2]) | (boxes[:, 1] > boxes[:, 3])
        if bad.any():
            raise ValueError(f"{path}: frame {key}: ground-truth box {boxes[bad][0].tolist()} has x1 > x2 or y1 > y2")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``(len(a), len(b))`` of ``x1, y1, x2, y2`` boxes, computed as the official code does."""
    w = np.maximum(0.0, np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]))
    h = np.maximum(0.0, np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]))
    inter = h * w
    area_a = (a[:, 3] - a[:, 1]) * (a[:, 2] - a[:, 0])
    area_b = (b[:, 3] - b[:, 1]) * (b[:, 2] - b[:, 0])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def match_frame(detected: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """True-positive flags of one frame's detections of one class, taken in order (see the module docstring)."""
    hits = np.zeros(len(detected), dtype=bool)
    if len(detected) == 0 or len(truth) == 0:
        return hits
    iou = box_iou(detected, truth)
    best = iou.argmax(axis=1)
    candidates = np.flatnonzero(iou[np.arange(len(detected)), best] >= IOU_THRESHOLD)
    _, first = np.unique(best[candidates], return_index=True)  # the first detection to claim each box
    hits[candidates[first]] = True
    return hits


def average_precision(scores: np.ndarray, hits: np.ndarray, num_truth: int) -> float:
    """PASCAL VOC AP of ranked detections (``hits``: true positives) against ``num_truth`` ground-truth boxes."""
    ranked = hits[np.argsort(scores)[::-1]].astype(int)
    tp = np.cumsum(ranked)
    fp = np.cumsum(1 - ranked)
    precision = np.concatenate([[0.0], tp.astype(float) / (tp + fp), [0.0]])
    recall = np.concatenate([[0.0], tp.astype(float) / num_truth, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def _ranked_detections(truth: dict, detections: dict) -> dict[int, tuple[list, list]]:
    """``{class_id: (score arrays, hit arrays)}``, frame by frame in the detections' frame order."""
    per_class: dict[int, tuple[list, list]] = defaultdict(lambda: ([], []))
    empty = (np.zeros((0, 4)), np.zeros(0, dtype=int), np.zeros(0))
    for key, (boxes, labels, scores) in detections.items():
        valid = (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])
        truth_boxes, truth_labels, _ = truth.get(key, empty)
        for c in np.unique(labels[valid]):
            chosen = valid & (labels == c)
            hits = match_frame(boxes[chosen], truth_boxes[truth_labels == c])
            per_class[int(c)][0].append(scores[chosen])
            per_class[int(c)][1].append(hits)
    return per_class


def evaluate_frames(truth: dict, detections: dict, class_ids) -> dict:
    """``frame_map`` on frames already read (``read_boxes``) and with exclusions already removed."""
    num_truth: dict[int, int] = defaultdict(int)
    for _, labels, _ in truth.values():
        for c, n in zip(*np.unique(labels, return_counts=True)):
            num_truth[int(c)] += int(n)
    ranked = _ranked_detections(truth, detections)
    per_class = {}
    for c in sorted(set(class_ids)):
        if num_truth.get(c, 0) == 0:
            continue
        scores, hits = ranked.get(c, ([], []))
        scores = np.concatenate(scores) if scores else np.zeros(0)
        hits = np.concatenate(hits) if hits else np.zeros(0, dtype=bool)
        per_class[c] = average_precision(scores, hits, num_truth[c])
    # the official mean: np.nanmean over the classes 1..max id, NaN for those without ground truth
    table = np.full(max(class_ids), np.nan)
    for c, ap in per_class.items():
        table[c - 1] = ap
    mean = float(np.nanmean(table)) if per_class else math.nan
    return {"mAP": mean, "per_class": per_class}


def frame_map(groundtruth_csv: str, detections_csv: str, label_map: str, exclusions: str | None = None) -> dict:
    """The AVA frame-level mAP at IoU 0.5: ``{"mAP": float in [0, 1], "per_class": {class_id: AP}}``.

    Paths to the ground-truth CSV (``video_id, timestamp, x1, y1, x2, y2, action_id[, person_id]``), the detections
    CSV (``video_id, timestamp, x1, y1, x2, y2, action_id, score``), the ``.pbtxt`` label map and, optionally, the
    excluded timestamps CSV (``video_id, timestamp``). Coordinates in [0, 1]. Computed exactly as the official AVA
    evaluation code does; its choices are listed in the module docstring.
    """
    class_ids = set(read_label_map(label_map))
    excluded = read_exclusions(exclusions)
    truth = read_boxes(groundtruth_csv, class_ids, scored=False)
    _check_ground_truth(groundtruth_csv, truth)
    detections = read_boxes(detections_csv, class_ids, scored=True)
    truth = {k: v for k, v in truth.items() if k not in excluded}
    detections = {k: v for k, v in detections.items() if k not in excluded}
    return evaluate_frames(truth, detections, class_ids)


def write_per_class(path: str, result: dict, label_names: dict[int, str] | None = None) -> None:
    """Write ``frame_map``'s result as JSON: ``{"mAP": m, "per_class": [{"id", "name", "AP"}, ...]}`` by class id.

    Values are fractions in [0, 1], as ``frame_map`` returns them; ``label_names`` (e.g. ``read_label_map(path)``)
    names the classes; a NaN mAP (no class with ground truth) is written as null. Written through a temporary
    file renamed over ``path``.
    """
    from maskfeat.checkpoint import atomic_write

    names = label_names or {}
    rows = [{"id": c, "name": names.get(c, ""), "AP": ap} for c, ap in sorted(result["per_class"].items())]
    mean = None if math.isnan(result["mAP"]) else result["mAP"]  # JSON has no NaN
    text = json.dumps({"mAP": mean, "per_class": rows}, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
