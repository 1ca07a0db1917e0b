"""The builder of action detection: the AVA-format folders of a run, their keyframe data sets, and the detector."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from omegaconf import DictConfig
from timm.layers import trunc_normal_
from torch import nn

from maskfeat.data.ava import AvaFolder
from maskfeat.data.ava_clips import AvaDataset, BoxClipTransform, collate_detections
from maskfeat.data.sample_ava import sample_ava_folders
from maskfeat.errors import ConfigError
from maskfeat.models.detector import ActionDetector
from maskfeat.models.registry import create_encoder

from .models import encoder_args, load_pretrained
from .run import hflip, make_pretrained_cfg

log = logging.getLogger("maskfeat")


def detection_folders(cfg: DictConfig) -> tuple[AvaFolder, AvaFolder]:
    """The (train, val) folders of ``data.path`` / ``data.val_path``, or with neither the generated sample set."""
    d = cfg.data
    if d.path is None and d.val_path is None:
        train, val = sample_ava_folders()
        log.info(f"data.path and data.val_path not set: using the generated AVA-format sample set ({train}, {val})")
        return AvaFolder(train, "train"), AvaFolder(val, "val")
    if d.path is None or d.val_path is None:
        raise ConfigError("detect needs data.path=... and data.val_path=... (AVA-format folders), or neither")
    return AvaFolder(d.path, "train"), AvaFolder(d.val_path, "val")


def ava_dataset(cfg: DictConfig, folder: AvaFolder, classes: list[int], train: bool,
                crop_size: int | None = None) -> AvaDataset:  # fmt: skip
    """The keyframes of ``folder``: annotated boxes (``train``) or detected ones scoring ``detect.score_threshold``
    or more, with the clip transform of the config (``crop_size``: default ``data.image_size``)."""
    v, det = cfg.video, cfg.detect
    transform = BoxClipTransform(crop_size or cfg.data.image_size, train, short_side=tuple(v.short_side),
                                 hflip=hflip(cfg, folder.root), box_jitter=det.box_jitter,
                                 view="center" if train else str(det.eval_view))  # fmt: skip
    frames = folder.keyframes(predicted=not train, score_threshold=det.score_threshold)
    if not frames:
        raise ConfigError(f"{folder.root}: no {'annotated' if train else 'detected'} boxes to "
                          f"{'train' if train else 'evaluate'} on")  # fmt: skip
    return AvaDataset(frames, folder.videos, classes, v.num_frames, v.frame_stride, transform, v.backend,
                      det.frame_rate, det.frames_start)  # fmt: skip


def eval_collate(model: ActionDetector) -> Callable:
    """The evaluation batches of ``model``: clips padded to the batch's largest, rounded up to the encoder's stride
    (the full view's frames differ in shape)."""
    return functools.partial(collate_detections, size_divisibility=max(model.strides[1:]))


def build_detector(meta: dict, num_classes: int, roi_size: int = 7, dropout: float = 0.0,
                   drop_path: float = 0.0) -> ActionDetector:  # fmt: skip
    """A detector from an encoder entry ``{"architecture", "model_args"}`` and a box head of ``num_classes``."""
    encoder = create_encoder(meta["architecture"], meta["model_args"], num_classes=0, drop_path=drop_path)
    return ActionDetector(encoder, num_classes, roi_size=roi_size, dropout=dropout)


def new_detector(cfg: DictConfig, classes: list[int], names: list[str]) -> tuple[ActionDetector, dict]:
    """The detector a detect run trains: the encoder of ``model.name`` (weights of ``model.checkpoint`` when set),
    a small-initialised box head with one output per action id of ``classes``. Returns it and its encoder entry."""
    m, det = cfg.model, cfg.detect
    meta = {"architecture": m.name, "model_args": encoder_args(cfg, "detect"),
            "pretrained_cfg": make_pretrained_cfg(cfg, len(classes), names)}  # fmt: skip
    model = build_detector(meta, len(classes), det.roi_size, det.dropout, m.drop_path)
    if m.checkpoint:
        load_pretrained(model.encoder, m.checkpoint, m.allow_pickle)
    else:
        log.warning("model.checkpoint not set: detect starts from random weights (the from-scratch baseline)")
    trunc_normal_(model.head.weight, std=m.head_init_std)
    nn.init.zeros_(model.head.bias)
    if m.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model, {**meta, "action_ids": list(classes)}
