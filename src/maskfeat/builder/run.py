"""The kind of run a config describes (images or video) and the settings the run resolves for itself."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from omegaconf import DictConfig

from maskfeat.data import IMAGENET_MEAN, IMAGENET_STD
from maskfeat.data.ssv2 import is_ssv2_list
from maskfeat.data.video_transforms import KINETICS_MEAN, KINETICS_STD
from maskfeat.models.names import IMAGE_ARCHITECTURES, is_video_architecture
from maskfeat.optim import scaled_lr

log = logging.getLogger("maskfeat")

SAMPLE_IMAGE_SIZE = 160  # side of the embedded sample images (crops of scikit-image's bundled photos)
CLASSIFIERS = ("finetune", "linprobe")


def is_video(cfg: DictConfig | dict) -> bool:
    """Whether the run's ``model.name`` is a video encoder (everything else follows from it)."""
    return is_video_architecture(cfg["model"]["name"])


class SampleKind(NamedTuple):
    """How a run names what it trains on, for its messages."""

    noun: str  # the data set's items: images | videos
    unit: str  # one training sample, for the console's rate: img | clips
    timm: bool  # the encoder is a timm model (its weights load into plain timm)


def sample_kind(cfg: DictConfig) -> SampleKind:
    return SampleKind("videos", "clips", False) if is_video(cfg) else SampleKind("images", "img", True)


# --- the run's settings ------------------------------------------------------------------------------------------


def resolve(cfg: DictConfig, world_size: int, samples_per_step: int, folder: str) -> int:
    """Fill in what the config leaves to the run, before ``config.yaml`` records it: ``world_size``, the peak
    learning rate (``train.lr``, from ``train.blr`` scaled by the total batch when null) and ``data.hflip`` (null:
    0.5, or 0 for a Something-Something v2 list in ``folder``, the training data). ``samples_per_step`` is what one
    process feeds the model per optimizer step. Returns the total batch."""
    total_batch = samples_per_step * world_size
    cfg.world_size = world_size
    cfg.train.lr = scaled_lr(cfg.train.lr, cfg.train.blr, total_batch)
    cfg.data.hflip = hflip(cfg, folder)
    return total_batch


def hflip(cfg: DictConfig, folder: str) -> float:
    """``data.hflip``, or when null 0.5, and 0 for a Something-Something v2 list (its classes say left or right)."""
    if cfg.data.hflip is not None:
        return float(cfg.data.hflip)
    return 0.0 if is_ssv2_list(folder) else 0.5


def make_pretrained_cfg(config: Any, num_classes: int = 0, label_names: list[str] | None = None) -> dict[str, Any]:
    """How the encoder was trained to be used, in timm's ``pretrained_cfg`` keys, from a run's config (a
    ``DictConfig`` or the plain dict a checkpoint saves; older checkpoints' keys are read too).

    Images: ``input_size`` ``[3, H, W]``, ImageNet ``mean``/``std`` (every image transform normalises with
    them), ``interpolation`` bicubic and ``crop_pct`` = ``data.crop_pct`` (evaluation resizes the short side to
    ``H / crop_pct``, then crops the centre), so that ``timm.data.resolve_data_config({}, model=model)`` of a
    model built with ``timm.create_model(..., pretrained_cfg_overlay=pretrained_cfg)`` gives maskfeat's own
    evaluation transform. Video encoders (not timm models) have the Kinetics ``mean``/``std`` of SlowFast (0.45,
    0.225: clips are normalised so) and add ``num_frames`` and ``frame_stride`` (clips of
    ``num_frames`` frames, every ``frame_stride``-th); their frames are resized bilinearly, short side to ``H``,
    and centre-cropped, hence ``crop_pct`` 1. ``num_classes`` (0: no classifier) and, for a classifier,
    ``label_names`` (its class folder names, in output order) describe the head.
    """
    from maskfeat.config import upgrade_saved_config

    config = upgrade_saved_config(config)
    data = config["data"]
    size = int(data["image_size"])
    cfg: dict[str, Any] = {"input_size": [3, size, size]}
    if is_video(config):
        video = config["video"]
        cfg.update(mean=list(KINETICS_MEAN), std=list(KINETICS_STD), interpolation="bilinear", crop_pct=1.0,
                   num_frames=int(video["num_frames"]), frame_stride=int(video["frame_stride"]))  # fmt: skip
    else:
        cfg.update(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), interpolation="bicubic",
                   crop_pct=float(data["crop_pct"]))  # fmt: skip
    cfg["num_classes"] = int(num_classes)
    if label_names:
        cfg["label_names"] = [str(n) for n in label_names]
    return cfg


def complete_encoder_meta(ckpt: dict[str, Any]) -> dict:
    """A checkpoint's ``encoder`` entry, completed as runs write it today for checkpoints of older versions:
    ``pretrained_cfg`` from the run's saved config, and image ViT pre-training encoders pooled as maskfeat
    probes them (``global_pool="avg"`` over the final-norm patch tokens, ``fc_norm=False``: same weights)."""
    meta = dict(ckpt["encoder"])
    args = dict(meta.get("model_args", {}))
    config = ckpt.get("config")
    if "pretrained_cfg" not in meta and isinstance(config, dict):
        try:
            meta["pretrained_cfg"] = make_pretrained_cfg(config, args.get("num_classes", 0), ckpt.get("classes"))
        except (KeyError, TypeError, ValueError):  # a config without these keys: leave timm's defaults
            pass
    if meta.get("architecture") in IMAGE_ARCHITECTURES and "global_pool" not in args and "num_classes" not in args:
        meta["model_args"] = {**args, "global_pool": "avg", "fc_norm": False}
    return meta
