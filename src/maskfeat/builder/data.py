"""Data from a config: the folders a run reads, the data sets with their transforms, the mask and label collates,
the evaluation loader."""

from __future__ import annotations

import logging
from functools import partial

import torch
from omegaconf import DictConfig
from timm.data import create_transform
from torch import nn

from maskfeat.data import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, eval_transform, pretrain_transform
from maskfeat.data.collate import MaskCollator
from maskfeat.data.loader import make_loader
from maskfeat.data.sample import sample_image_folder, sample_labeled_folder, sample_video_folder
from maskfeat.data.sampler import label_subset
from maskfeat.data.video import VideoDataset
from maskfeat.data.video_transforms import VideoTrainTransform
from maskfeat.errors import ConfigError
from maskfeat.models.names import is_video_architecture

from .run import SAMPLE_IMAGE_SIZE, hflip, is_video

log = logging.getLogger("maskfeat")


# --- masks -------------------------------------------------------------------------------------------------------


def token_grid(cfg: DictConfig, model: nn.Module) -> tuple[int, ...]:
    """The grid the masks are drawn on: the model's output grid, (T/2, H/16, W/16) for video, (h, w) for images."""
    grid = tuple(model.output_grid)
    return grid if is_video(cfg) else grid[1:]


def mask_type(cfg: DictConfig) -> str:
    """``mask.type``, with auto resolved: block masks for images, cube masks for video (as the paper)."""
    return cfg.mask.type if cfg.mask.type != "auto" else ("cube" if is_video(cfg) else "block")


def mask_collate(cfg: DictConfig, grid: tuple[int, ...]) -> MaskCollator:
    """The collate function drawing ``mask.type`` masks on ``grid``, on units of ``mask.unit`` cells (auto: the
    official 2-frame x 32x32-pixel unit for video, single tokens for images)."""
    unit = tuple(cfg.mask.unit) if cfg.mask.unit is not None else ((1, 2, 2) if is_video(cfg) else (1, 1))
    if any(g % u for g, u in zip(grid, unit)):
        unit = (1,) * len(grid)  # a grid too small for the unit: mask single tokens
    return MaskCollator(mask_type(cfg), grid, cfg.mask.ratio, unit=unit)


def label_collate() -> MaskCollator:
    """The collate function of classification batches (no masks)."""
    return MaskCollator(None, (1, 1), 0.5)


# --- data --------------------------------------------------------------------------------------------------------


def data_folder(cfg: DictConfig) -> str:
    """``data.path``, or the embedded sample images (or clips, for a video model) when it is null."""
    if cfg.data.path:
        return cfg.data.path
    if is_video(cfg):
        path = sample_video_folder(split="train")
        log.info(f"data.path not set: using the embedded sample clips (photos under camera motion) in {path}")
        return path
    path = sample_image_folder(num_images=cfg.data.sample_images, size=SAMPLE_IMAGE_SIZE, seed=0)
    log.info(f"data.path not set: using {cfg.data.sample_images} embedded sample images in {path}")
    return path


def labeled_folders(cfg: DictConfig, need_train: bool = True) -> tuple[str | None, str | None]:
    """(train, val) folders: ``data.path`` / ``data.val_path``, or the embedded labeled sample images (crops of
    scikit-image's photos, one class per photo) or clips when both are null."""
    if cfg.data.path is None and cfg.data.val_path is None:
        make = sample_video_folder if is_video(cfg) else partial(sample_labeled_folder, size=SAMPLE_IMAGE_SIZE)
        train = make(split="train") if need_train else None
        val = make(split="val")
        log.info(f"data.path and data.val_path not set: using the embedded labeled samples ({val})")
        return train, val
    if need_train and cfg.data.path is None:
        raise ConfigError("data.path=... is needed: a folder of class sub-folders to train on")
    return cfg.data.path, cfg.data.val_path


def _video_dataset(cfg: DictConfig, folder: str, **kwargs) -> VideoDataset:
    v = cfg.video
    return VideoDataset(folder, num_frames=v.num_frames, stride=v.frame_stride, backend=v.backend,
                        sampling=v.sampling, **kwargs)  # fmt: skip


def _video_train_transform(cfg: DictConfig, augment: bool, folder: str) -> VideoTrainTransform:
    d = cfg.data
    return VideoTrainTransform(crop_size=d.image_size, short_side=tuple(cfg.video.short_side),
                               scale=tuple(d.crop_scale), hflip=hflip(cfg, folder),
                               auto_augment=d.auto_augment if augment else None,
                               reprob=d.reprob if augment else 0.0)  # fmt: skip


