"""``maskfeat finetune | linprobe``: classification with a (pre-trained) encoder, built by :mod:`maskfeat.builder`.

- finetune: the whole encoder trains, with global average pooling of the patch tokens + a norm (``fc_norm``),
  a small-initialised head, layer-wise lr decay, RandAugment, Mixup/CutMix, label smoothing, random erasing
  (the MAE/MaskFeat recipe, timm's own pieces). Without ``model.checkpoint`` it trains from scratch.
- linprobe: the encoder is frozen; a BatchNorm without affine + linear head on the average-pooled patch tokens
  (after the pre-trained final norm) trains with LARS (MAE's probe).

With ``data.val_path`` set, each evaluates on it after every epoch, writes ``top1``/``top5`` to metrics.jsonl
and keeps ``checkpoint-best.pt``. ``maskfeat evaluate`` (:mod:`maskfeat.evaluate`) scores a saved classifier.
"""

from __future__ import annotations

import logging
import os
from functools import partial

import torch
from omegaconf import DictConfig
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from maskfeat import builder
from maskfeat import checkpoint as ckpt_io
from maskfeat.data.loader import make_loader
from maskfeat.distributed import setup_run
from maskfeat.engine import Job, evaluate
from maskfeat.runner import amp_dtype, describe_run, fit, place, steps_per_epoch
from maskfeat.tracking import count_str

log = logging.getLogger("maskfeat")


class ClassificationLoss:
    """Cross-entropy of a batch's logits, with label smoothing, and Mixup / CutMix when ``mixup`` is given (then
    against its soft targets). Video ``(B, C, T, H, W)``: the same box is mixed or cut in every frame."""

    def __init__(self, label_smoothing: float, mixup: Mixup | None = None):
        self.mixup = mixup
        self.criterion = SoftTargetCrossEntropy() if mixup else nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def __call__(self, net: nn.Module, batch: dict) -> torch.Tensor:
        x, y = batch["images"], batch["labels"]
        if self.mixup is not None:
            if len(x) % 2:  # Mixup pairs samples: drop one when an unreadable file left an odd batch
                x, y = x[:-1], y[:-1]
            shape = x.shape
            x, y = self.mixup(x.flatten(1, -3), y)
            x = x.view(shape)
        return self.criterion(net(x), y)


def classification_loss(cfg: DictConfig, kind: str, num_classes: int) -> ClassificationLoss:
    tr = cfg.train
    mixup = None
    if kind == "finetune" and (tr.mixup > 0 or tr.cutmix > 0):
        mixup = Mixup(mixup_alpha=tr.mixup, cutmix_alpha=tr.cutmix, label_smoothing=tr.label_smoothing,
                      num_classes=num_classes)  # fmt: skip
    return ClassificationLoss(tr.label_smoothing, mixup)


def _classification_run(cfg: DictConfig, kind: str) -> dict:
    device, rank, world_size = setup_run(cfg)
    tr = cfg.train
    train_folder, val_folder = builder.labeled_folders(cfg)
    total_batch = builder.resolve(cfg, world_size, tr.batch_size * tr.accum_steps, train_folder)
    dataset = builder.train_dataset(cfg, train_folder, kind)
    sample = builder.sample_kind(cfg)
    per_batch = tr.batch_size // cfg.video.repeated_aug  # repeated augmentation: each video gives repeated_aug clips
    loader, sampler = make_loader(dataset, builder.label_collate(), per_batch, cfg.data.num_workers, cfg.seed,
                                  device, train=True, rank=rank, world_size=world_size,
                                  epoch_size=tr.epoch_size)  # fmt: skip
    epoch = tr.epoch_size or len(dataset)
    spe = steps_per_epoch(epoch, train_folder, per_batch, tr.accum_steps, world_size, sample.noun)
    torch.manual_seed(cfg.seed)
    model, meta = builder.new_classifier(cfg, kind, dataset.classes)
    optimizer, scheduler, train_model, sharded = place(cfg, model, kind, spe, device, rank, world_size)
    evaluate_fn = None
    if val_folder:
        loader_val = builder.val_loader(cfg, val_folder, dataset.classes, device, cfg.data.image_size, cfg.model.name)
        evaluate_fn = partial(evaluate, model, loader_val, device, amp_dtype(tr.amp, device))
    else:
        log.warning("data.val_path not set: no evaluation during training")
    job = Job(
        model=model, loss_fn=classification_loss(cfg, kind, len(dataset.classes)), optimizer=optimizer,
        scheduler=scheduler, loader=loader, sampler=sampler, steps_per_epoch=spe, total_steps=tr.epochs * spe,
        extra={"encoder": meta, "encoder_prefix": "", "classifier": kind, "classes": list(dataset.classes)},
        evaluate=evaluate_fn, train_model=train_model, sharded=sharded, sample=sample.unit,
    )  # fmt: skip
    n_train = count_str(sum(p.numel() for p in model.parameters() if p.requires_grad))
    what = f"{kind} {cfg.model.name} ({n_train} trainable params, {len(dataset.classes)} classes)"
    result, state = fit(cfg, job, device, describe_run(cfg, what, len(dataset), sample.noun, train_folder, device,
                                                       total_batch))  # fmt: skip
    if state is not None:
        _write_outputs(cfg.output_dir, kind, state, meta, sample.timm)
    return result


def _write_outputs(out: str, kind: str, state: dict, meta: dict, timm: bool) -> None:
    """A fine-tuned encoder with its head as encoder.safetensors (an image model: a plain timm classifier, loads
    with ``timm.create_model(**model_args)``); then the list of what this run wrote."""
    if kind == "finetune":
        ckpt_io.write_encoder(out, state, **meta)
    names = [n for n in ("config.yaml", "metrics.jsonl", ckpt_io.LAST, "checkpoint-best.pt")
             if os.path.isfile(os.path.join(out, n))]  # fmt: skip
    if kind == "finetune":
        names.append("encoder.safetensors + encoder.json (with its head" + (", timm" if timm else "") + ")")
    log.info(f"done. Outputs in {out}: {', '.join(names)}")


def run_finetune(cfg: DictConfig) -> dict:
    return _classification_run(cfg, "finetune")


def run_linprobe(cfg: DictConfig) -> dict:
    return _classification_run(cfg, "linprobe")
