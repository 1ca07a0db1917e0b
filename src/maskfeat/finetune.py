"""``maskfeat finetune | linprobe | evaluate``: image classification with a (pre-trained) encoder.

- finetune: the whole timm ViT trains, with global average pooling of the patch tokens + a norm (``fc_norm``),
  a small-initialised head, layer-wise lr decay, RandAugment, Mixup/CutMix, label smoothing, random erasing
  (the MAE/MaskFeat recipe, timm's own pieces). Without ``model.checkpoint`` it trains from scratch.
- linprobe: the encoder is frozen; a BatchNorm without affine + linear head on the average-pooled patch tokens
  (after the pre-trained final norm) trains with LARS (MAE's probe).
- evaluate: top-1 / top-5 of a finetune or linprobe checkpoint on ``data.val_path`` (resize + centre crop).

With ``data.val_path`` set, each evaluates on it after every epoch, writes ``top1``/``top5`` to metrics.jsonl
and keeps ``checkpoint-best.pt``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from functools import partial

import numpy as np
import torch
from omegaconf import DictConfig
from timm.data import Mixup, create_transform
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from maskfeat import checkpoint as ckpt_io
from maskfeat.config import ConfigError, to_yaml
from maskfeat.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDataset,
    eval_transform,
    sample_labeled_folder,
    sample_video_folder,
)
from maskfeat.data.collate import MaskCollator
from maskfeat.data.video import VideoDataset
from maskfeat.data.video_transforms import VideoTrainTransform
from maskfeat.engine import evaluate
from maskfeat.models.mvit import MViTEncoder, load_pretrained_mvit
from maskfeat.models.names import VIDEO_ARCHITECTURES
from maskfeat.models.registry import create_encoder
from maskfeat.models.vit import encoder_model_args
from maskfeat.optim import build_optimizer, build_scheduler, scaled_lr
from maskfeat.pretrain import is_video, steps_per_epoch, video_model_args
from maskfeat.runner import Job, amp_dtype, fit, make_loader, setup_run, shard_model, wrap_for_training
from maskfeat.tracking import count_str

log = logging.getLogger("maskfeat")


def labeled_folders(cfg: DictConfig, need_train: bool = True) -> tuple[str | None, str | None]:
    """(train, val) folders: ``data.path`` / ``data.val_path``, or the embedded labeled sample images when both
    are null (crops of scikit-image's photos, one class per photo)."""
    if cfg.data.path is None and cfg.data.val_path is None:
        make = sample_video_folder if is_video(cfg) else partial(sample_labeled_folder, size=160)
        train = make(split="train") if need_train else None
        val = make(split="val")
        log.info(f"data.path and data.val_path not set: using the embedded labeled samples ({val})")
        return train, val
    if need_train and cfg.data.path is None:
        raise ConfigError("data.path=... is needed: a folder of class sub-folders to train on")
    return cfg.data.path, cfg.data.val_path


def label_subset(labels: list[int], fraction: float, seed: int) -> list[int]:
    """Indices of a class-balanced ``fraction`` of the samples (at least one per class), chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    labels_np = np.asarray(labels)
    keep = []
    for c in np.unique(labels_np):
        idx = np.flatnonzero(labels_np == c)
        keep.extend(rng.permutation(idx)[: max(1, math.ceil(fraction * len(idx)))].tolist())
    return sorted(keep)


def _train_dataset(cfg: DictConfig, folder: str, linprobe: bool) -> ImageDataset | VideoDataset:
    d = cfg.data
    if is_video(cfg):
        transform = VideoTrainTransform(crop_size=d.image_size, short_side=tuple(d.short_side),
                                        scale=tuple(d.crop_scale), hflip=d.hflip,
                                        auto_augment=None if linprobe else d.auto_augment,
                                        reprob=0.0 if linprobe else d.reprob)  # fmt: skip
        full = VideoDataset(folder, num_frames=d.num_frames, stride=d.frame_stride, transform=transform,
                            repeats=d.repeated_aug, backend=d.video_backend)  # fmt: skip
    else:
        full = ImageDataset(folder, _image_train_transform(cfg, linprobe))
    if not full.classes:
        raise ConfigError(f"data.path={folder} has no class sub-folders: classification needs labeled data")
    if d.label_fraction >= 1:
        return full
    keep = label_subset(full.labels, d.label_fraction, cfg.seed)
    files, labels = full.files, full.labels
    clip = {"num_frames": d.num_frames, "stride": d.frame_stride} if is_video(cfg) else {}
    if is_video(cfg):
        clip.update(repeats=d.repeated_aug, backend=d.video_backend)
    subset = type(full)(folder, transform=full.transform, files=[files[i] for i in keep],
                        labels=[labels[i] for i in keep], classes=full.classes, **clip)  # fmt: skip
    log.info(f"data.label_fraction={d.label_fraction}: training on {len(subset)} of {len(full)} labeled samples")
    return subset


def _image_train_transform(cfg: DictConfig, linprobe: bool):
    d = cfg.data
    return create_transform(
        d.image_size,
        is_training=True,
        scale=tuple(d.crop_scale),
        hflip=d.hflip,
        color_jitter=None if linprobe else 0.4,
        auto_augment=None if linprobe else d.auto_augment,
        interpolation="bicubic",
        re_prob=0.0 if linprobe else d.reprob,
        re_mode="pixel",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def _val_loader(cfg: DictConfig, folder: str, classes: list[str], device: torch.device, image_size: int,
                video: bool):  # fmt: skip
    """Images: resize + centre crop. Video: ``data.num_clips`` x ``data.num_crops`` views per video."""
    d = cfg.data
    if video:
        dataset = VideoDataset(folder, num_frames=d.num_frames, stride=d.frame_stride, mode="eval",
                               num_clips=d.num_clips, num_crops=d.num_crops, crop_size=image_size,
                               backend=d.video_backend)  # fmt: skip
    else:
        dataset = ImageDataset(folder, eval_transform(image_size, crop_pct=d.crop_pct))
    if classes and dataset.classes != classes:
        raise ConfigError(
            f"data.val_path={folder} has classes {dataset.classes[:5]}... but training has {classes[:5]}...: "
            "they must be the same sub-folder names"
        )
    loader, _ = make_loader(dataset, MaskCollator(None, (1, 1), 0.5), cfg.train.batch_size, cfg.data.num_workers,
                            cfg.seed, device, train=False)  # fmt: skip
    return loader


def build_classifier(meta: dict, kind: str, drop_path: float = 0.0) -> nn.Module:
    """A classifier from ``{"architecture", "model_args"}``: a timm ViT (or a video encoder) with its own head
    (finetune) or a frozen encoder with a BatchNorm + linear head (linprobe). ``model_args`` holds ``num_classes``."""
    args = dict(meta["model_args"])
    num_classes = args.pop("num_classes")
    if kind == "finetune":
        return create_encoder(meta["architecture"], args, num_classes=num_classes, drop_path=drop_path)
    model = create_encoder(meta["architecture"], args, num_classes=0)
    dim = model.num_features
    model.head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    model.num_classes = num_classes
    return model


def load_pretrained(model: nn.Module, path: str, allow_pickle: bool = False) -> None:
    """Load encoder weights into a classifier: the head (and the pre-training final norm, when the classifier
    pools with a new ``fc_norm``) are left out; position embeddings are resampled to the new grid."""
    state, meta = ckpt_io.read_encoder(path, allow_pickle)
    if isinstance(model, MViTEncoder):  # the last stage's query pooling comes back: MViT's own loader
        report = load_pretrained_mvit(model, state)
        log.info(f"loaded pre-trained MViT from {path} (new: {', '.join(report.missing_keys) or 'none'})")
        return
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm."))}
    if isinstance(getattr(model, "norm", None), nn.Identity):
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
    if "pos_embed" in state and state["pos_embed"].shape != model.pos_embed.shape and state["pos_embed"].dim() == 3:
        old = state["pos_embed"].shape
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"], list(model.patch_embed.grid_size), num_prefix_tokens=model.num_prefix_tokens
        )
        log.info(f"resampled position embeddings {tuple(old)} -> {tuple(model.pos_embed.shape)}")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        arch = meta["architecture"] if meta else "?"
        raise ConfigError(f"{path} ({arch}) does not fit model.name/sizes of this run: "
                          f"{str(e).splitlines()[1].strip()}") from None  # fmt: skip
    allowed = ("head.", "fc_norm.", "norm.")
    bad = [k for k in missing if not k.startswith(allowed)] + list(unexpected)
    if bad:
        raise ConfigError(f"{path} does not match the encoder: missing or unexpected weights {bad[:6]}")
    log.info(f"loaded pre-trained encoder from {path} (new: {', '.join(sorted({k.split('.')[0] for k in missing}))})")


def _classification_run(cfg: DictConfig, kind: str) -> dict:
    device, rank, world_size = setup_run(cfg)
    tr, d, m = cfg.train, cfg.data, cfg.model
    train_folder, val_folder = labeled_folders(cfg)
    dataset = _train_dataset(cfg, train_folder, linprobe=kind == "linprobe")
    num_classes = len(dataset.classes)
    videos_per_batch = tr.batch_size // d.repeated_aug  # repeated augmentation: each video gives repeated_aug clips
    loader, sampler = make_loader(dataset, MaskCollator(None, (1, 1), 0.5), videos_per_batch, d.num_workers,
                                  cfg.seed, device, train=True, rank=rank, world_size=world_size)  # fmt: skip
    spe = steps_per_epoch(len(dataset), train_folder, videos_per_batch, tr.accum_steps, world_size,
                          "videos" if is_video(cfg) else "images")  # fmt: skip
    total_steps = tr.epochs * spe
    total_batch = tr.batch_size * tr.accum_steps * world_size
    cfg.train.lr = scaled_lr(tr.lr, tr.blr, total_batch)

    torch.manual_seed(cfg.seed)
    if is_video(cfg):
        args = video_model_args(cfg, pretrain=False)
    else:
        args = encoder_model_args(d.image_size, m.patch_size, m.embed_dim, m.depth, m.num_heads)
        if kind == "finetune":
            args["global_pool"] = "avg"  # average of the patch tokens, then fc_norm (the MaskFeat/MAE recipe)
        else:
            args.update(global_pool="avg", fc_norm=False)  # keep the pre-trained final norm, then average
    meta = {"architecture": m.name, "model_args": {**args, "num_classes": num_classes},
            "pretrained_cfg": ckpt_io.make_pretrained_cfg(cfg, num_classes, dataset.classes)}  # fmt: skip
    model = build_classifier(meta, kind, drop_path=m.drop_path if kind == "finetune" else 0.0)
    if m.grad_checkpointing and kind == "finetune":
        model.set_grad_checkpointing(True)
    head = [layer for layer in model.head.modules() if isinstance(layer, nn.Linear)][-1]  # the classifier layer
    trunc_normal_(head.weight, std=m.head_init_std)
    nn.init.zeros_(head.bias)
    if m.checkpoint:
        load_pretrained(model, m.checkpoint, m.allow_pickle)
    else:
        log.warning(f"model.checkpoint not set: {kind} starts from random weights (the from-scratch baseline)")
    if kind == "linprobe":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("head.")
    model.to(device)
    sharded = shard_model(model, device, world_size, tr.strategy, amp_dtype(tr.amp, device))

    if kind == "linprobe":
        optimizer = build_optimizer(model.head, cfg.train.lr, tr.weight_decay, tuple(tr.betas), opt=tr.optimizer)
    else:
        optimizer = build_optimizer(model, cfg.train.lr, tr.weight_decay, tuple(tr.betas), layer_decay=tr.layer_decay,
                                    opt=tr.optimizer)  # fmt: skip
    scheduler = build_scheduler(optimizer, total_steps, round(tr.warmup_epochs * spe), tr.min_lr, tr.warmup_lr)
    torch.manual_seed(cfg.seed + rank)

    mixup = None
    if kind == "finetune" and (tr.mixup > 0 or tr.cutmix > 0):
        mixup = Mixup(mixup_alpha=tr.mixup, cutmix_alpha=tr.cutmix, label_smoothing=tr.label_smoothing,
                      num_classes=num_classes)  # fmt: skip
    criterion = SoftTargetCrossEntropy() if mixup else nn.CrossEntropyLoss(label_smoothing=tr.label_smoothing)

    def loss_fn(net: nn.Module, batch: dict) -> torch.Tensor:
        x, y = batch["images"], batch["labels"]
        if mixup is not None:
            if len(x) % 2:  # Mixup pairs samples: drop one when an unreadable file left an odd batch
                x, y = x[:-1], y[:-1]
            shape = x.shape
            x, y = mixup(x.flatten(1, -3), y)  # video (B, C, T, H, W): mix / cut the same box in every frame
            x = x.view(shape)
        return criterion(net(x), y)

    video = is_video(cfg)
    val_loader = _val_loader(cfg, val_folder, dataset.classes, device, d.image_size, video) if val_folder else None
    if val_loader is None:
        log.warning("data.val_path not set: no evaluation during training")
    dtype = amp_dtype(tr.amp, device)
    out = cfg.output_dir

    def finish(state: dict) -> None:
        if kind == "finetune":  # image: a plain timm classifier, loads with timm.create_model(**model_args)
            ckpt_io.write_encoder(out, state, **meta)
        # only what this run wrote: no checkpoint-best.pt without data.val_path
        names = [n for n in ("config.yaml", "metrics.jsonl", ckpt_io.LAST, "checkpoint-best.pt")
                 if os.path.isfile(os.path.join(out, n))]  # fmt: skip
        if kind == "finetune":
            names.append("encoder.safetensors + encoder.json (with its head" + ("" if video else ", timm") + ")")
        log.info(f"done. Outputs in {out}: {', '.join(names)}")

    job = Job(
        model=model, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler, loader=loader, sampler=sampler,
        steps_per_epoch=spe, total_steps=total_steps,
        extra={"encoder": meta, "encoder_prefix": "", "classifier": kind, "classes": list(dataset.classes)},
        evaluate=(lambda: evaluate(model, val_loader, device, dtype)) if val_loader is not None else None,
        finish=finish, train_model=wrap_for_training(model, device, world_size, tr.compile, sharded), sharded=sharded,
    )  # fmt: skip
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary = (
        f"{kind} {m.name} ({count_str(n_train)} trainable params, {num_classes} classes) on {len(dataset)} "
        f"{'videos' if video else 'images'} "
        f"from {train_folder}; {world_size} process(es) on {device}, batch {total_batch}, lr {cfg.train.lr:.3g}"
    )
    return fit(cfg, job, device, summary)


def run_finetune(cfg: DictConfig) -> dict:
    return _classification_run(cfg, "finetune")


def run_linprobe(cfg: DictConfig) -> dict:
    return _classification_run(cfg, "linprobe")


def run_evaluate(cfg: DictConfig) -> dict:
    """Top-1 / top-5 of ``model.checkpoint`` (a finetune or linprobe checkpoint, or a finetuned
    encoder.safetensors with its head) on ``data.val_path``; appended to ``output_dir/metrics.jsonl``."""
    device, _, _ = setup_run(cfg)
    path = cfg.model.checkpoint
    classes: list[str] = []
    if path.endswith(".safetensors"):
        state, meta = ckpt_io.read_encoder(path, cfg.model.allow_pickle)
        kind = "finetune"
    else:
        ckpt = ckpt_io.load_checkpoint(path, cfg.model.allow_pickle)
        kind, meta, state = ckpt.get("classifier"), ckpt.get("encoder"), ckpt.get("model")
        classes = list(ckpt.get("classes", []))
        if kind not in ("finetune", "linprobe"):
            raise ConfigError(f"{path} is not a finetune or linprobe checkpoint: it has no classifier")
    if meta is None or "num_classes" not in meta["model_args"]:
        raise ConfigError(f"{path} has no classifier head (num_classes in encoder.json): evaluate a finetuned model")
    model = build_classifier(meta, kind)
    model.load_state_dict(state, strict=True)
    model.to(device)
    size = meta["model_args"]["img_size"]
    video = meta["architecture"] in VIDEO_ARCHITECTURES
    loader = _val_loader(cfg, cfg.data.val_path, classes, device, size[0] if isinstance(size, list) else size, video)
    num_classes = meta["model_args"]["num_classes"]
    if len(loader.dataset.classes) != num_classes:
        raise ConfigError(
            f"data.val_path has {len(loader.dataset.classes)} classes but the model predicts {num_classes}"
        )
    metrics = evaluate(model, loader, device, amp_dtype(cfg.train.amp, device))
    out = evaluation_folder(cfg.output_dir)
    cfg.output_dir = out
    os.makedirs(out, exist_ok=True)
    ckpt_io.atomic_write(os.path.join(out, "config.yaml"), lambda f: f.write(to_yaml(cfg).encode()))
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": 0, "epoch": 0, "checkpoint": path, **metrics}) + "\n")
    log.info(f"{path} on {cfg.data.val_path}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
    log.info(f"written to {out}: config.yaml, metrics.jsonl")
    return metrics


RUN_RECORD = ("config.yaml", "metrics.jsonl", ckpt_io.LAST)


def evaluation_folder(output_dir: str) -> str:
    """Where an evaluation writes its record: ``output_dir`` when it holds no run's record yet, else the first
    free ``output_dir/eval-N`` (so an evaluation never rewrites the record of the run it evaluates, nor of an
    earlier evaluation)."""

    def holds_record(folder: str) -> bool:
        return any(os.path.exists(os.path.join(folder, name)) for name in RUN_RECORD)

    if not holds_record(output_dir):
        return output_dir
    n = 1
    while holds_record(os.path.join(output_dir, f"eval-{n}")):
        n += 1
    out = os.path.join(output_dir, f"eval-{n}")
    log.info(f"{output_dir} holds another run's record: this evaluation goes to {out}")
    return out