def pretrain_dataset(cfg: DictConfig, folder: str) -> ImageDataset | VideoDataset:
    """Random resized crops and flips (video: with a jittered short side), no other augmentation."""
    d = cfg.data
    if is_video(cfg):
        return _video_dataset(cfg, folder, transform=_video_train_transform(cfg, False, folder))
    return ImageDataset(folder, pretrain_transform(d.image_size, scale=tuple(d.crop_scale), hflip=hflip(cfg, folder)))


def _image_train_transform(cfg: DictConfig, augment: bool, folder: str):
    d = cfg.data
    return create_transform(d.image_size, is_training=True, scale=tuple(d.crop_scale), hflip=hflip(cfg, folder),
                            color_jitter=0.4 if augment else None, auto_augment=d.auto_augment if augment else None,
                            interpolation="bicubic", re_prob=d.reprob if augment else 0.0, re_mode="pixel",
                            mean=IMAGENET_MEAN, std=IMAGENET_STD)  # fmt: skip


def train_dataset(cfg: DictConfig, folder: str, kind: str) -> ImageDataset | VideoDataset:
    """The labeled training set of a finetune (augmented: RandAugment, random erasing, ...) or linprobe (crops and
    flips only) run; ``data.label_fraction`` < 1 keeps a class-balanced subset."""
    augment = kind == "finetune"
    if is_video(cfg):
        transform = _video_train_transform(cfg, augment, folder)
        make = partial(_video_dataset, cfg, repeats=cfg.video.repeated_aug)
    else:
        transform, make = _image_train_transform(cfg, augment, folder), ImageDataset
    full = make(folder, transform=transform)
    if not full.classes:
        raise ConfigError(f"data.path={folder} has no class sub-folders: classification needs labeled data")
    fraction = cfg.data.label_fraction
    if fraction >= 1:
        return full
    keep = label_subset(full.labels, fraction, cfg.seed)
    subset = make(folder, transform=transform, files=[full.files[i] for i in keep],
                  labels=[full.labels[i] for i in keep], classes=full.classes)  # fmt: skip
    log.info(f"data.label_fraction={fraction}: training on {len(subset)} of {len(full)} labeled samples")
    return subset


def val_dataset(cfg: DictConfig, folder: str, image_size: int, video: bool) -> ImageDataset | VideoDataset:
    """Images: resize + centre crop. Video: ``video.num_clips`` x ``video.num_crops`` views per video."""
    if video:
        v = cfg.video
        return _video_dataset(cfg, folder, mode="eval", num_clips=v.num_clips, num_crops=v.num_crops,
                              crop_size=image_size)  # fmt: skip
    return ImageDataset(folder, eval_transform(image_size, crop_pct=cfg.data.crop_pct))


def val_loader(cfg: DictConfig, folder: str, classes: list[str], device: torch.device, image_size: int,
               architecture: str) -> torch.utils.data.DataLoader:  # fmt: skip
    """The evaluation loader over ``folder`` for an ``architecture`` classifier of input size ``image_size``; the
    folder's class sub-folders must be ``classes`` (when given)."""
    dataset = val_dataset(cfg, folder, image_size, is_video_architecture(architecture))
    if classes and dataset.classes != classes:
        raise ConfigError(
            f"data.val_path={folder} has classes {dataset.classes[:5]}... but training has {classes[:5]}...: "
            "they must be the same sub-folder names"
        )
    loader, _ = make_loader(dataset, label_collate(), cfg.train.batch_size, cfg.data.num_workers, cfg.seed,
                            device, train=False)  # fmt: skip
    return loader


def check_drawable(run_cfg: DictConfig, path: str) -> None:
    """``visualize`` draws image models: stop with one line for the checkpoint ``path`` of a video model."""
    if is_video(run_cfg):
        raise ConfigError(f"visualize draws image models; {path} is a video model ({run_cfg.model.name})")


def view_dataset(run_cfg: DictConfig, folder: str) -> ImageDataset:
    """The images ``visualize`` draws for a run of ``run_cfg``: resized and centre-cropped to its
    ``data.image_size``, nothing cut off."""
    return ImageDataset(folder, eval_transform(run_cfg.data.image_size, crop_pct=1.0))


def image_mask_type(cfg: DictConfig) -> str:
    """``mask.type`` for an image model (auto: block), whatever ``model.name`` says."""
    return cfg.mask.type if cfg.mask.type != "auto" else "block"
