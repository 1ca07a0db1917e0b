"""Tests of maskfeat.evaluation.ava.frame_map: against an independent plain-loop implementation of the AVA frame
mAP (the rules in the module's docstring) on random boxes, and on hand-made cases whose AP is known."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from maskfeat.evaluation.ava import frame_map, read_label_map, write_per_class

FULL = (0.0, 0.0, 1.0, 1.0)


def write_csv(path: Path, rows) -> str:
    path.write_text("".join(",".join(str(v) for v in row) + "\n" for row in rows))
    return str(path)


def write_label_map(path: Path, ids) -> str:
    text = "".join(f'item {{\n  name: "action {c}"\n  id: {c}\n  label_type: PERSON_MOVEMENT\n}}\n' for c in ids)
    path.write_text(text)
    return str(path)


def evaluate(tmp_path: Path, gt, det, ids, excluded=None) -> dict:
    """frame_map on rows: ``gt`` as (video, ts, box, action), ``det`` as (video, ts, box, action, score)."""
    gt_rows = [(v, t, *box, a, i) for i, (v, t, box, a) in enumerate(gt)]
    det_rows = [(v, t, *box, a, s) for v, t, box, a, s in det]
    paths = [write_csv(tmp_path / "gt.csv", gt_rows), write_csv(tmp_path / "det.csv", det_rows)]
    paths.append(write_label_map(tmp_path / "labels.pbtxt", ids))
    exclusions = write_csv(tmp_path / "excluded.csv", excluded) if excluded is not None else None
    return frame_map(*paths, exclusions)


# ---- the independent implementation: plain loops over the rows ----


def ref_iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def ref_ap(ranked_hits: list[bool], num_gt: int) -> float:
    """VOC all-points AP: each true positive adds 1/num_gt of recall at the best precision from its rank on."""
    precisions, tp = [], 0
    for k, hit in enumerate(ranked_hits, 1):
        tp += hit
        precisions.append(tp / k)
    ap = 0.0
    for k, hit in enumerate(ranked_hits):
        if hit:
            ap += max(precisions[k:]) / num_gt
    return ap


def ref_best(box, boxes) -> tuple[int | None, float]:
    """The index of the box of highest IoU with ``box`` (the first of equals) and that IoU."""
    best, best_iou = None, -1.0
    for j, g in enumerate(boxes):
        iou = ref_iou(box, g)
        if iou > best_iou:
            best, best_iou = j, iou
    return best, best_iou


def ref_frame_map(gt, det, ids, excluded) -> dict:
    """gt: (video, second, box, action); det: (video, second, box, action, score), in file order."""
    excluded = set(excluded)
    truth = defaultdict(list)  # (video, second, class) -> boxes
    for v, t, box, a in gt:
        if a in ids and (v, t) not in excluded:
            truth[(v, t, a)].append(box)
    num_gt = defaultdict(int)
    for (_, _, a), boxes in truth.items():
        num_gt[a] += len(boxes)
    taken = set()
    scored = defaultdict(list)  # class -> (score, hit)
    for v, t, box, a, s in det:
        if a not in ids or (v, t) in excluded or not (box[0] < box[2] and box[1] < box[3]):
            continue
        best, best_iou = ref_best(box, truth[(v, t, a)])
        hit = best is not None and best_iou >= 0.5 and (v, t, a, best) not in taken
        if hit:
            taken.add((v, t, a, best))
        scored[a].append((s, hit))
    per_class = {}
    for c in sorted(ids):
        if num_gt[c]:
            ranked = sorted(scored[c], key=lambda sh: -sh[0])  # scores are distinct in the random sets
            per_class[c] = ref_ap([h for _, h in ranked], num_gt[c])
    return {"mAP": sum(per_class.values()) / len(per_class), "per_class": per_class}


def random_set(seed: int):
    """Random ground truth and detections: several videos (some ids starting with '-'), frames with up to 5
    people (some overlapping) and 1-3 actions each, detections jittered around them with extra and out-of-map
    classes, false alarms, invalid boxes, frames only in the detections, excluded timestamps, classes without
    ground truth."""
    rng = np.random.default_rng(seed)
    ids = sorted(rng.choice(np.arange(1, 30), 14, replace=False).tolist())
    with_gt = ids[3:]  # ids[:3]: in the label map, never in the ground truth

    def box():
        x, y = rng.uniform(0, 0.8, 2)
        w, h = rng.uniform(0.05, 0.5, 2)
        return (float(x), float(y), float(min(1.0, x + w)), float(min(1.0, y + h)))

    gt, det, excluded = [], [], []
    for v in ["-vid0", "vid0", "-_x1", "vid3"]:
        for t in rng.choice(np.arange(900, 1800), 20, replace=False).tolist():
            people = [box() for _ in range(rng.integers(0, 5))]
            if people and rng.random() < 0.5:  # people close together: one detection may overlap both
                x1, y1, x2, y2 = people[0]
                shift = float(rng.uniform(0.02, 0.15))
                people.append((x1 + shift, y1, min(1.0, x2 + shift), y2))
            for person in people:
                actions = rng.choice(with_gt, rng.integers(1, 4), replace=False).tolist()
                gt += [(v, t, person, a) for a in actions] + ([(v, t, person, 99)] if rng.random() < 0.2 else [])
                for _ in range(rng.integers(0, 3)):
                    d = tuple(
                        np.clip(np.array(person) + rng.normal(0, rng.choice([0.01, 0.05, 0.1]), 4), 0, 1).tolist()
                    )
                    extra = rng.choice(ids + [77], rng.integers(0, 3)).tolist()
                    det += [(v, t, d, a, rng.random()) for a in set(actions + extra)]
            det += [(v, t, box(), int(rng.choice(ids)), rng.random()) for _ in range(rng.integers(0, 3))]
            det.append((v, t, (0.6, 0.2, 0.5, 0.9), int(rng.choice(ids)), rng.random()))  # invalid: x1 > x2
            if rng.random() < 0.15:
                excluded.append((v, t))
        det += [(v, int(t), box(), int(rng.choice(ids)), rng.random()) for t in rng.choice(900, 3, replace=False)]
    order = rng.permutation(len(det)) if seed % 2 else np.arange(len(det))  # frames interleaved or in blocks
    return gt, [det[i] for i in order], ids, excluded


@pytest.mark.parametrize("seed", range(3))
def test_matches_independent_implementation_on_random_boxes(tmp_path, seed):
    gt, det, ids, excluded = random_set(seed)
    expected = ref_frame_map(gt, det, ids, excluded)
    # floats written by str(): exact. Timestamps written as %04d in some rows, plain in others: one frame either way
    gt = [(v, f"{t:04d}" if i % 3 else str(t), b, a) for i, (v, t, b, a) in enumerate(gt)]
    got = evaluate(tmp_path, gt, det, ids, excluded)
    assert len(gt) > 300 and len(det) > 600 and len(expected["per_class"]) == len(ids) - 3
    assert set(got["per_class"]) == set(expected["per_class"])
    for c, ap in expected["per_class"].items():
        assert got["per_class"][c] == pytest.approx(ap, abs=1e-6)
    assert got["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    assert 0.05 < got["mAP"] < 0.95


# ---- hand-made cases ----

# binary fractions: every IoU below is exact
A = (0.0, 0.0, 0.5, 1.0)
B = (0.125, 0.0, 0.625, 1.0)  # IoU(A, B) = 0.375 / 0.625
FAR = (0.7, 0.0, 0.9, 0.3)


def test_perfect_detections_give_ap_1(tmp_path):
    gt = [("v", 902, A, 1), ("v", 902, FAR, 2), ("v", 903, B, 1), ("w", 902, FULL, 3)]
    det = [(v, t, b, a, 0.9) for v, t, b, a in gt]
    result = evaluate(tmp_path, gt, det, [1, 2, 3])
    assert result == {"mAP": 1.0, "per_class": {1: 1.0, 2: 1.0, 3: 1.0}}


def test_all_wrong_detections_give_ap_0(tmp_path):
    gt = [("v", 902, A, 1), ("v", 903, A, 2)]
    det = [("v", 902, FAR, 1, 0.9), ("v", 903, A, 1, 0.8), ("v", 904, A, 2, 0.7)]  # wrong box, class, frame
    assert evaluate(tmp_path, gt, det, [1, 2]) == {"mAP": 0.0, "per_class": {1: 0.0, 2: 0.0}}


def test_a_class_without_detections_has_ap_0(tmp_path):
    result = evaluate(tmp_path, [("v", 902, A, 1), ("v", 902, A, 2)], [("v", 902, A, 1, 0.9)], [1, 2])
    assert result == {"mAP": 0.5, "per_class": {1: 1.0, 2: 0.0}}


def test_duplicate_detection_is_a_false_positive(tmp_path):
    gt = [("v", 902, A, 1), ("v", 902, FAR, 1)]
    det = [("v", 902, A, 1, 0.9), ("v", 902, A, 1, 0.8), ("v", 902, FAR, 1, 0.7)]  # TP, FP (A taken), TP
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: AP = 1/2 * 1 + 1/2 * 2/3
    assert evaluate(tmp_path, gt, det, [1])["per_class"][1] == pytest.approx(0.5 + 1 / 3, abs=1e-12)


def test_detections_of_a_frame_are_matched_in_file_order_not_by_score(tmp_path):
    # the first row (score 0.2) takes the box; the second (0.9) is a false positive, ranked first: AP 1/2
    det = [("v", 902, A, 1, 0.2), ("v", 902, A, 1, 0.9)]
    assert evaluate(tmp_path, [("v", 902, A, 1)], det, [1])["per_class"][1] == 0.5


def test_a_detection_whose_best_box_is_taken_does_not_fall_back_to_another(tmp_path):
    d2 = (0.03125, 0.0, 0.53125, 1.0)  # IoU 0.47/0.53 with A (its best), 0.41/0.59 > 0.5 with B, which is free
    gt = [("v", 902, A, 1), ("v", 902, B, 1)]
    result = evaluate(tmp_path, gt, [("v", 902, A, 1, 0.9), ("v", 902, d2, 1, 0.8)], [1])
    assert result["per_class"][1] == 0.5  # TP then FP: recall stays 1/2


def test_one_detection_overlapping_two_boxes_matches_one(tmp_path):
    middle = (0.0625, 0.0, 0.5625, 1.0)  # IoU 0.4375/0.5625 with both A and B: the first in file order is taken
    gt = [("v", 902, A, 1), ("v", 902, B, 1)]
    result = evaluate(tmp_path, gt, [("v", 902, middle, 1, 0.9), ("v", 902, A, 1, 0.8)], [1])
    assert result["per_class"][1] == 0.5  # the second detection's best box, A, is taken: FP
    result = evaluate(tmp_path, gt, [("v", 902, middle, 1, 0.9), ("v", 902, B, 1, 0.8)], [1])
    assert result["per_class"][1] == 1.0  # B is still free


def test_iou_threshold_is_inclusive(tmp_path):
    half = (0.0, 0.0, 0.5, 1.0)
    result = evaluate(tmp_path, [("v", 902, FULL, 1)], [("v", 902, half, 1, 0.9)], [1])  # IoU exactly 0.5
    assert result["per_class"][1] == 1.0
    result = evaluate(tmp_path, [("v", 902, FULL, 1)], [("v", 902, (0.0, 0.0, 0.49, 1.0), 1, 0.9)], [1])
    assert result["per_class"][1] == 0.0


def test_score_ties_are_ranked_as_the_official_numpy_argsort(tmp_path):
    # a false positive and a true positive with equal scores: AP 1 if the true positive ranks first, else 1/2
    det = [("v", 902, FAR, 1, 0.7), ("v", 902, A, 1, 0.7)]
    first = int(np.argsort(np.array([0.7, 0.7]))[::-1][0])  # the official rule: reversed default argsort
    expected = 1.0 if first == 1 else 0.5
    assert evaluate(tmp_path, [("v", 902, A, 1)], det, [1])["per_class"][1] == expected
    # two tied true positives: the order does not matter
    det = [("v", 902, A, 1, 0.7), ("v", 903, A, 1, 0.7), ("v", 903, FAR, 1, 0.1)]
    assert evaluate(tmp_path, [("v", 902, A, 1), ("v", 903, A, 1)], det, [1])["per_class"][1] == 1.0


def test_a_class_without_ground_truth_has_no_ap(tmp_path):
    det = [("v", 902, A, 1, 0.9), ("v", 902, A, 2, 0.9), ("v", 902, FAR, 2, 0.95)]
    result = evaluate(tmp_path, [("v", 902, A, 1), ("v", 902, A, 3)], det, [1, 2, 3])
    assert result == {"mAP": 0.5, "per_class": {1: 1.0, 3: 0.0}}  # class 2 is not a 0 in the mean


def test_no_ground_truth_at_all_gives_nan(tmp_path):
    result = evaluate(tmp_path, [("v", 902, A, 5)], [("v", 902, A, 1, 0.9)], [1, 2])
    assert math.isnan(result["mAP"]) and result["per_class"] == {}


def test_excluded_timestamps_are_ignored(tmp_path):
    gt = [("v", 902, A, 1), ("v", 903, A, 1), ("v", "0904", A, 1)]
    det = [("v", 902, A, 1, 0.5), ("v", 903, FAR, 1, 0.9), ("w", 904, FAR, 1, 0.9)]
    assert evaluate(tmp_path, gt, det, [1])["per_class"][1] == pytest.approx(1 / 3 * 1 / 3)
    excluded = [("v", "0903"), ("v", 904), ("w", 904)]  # an undetected box, a false positive, their frames
    assert evaluate(tmp_path, gt, det, [1], excluded) == {"mAP": 1.0, "per_class": {1: 1.0}}


def test_action_ids_outside_the_label_map_are_dropped(tmp_path):
    gt = [("v", 902, A, 1), ("v", 902, FAR, 9)]  # 9: not in the map, never detected
    det = [("v", 902, A, 1, 0.5), ("v", 902, FAR, 7, 0.9), ("v", 902, A, 9, 0.9)]
    assert evaluate(tmp_path, gt, det, [1, 2]) == {"mAP": 1.0, "per_class": {1: 1.0}}


def test_video_ids_starting_with_a_dash_and_timestamp_formats(tmp_path):
    gt = [("-5KQ66BBWC4", "0902", A, 1), ("5KQ66BBWC4", 902, B, 1)]
    det = [("-5KQ66BBWC4", 902, B, 1, 0.95), ("-5KQ66BBWC4", "902", A, 1, 0.9), ("5KQ66BBWC4", "902.0", B, 1, 0.8)]
    # in the '-' video only A is: B takes it (IoU 0.6), then A is a false positive; TP, FP, TP.
    # Were the two videos one frame, B would take B and A would take A (AP 1).
    assert evaluate(tmp_path, gt, det, [1])["per_class"][1] == pytest.approx(0.5 + 0.5 * 2 / 3)
    with pytest.raises(ValueError, match="whole number"):
        evaluate(tmp_path, gt, [("v", "902.5", A, 1, 0.9)], [1])


def test_invalid_detected_boxes_are_dropped(tmp_path):
    det = [("v", 902, (0.5, 0.0, 0.5, 1.0), 1, 0.99), ("v", 902, (0.0, 0.6, 1.0, 0.2), 1, 0.98), ("v", 902, A, 1, 0.1)]
    assert evaluate(tmp_path, [("v", 902, A, 1)], det, [1])["per_class"][1] == 1.0
    with pytest.raises(ValueError, match="x1 > x2"):
        evaluate(tmp_path, [("v", 902, (0.5, 0.0, 0.4, 1.0), 1)], det, [1])


def test_label_map_layouts(tmp_path):
    ava = tmp_path / "ava.pbtxt"
    ava.write_text(
        'item {\n  name: "bend/bow (at the waist)"\n  id: 1\n  label_type: PERSON_MOVEMENT\n}\n'
        'item {\n  name: "talk to (e.g., self, a person, a group)"\n  id: 79\n'
        "  label_type: PERSON_INTERACTION\n}\n"
    )
    assert read_label_map(str(ava)) == {1: "bend/bow (at the waist)", 79: "talk to (e.g., self, a person, a group)"}
    one_line = tmp_path / "one.pbtxt"
    one_line.write_text('item { name: "id: 5 {x}" id: 3 }\nitem { display_name: "d" name: "b" label_id: 4 }\n')
    assert read_label_map(str(one_line)) == {3: "id: 5 {x}", 4: "b"}
    for text in ['item { name: "zero" id: 0 }', "# nothing\n"]:
        (tmp_path / "bad.pbtxt").write_text(text)
        with pytest.raises(ValueError):
            read_label_map(str(tmp_path / "bad.pbtxt"))


def test_malformed_rows_name_the_file_and_line(tmp_path):
    det = tmp_path / "det.csv"
    det.write_text("v,902,0,0,1,1,1,0.5\n\nv,902,0,0,1,1,1\n")  # a blank line, then a row without score
    gt = write_csv(tmp_path / "gt.csv", [("v", 902, *A, 1, 0)])
    labels = write_label_map(tmp_path / "l.pbtxt", [1])
    with pytest.raises(ValueError, match=r"det\.csv:3: expected 8"):
        frame_map(gt, str(det), labels)


def test_write_per_class(tmp_path):
    path = tmp_path / "ava_per_class.json"
    write_per_class(str(path), {"mAP": 0.5, "per_class": {3: 0.0, 1: 1.0}}, {1: "stand", 3: "sit"})
    assert json.loads(path.read_text()) == {
        "mAP": 0.5,
        "per_class": [{"id": 1, "name": "stand", "AP": 1.0}, {"id": 3, "name": "sit", "AP": 0.0}],
    }
    write_per_class(str(path), {"mAP": math.nan, "per_class": {}})
    assert json.loads(path.read_text()) == {"mAP": None, "per_class": []}
