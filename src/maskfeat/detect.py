"""``maskfeat detect``: fine-tune a (pre-trained) video encoder as an AVA-style action detector, evaluate its frame mAP.

Training clips are centred on the ground-truth keyframes of ``data.path`` and their boxes are the annotated people
(optionally jittered: ``detect.box_jitter``); evaluation takes the detected boxes of ``data.val_path`` scoring at
least ``detect.score_threshold``, on the clips of ``detect.eval_view``: ``center``, the centre square (the official
"val" view, the recipe's evaluation while training) or ``full``, the whole frame at the same short side (the
official "test" view; a batch is padded at the bottom and right to its largest clip, rounded up to the encoder's
stride). It scores every action of the label map per box, writes ``detections.csv`` and ``ava_per_class.json``
and logs ``mAP`` (percent) to metrics.jsonl after each epoch, beside ``chance_mAP``: the mAP of random scores on
the same boxes. ``checkpoint-best.pt`` keeps the best mAP. Without ``data.path`` and ``data.val_path`` it trains
on a generated AVA-format set (:mod:`maskfeat.data.sample_ava`). With several processes each scores its share of
the evaluated keyframes (:mod:`maskfeat.evaluation.detection`).
"""

from __future__ import annotations

import json
import logging
import os

import torch
from omegaconf import DictConfig
from torch import nn

from maskfeat import builder
from maskfeat import checkpoint as ckpt_io
from maskfeat.builder.detection import ava_dataset, detection_folders, eval_collate, new_detector
from maskfeat.data.ava_clips import collate_detections
from maskfeat.data.loader import make_loader
from maskfeat.distributed import setup_run
from maskfeat.engine import Job
from maskfeat.evaluation.detection import DetectionEvaluation
from maskfeat.runner import amp_dtype, describe_run, fit, place, steps_per_epoch
from maskfeat.tracking import count_str

log = logging.getLogger("maskfeat")


def detection_loss(net: nn.Module, batch: dict) -> torch.Tensor:
    """Binary cross-entropy of every (box, action) logit: multi-label, a sigmoid per action."""
    logits = net(batch["images"], batch["boxes"])
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["labels"])


def run_detect(cfg: DictConfig) -> dict:
    device, rank, world_size = setup_run(cfg)
    tr = cfg.train
    train_folder, val_folder = detection_folders(cfg)
    total_batch = builder.resolve(cfg, world_size, tr.batch_size * tr.accum_steps, train_folder.root)
    classes = list(train_folder.label_map)
    dataset = ava_dataset(cfg, train_folder, classes, train=True)
    loader, sampler = make_loader(dataset, collate_detections, tr.batch_size, cfg.data.num_workers, cfg.seed, device,
                                  train=True, rank=rank, world_size=world_size, epoch_size=tr.epoch_size)  # fmt: skip
    epoch = tr.epoch_size or len(dataset)
    spe = steps_per_epoch(epoch, train_folder.root, tr.batch_size, tr.accum_steps, world_size, "keyframes")
    torch.manual_seed(cfg.seed)
    model, meta = new_detector(cfg, classes, [train_folder.label_map[c] for c in classes])
    optimizer, scheduler, train_model, sharded = place(cfg, model, "finetune", spe, device, rank, world_size)
    val_set = ava_dataset(cfg, val_folder, classes, train=False)
    # each process scores its share of the keyframes
    loader_val, _ = make_loader(val_set, eval_collate(model), tr.batch_size, cfg.data.num_workers, cfg.seed, device,
                                train=False, rank=rank, world_size=world_size)  # fmt: skip
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
