"""PLACEHOLDER (branch ``detect``): a minimal AVA frame-level mAP so that ``maskfeat detect`` runs and is tested.

The exact official metric (issue 14, item 3) is written in another branch; its ``maskfeat.evaluation.ava`` replaces
this file at merge time. Same signature, same result format: PASCAL VOC AP (area under the precision envelope) at
IoU >= 0.5 per class of the label map, each ground-truth box matched at most once (detections of a class taken in
descending score), excluded timestamps ignored, averaged over the classes that have ground truth.
"""

from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np

from maskfeat.data.ava import read_exclusions, read_label_map

__all__ = ["frame_map"]


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with boxes (N, 4), ``x1, y1, x2, y2``."""
    lo, hi = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


def voc_ap(tp: np.ndarray, num_gt: int) -> float:
    """PASCAL VOC AP of detections sorted by descending score (``tp`` 1/0 each) against ``num_gt`` boxes."""
    if num_gt == 0:
        return float("nan")
    if len(tp) == 0:
        return 0.0
    hits = np.cumsum(tp)
    recall = np.concatenate([[0.0], hits / num_gt, [1.0]])
    precision = np.concatenate([[0.0], hits / np.arange(1, len(tp) + 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope
    changes = np.where(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[changes] - recall[changes - 1]) * precision[changes]))


def _read(path: str, classes: set[int], excluded: set, scored: bool) -> dict:
    """``{class: [(frame key, box, score)]}`` of a CSV, rows of classes outside ``classes`` and excluded dropped."""
    out: dict[int, list] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row or len(row) < 7 or not row[6].strip():
                continue
            key, action = (row[0].strip(), int(float(row[1]))), int(row[6])
            if action in classes and key not in excluded:
                out[action].append((key, np.array([float(v) for v in row[2:6]]), float(row[7]) if scored else 1.0))
    return out


def _class_tp(detections: list, groundtruth: list) -> tuple[np.ndarray, int]:
    gt: dict = defaultdict(list)
    for key, box, _ in groundtruth:
        gt[key].append(box)
    gt_boxes = {k: np.stack(v) for k, v in gt.items()}
    used = {k: np.zeros(len(v), bool) for k, v in gt_boxes.items()}
    tp = []
    for key, box, _ in sorted(detections, key=lambda d: -d[2]):
        hit = 0
        if key in gt_boxes:
            iou = _iou(box, gt_boxes[key])
            best = int(np.argmax(iou))
            if iou[best] >= 0.5 and not used[key][best]:
                used[key][best], hit = True, 1
        tp.append(hit)
    return np.array(tp, dtype=float), len(groundtruth)


def frame_map(groundtruth_csv: str, detections_csv: str, label_map: str, exclusions: str | None = None) -> dict:
    """``{"mAP": float in [0, 1], "per_class": {class_id: AP}}`` over the label map's classes with ground truth."""
    classes = set(read_label_map(label_map))
    excluded = read_exclusions(exclusions)
    gt = _read(groundtruth_csv, classes, excluded, scored=False)
    det = _read(detections_csv, classes, excluded, scored=True)
    per_class = {c: voc_ap(*_class_tp(det.get(c, []), gt[c])) for c in sorted(classes) if gt.get(c)}
    return {"mAP": float(np.mean(list(per_class.values()))) if per_class else float("nan"), "per_class": per_class}
