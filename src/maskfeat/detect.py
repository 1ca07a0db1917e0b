"""``maskfeat detect``: fine-tune a (pre-trained) video encoder as an AVA-style action detector, evaluate its frame mAP.

Training clips are centred on the ground-truth keyframes of ``data.path`` and their boxes are the annotated people
(optionally jittered: ``detect.box_jitter``); evaluation takes the detected boxes of ``data.val_path`` scoring at
least ``detect.score_threshold``, on the clips of ``detect.eval_view``: ``center``, the centre square (the official
"val" view, the recipe's evaluation while training) or ``full``, the whole frame at the same short side (the
official "test" view; a batch is padded at the bottom and right to its largest clip, rounded up to the encoder's
stride). It scores every action of the label map per box, writes ``detections.csv`` and ``ava_per_class.json``
and logs ``mAP`` (percent) to metrics.jsonl after each epoch, beside ``chance_mAP``: the mAP of random scores on
the same boxes. ``checkpoint-best.pt`` keeps the best mAP. Without ``data.path`` and ``data.val_path`` it trains
on a generated AVA-format set (:mod:`maskfeat.data.sample_ava`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile

import torch
from omegaconf import DictConfig
from timm.layers import trunc_normal_
from torch import nn

from maskfeat import builder
from maskfeat import checkpoint as ckpt_io
from maskfeat.data.ava import AvaFolder, write_rows
from maskfeat.data.ava_clips import AvaDataset, BoxClipTransform, collate_detections
from maskfeat.data.loader import make_loader
from maskfeat.data.sample_ava import sample_ava_folders
from maskfeat.distributed import is_main_process, setup_run
from maskfeat.engine import Job
from maskfeat.errors import ConfigError
from maskfeat.evaluation.ava import frame_map, write_per_class
from maskfeat.models.detector import ActionDetector
from maskfeat.models.registry import create_encoder
from maskfeat.runner import amp_dtype, describe_run, fit, place, steps_per_epoch
from maskfeat.tracking import count_str

log = logging.getLogger("maskfeat")


def detection_loss(net: nn.Module, batch: dict) -> torch.Tensor:
    """Binary cross-entropy of every (box, action) logit: multi-label, a sigmoid per action."""
    logits = net(batch["images"], batch["boxes"])
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["labels"])


def _folders(cfg: DictConfig) -> tuple[AvaFolder, AvaFolder]:
    d = cfg.data
    if d.path is None and d.val_path is None:
        train, val = sample_ava_folders()
        log.info(f"data.path and data.val_path not set: using the generated AVA-format sample set ({train}, {val})")
        return AvaFolder(train, "train"), AvaFolder(val, "val")
    if d.path is None or d.val_path is None:
        raise ConfigError("detect needs data.path=... and data.val_path=... (AVA-format folders), or neither")
    return AvaFolder(d.path, "train"), AvaFolder(d.val_path, "val")


def new_detector(cfg: DictConfig, classes: list[int], names: list[str]) -> tuple[ActionDetector, dict]:
    """The detector of the config: the encoder of ``model.name`` (weights of ``model.checkpoint`` when set), a
    small-initialised box head with one output per action id of ``classes``. Returns it and its encoder entry."""
    m, det = cfg.model, cfg.detect
    meta = {"architecture": m.name, "model_args": builder.encoder_args(cfg, "detect"),
            "pretrained_cfg": builder.make_pretrained_cfg(cfg, len(classes), names)}  # fmt: skip
    encoder = create_encoder(m.name, meta["model_args"], num_classes=0, drop_path=m.drop_path)
    if m.checkpoint:
        builder.load_pretrained(encoder, m.checkpoint, m.allow_pickle)
    else:
        log.warning("model.checkpoint not set: detect starts from random weights (the from-scratch baseline)")
    model = ActionDetector(encoder, len(classes), roi_size=det.roi_size, dropout=det.dropout)
    trunc_normal_(model.head.weight, std=m.head_init_std)
    nn.init.zeros_(model.head.bias)
    if m.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model, {**meta, "action_ids": list(classes)}


def _dataset(cfg: DictConfig, folder: AvaFolder, classes: list[int], train: bool) -> AvaDataset:
    v, flip = cfg.video, builder.hflip(cfg, folder.root)
    transform = BoxClipTransform(cfg.data.image_size, train, short_side=tuple(v.short_side), hflip=flip,
                                 box_jitter=cfg.detect.box_jitter,
                                 view="center" if train else str(cfg.detect.eval_view))  # fmt: skip
    frames = folder.keyframes(predicted=not train, score_threshold=cfg.detect.score_threshold)
    if not frames:
        raise ConfigError(f"{folder.root}: no {'annotated' if train else 'detected'} boxes to "
                          f"{'train' if train else 'evaluate'} on")  # fmt: skip
    return AvaDataset(frames, folder.videos, classes, v.num_frames, v.frame_stride, transform, v.backend)


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, dtype: torch.dtype | None) -> tuple[list, torch.Tensor]:
    """Scores of every box of ``loader``: ([(keyframe index, [0, 1] box)], sigmoid scores (K, num_classes))."""
    model.eval()
    boxes, scores = [], []
    for batch in loader:
        if batch["images"] is None:
            continue
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(batch["images"].to(device), batch["boxes"].to(device))
        scores.append(logits.float().sigmoid().cpu())
        boxes += list(zip(batch["index"].tolist(), batch["norm_boxes"].tolist()))
    return boxes, torch.cat(scores) if scores else torch.zeros(0, 0)


def _detection_rows(dataset: AvaDataset, boxes: list, scores: torch.Tensor) -> list[list]:
    """``video_id, timestamp, x1, y1, x2, y2, action_id, score`` rows, one per box and action."""
    rows = []
    for (index, box), row in zip(boxes, scores.tolist()):
        frame = dataset.keyframes[index]
        coords = [f"{c:.3f}" for c in box]
        rows += [[frame.video_id, frame.timestamp, *coords, a, f"{s:.6f}"] for a, s in zip(dataset.classes, row)]
    return rows


def _map(folder: AvaFolder, rows: list[list], path: str) -> dict:
    write_rows(path, rows)
    return frame_map(folder.groundtruth, path, folder.label_map_path, folder.exclusions_path)


class DetectionEvaluation:
    """The evaluation hook of a detect run (``Job.evaluate``): ``{"mAP", "chance_mAP"}`` in percent. Writes
    ``detections.csv`` and ``ava_per_class.json`` in ``out`` (other processes: a temporary file)."""

    def __init__(self, model: nn.Module, loader, folder: AvaFolder, device: torch.device,
                 dtype: torch.dtype | None, out: str) -> None:  # fmt: skip
        self.model, self.loader, self.folder, self.out = model, loader, folder, out
        self.device, self.dtype = device, dtype
        self.chance: float | None = None

    def __call__(self) -> dict[str, float]:
        boxes, scores = predict(self.model, self.loader, self.device, self.dtype)
        dataset = self.loader.dataset
        main = is_main_process()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(self.out if main else tmp, "detections.csv")
            result = _map(self.folder, _detection_rows(dataset, boxes, scores), path)
            if self.chance is None:  # random scores on the same boxes: what a model that learnt nothing reaches
                noise = torch.rand(scores.shape, generator=torch.Generator().manual_seed(0))
                self.chance = 100 * _map(self.folder, _detection_rows(dataset, boxes, noise),
                                         os.path.join(tmp, "chance.csv"))["mAP"]  # fmt: skip
        if main:
            write_per_class(os.path.join(self.out, "ava_per_class.json"), result, self.folder.label_map)
        return {"mAP": 100 * result["mAP"], "chance_mAP": self.chance}


def run_detect(cfg: DictConfig) -> dict:
    device, rank, world_size = setup_run(cfg)
    tr = cfg.train
    train_folder, val_folder = _folders(cfg)
    total_batch = builder.resolve(cfg, world_size, tr.batch_size * tr.accum_steps, train_folder.root)
    classes = list(train_folder.label_map)
    dataset = _dataset(cfg, train_folder, classes, train=True)
    loader, sampler = make_loader(dataset, collate_detections, tr.batch_size, cfg.data.num_workers, cfg.seed, device,
                                  train=True, rank=rank, world_size=world_size, epoch_size=tr.epoch_size)  # fmt: skip
    epoch = tr.epoch_size or len(dataset)
    spe = steps_per_epoch(epoch, train_folder.root, tr.batch_size, tr.accum_steps, world_size, "keyframes")
    torch.manual_seed(cfg.seed)
    model, meta = new_detector(cfg, classes, [train_folder.label_map[c] for c in classes])
    optimizer, scheduler, train_model, sharded = place(cfg, model, "finetune", spe, device, rank, world_size)
    val_set = _dataset(cfg, val_folder, classes, train=False)
    collate_val = functools.partial(collate_detections, size_divisibility=max(model.strides[1:]))  # full view: pad
    loader_val, _ = make_loader(val_set, collate_val, tr.batch_size, cfg.data.num_workers, cfg.seed, device,
                                train=False)  # fmt: skip
    os.makedirs(cfg.output_dir, exist_ok=True)
    evaluate = DetectionEvaluation(model, loader_val, val_folder, device, amp_dtype(tr.amp, device), cfg.output_dir)
    job = Job(model=model, loss_fn=detection_loss, optimizer=optimizer, scheduler=scheduler, loader=loader,
              sampler=sampler, steps_per_epoch=spe, total_steps=tr.epochs * spe, evaluate=evaluate,
              extra={"encoder": meta, "encoder_prefix": "encoder.", "classifier": "detect", "classes": classes},
              train_model=train_model, sharded=sharded, sample="clips", best_metric="mAP")  # fmt: skip
    n_train = count_str(sum(p.numel() for p in model.parameters() if p.requires_grad))
    n_boxes = sum(len(k.boxes) for k in dataset.keyframes)
    what = f"detect {cfg.model.name} ({n_train} params, {len(classes)} actions, {n_boxes} boxes)"
    result, state = fit(cfg, job, device, describe_run(cfg, what, len(dataset), "keyframes", train_folder.root,
                                                       device, total_batch))  # fmt: skip
    if state is not None:
        _report(cfg.output_dir, result, len(val_set), val_folder.root)
    return result


def _report(out: str, result: dict, num_val: int, val_root: str) -> None:
    """The last evaluation's mAP against chance, and what the run wrote."""
    evals = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if '"mAP"' in line]
    if evals:
        last = evals[-1]
        log.info(f"frame mAP@0.5 {last['mAP']:.1f}% on {num_val} keyframes of {val_root} (chance, random scores on "
                 f"the same boxes: {last['chance_mAP']:.1f}%); best {result['best_mAP']:.1f}%")  # fmt: skip
    names = [n for n in ("config.yaml", "metrics.jsonl", ckpt_io.LAST, "checkpoint-best.pt", "detections.csv",
                         "ava_per_class.json") if os.path.isfile(os.path.join(out, n))]  # fmt: skip
    log.info(f"done. Outputs in {out}: {', '.join(names)}")
