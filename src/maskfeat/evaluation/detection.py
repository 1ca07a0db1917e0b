"""Evaluating an action detector: the scores of every detected box, the AVA detections file, and its frame mAP.

With several processes each scores its share of the keyframes (the evaluation sampler pads the shares to equal
length, as a sharded model needs the same number of forward passes on every rank); the shares are gathered on
every process, a keyframe scored twice counted once, in keyframe order, so the detections file and the mAP are
those of one process.
"""

from __future__ import annotations

import os
import tempfile

import torch
from torch import nn

from maskfeat.data.ava import AvaFolder, write_rows
from maskfeat.distributed import all_gather_lists, is_main_process
from maskfeat.evaluation.ava import frame_map, write_per_class

__all__ = ["DetectionEvaluation", "detection_rows", "gather_predictions", "predict"]

#: ``{keyframe index: [(box x1, y1, x2, y2 in [0, 1], one score per class)]}``
Predictions = dict[int, list[tuple[list[float], list[float]]]]


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, dtype: torch.dtype | None) -> Predictions:
    """The sigmoid scores of every box of ``loader`` (this process's share), by keyframe."""
    model.eval()
    out: Predictions = {}
    for batch in loader:
        if batch["images"] is None:
            continue
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(batch["images"].to(device), batch["boxes"].to(device))
        scores = logits.float().sigmoid().cpu().tolist()
        for index, box, row in zip(batch["index"].tolist(), batch["norm_boxes"].tolist(), scores):
            out.setdefault(index, []).append((box, row))
    return out


def gather_predictions(local: Predictions) -> Predictions:
    """Every process's predictions (a collective), each keyframe once (the first process's), in keyframe order."""
    merged: Predictions = {}
    for index, boxes in all_gather_lists(list(local.items())):
        merged.setdefault(index, boxes)
    return dict(sorted(merged.items()))


def detection_rows(keyframes: list, classes: list[int], predictions: Predictions) -> list[list]:
    """``video_id, timestamp, x1, y1, x2, y2, action_id, score`` rows, one per box and action of ``classes``."""
    rows = []
    for index, boxes in predictions.items():
        frame = keyframes[index]
        for box, scores in boxes:
            coords = [f"{c:.3f}" for c in box]
            rows += [[frame.video_id, frame.timestamp, *coords, a, f"{s:.6f}"] for a, s in zip(classes, scores)]
    return rows


def _random_scores(predictions: Predictions, num_classes: int) -> Predictions:
    """The same boxes with uniform random scores (seeded): what a model that learnt nothing reaches."""
    count = sum(len(boxes) for boxes in predictions.values())
    noise = iter(torch.rand((count, num_classes), generator=torch.Generator().manual_seed(0)).tolist())
    return {i: [(box, next(noise)) for box, _ in boxes] for i, boxes in predictions.items()}


class DetectionEvaluation:
    """The evaluation of a detector on ``folder``'s detected boxes: ``{"mAP", "chance_mAP"}`` in percent, the same
    on every process; the main one writes ``detections.csv`` and ``ava_per_class.json`` in ``out``.

    Args:
        model: the detector (not a DDP wrapper).
        loader: the evaluation loader of an :class:`~maskfeat.data.ava_clips.AvaDataset` (this process's share).
        folder: the evaluation folder (ground truth, label map, exclusions).
    """

    def __init__(self, model: nn.Module, loader, folder: AvaFolder, device: torch.device,
                 dtype: torch.dtype | None, out: str) -> None:  # fmt: skip
        self.model, self.loader, self.folder, self.out = model, loader, folder, out
        self.device, self.dtype = device, dtype
        self.chance: float | None = None

    def _map(self, predictions: Predictions, path: str) -> dict:
        dataset = self.loader.dataset
        write_rows(path, detection_rows(dataset.keyframes, dataset.classes, predictions))
        f = self.folder
        return frame_map(f.groundtruth, path, f.label_map_path, f.exclusions_path)

    def __call__(self) -> dict[str, float]:
        predictions = gather_predictions(predict(self.model, self.loader, self.device, self.dtype))
        main = is_main_process()
        with tempfile.TemporaryDirectory() as tmp:
            result = self._map(predictions, os.path.join(self.out if main else tmp, "detections.csv"))
            if self.chance is None:
                noise = _random_scores(predictions, len(self.loader.dataset.classes))
                self.chance = 100 * self._map(noise, os.path.join(tmp, "chance.csv"))["mAP"]
        if main:
            write_per_class(os.path.join(self.out, "ava_per_class.json"), result, self.folder.label_map)
        return {"mAP": 100 * result["mAP"], "chance_mAP": self.chance}
