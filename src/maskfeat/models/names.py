"""The encoder names maskfeat knows, their patch geometry and the settings each takes: the registry's torch-free
half (:mod:`maskfeat.models.registry` builds the encoders).

The model modules build from these tables (``models/vit.py``, ``models/video_vit.py``); ``maskfeat.config``
checks ``model.name`` and the settings that depend on it here, without importing torch or timm.
"""

from __future__ import annotations

from typing import Any

from maskfeat.errors import ConfigError

__all__ = [
    "IMAGE_ARCHITECTURES",
    "VIDEO_ARCHITECTURES",
    "VIDEO_PATCH_SIZE",
    "all_architectures",
    "check_model_settings",
    "encoder_patch_size",
    "is_video_architecture",
]

# The image ViTs (timm names, timm conventions) -> each architecture's own patch side, pixels.
IMAGE_ARCHITECTURES: dict[str, int] = {
    "vit_tiny_patch16_224": 16,
    "vit_small_patch16_224": 16,
    "vit_base_patch16_224": 16,
    "vit_large_patch16_224": 16,
    "vit_huge_patch14_224": 14,
}

# Every video encoder by name -> its family ("vit" -> models.video_vit.VideoViT, "mvit" -> models.mvit.MViTEncoder).
VIDEO_ARCHITECTURES: dict[str, str] = {
    **dict.fromkeys(("vit_s", "vit_b", "vit_l"), "vit"),
    **dict.fromkeys(("mvit_v2_s", "mvit_v2_b", "mvit_v2_l"), "mvit"),  # the official MaskFeat layout
    "mvit_v2_s_tv": "mvit",  # torchvision's supervised mvit_v2_s layout (its weights load)
}

VIDEO_PATCH_SIZE = 16  # the video encoders' spatial patch side, pixels (2x16x16 tubelets; video ViT: model.patch_size)


def all_architectures() -> list[str]:
    """Every ``model.name`` maskfeat can build: the image ViTs, then the video encoders."""
    return [*IMAGE_ARCHITECTURES, *VIDEO_ARCHITECTURES]


def is_video_architecture(name: str) -> bool:
    return name in VIDEO_ARCHITECTURES


def encoder_patch_size(name: str, patch_size: int | None = None) -> int:
    """The patch side, pixels, that an image model of ``name`` will have, given an optional override."""
    return int(patch_size) if patch_size else IMAGE_ARCHITECTURES[name]


# --- the settings each architecture takes (checked when the config is loaded, before torch is imported) ---------

IMAGE_MASKS = ("block", "random")
VIDEO_MASKS = ("cube", "tube", "frame", "random")


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def check_model_settings(cfg: Any, command: str) -> None:
    """Check the settings that depend on ``model.name``: the clip of a video model, the masks and mask unit of
    its kind, the patch and HOG-cell sizes. Each failure is one :class:`ConfigError` line naming the key."""
    m = cfg.model
    names = all_architectures()
    _require(m.name in names, f"model.name '{m.name}' is not a known architecture; choose one of {', '.join(names)}")
    video = is_video_architecture(m.name)
    _require(video or command != "detect", f"detect needs a video encoder (model.name: one of "
             f"{', '.join(VIDEO_ARCHITECTURES)}), got '{m.name}'")  # fmt: skip
    if video:
        _check_video(cfg)
    v = cfg.video
    _require(v.repeated_aug >= 1, f"video.repeated_aug must be >= 1, got {v.repeated_aug}")
    _require(video or v.repeated_aug == 1, "video.repeated_aug applies to video models; use 1 for images")
    _require(
        cfg.train.batch_size % v.repeated_aug == 0,
        f"train.batch_size={cfg.train.batch_size} must be a multiple of video.repeated_aug={v.repeated_aug} "
        "(clips per video)",
    )
    _check_masks(cfg.mask, video)
    patch = (m.patch_size or VIDEO_PATCH_SIZE) if video else encoder_patch_size(m.name, m.patch_size)
    _require(patch > 0, f"model.patch_size must be positive, got {patch}")
    size = cfg.data.image_size
    _require(size % patch == 0, f"data.image_size={size} is not divisible by the patch size {patch} (model.patch_size)")
    if cfg.target.name == "hog" and command in ("pretrain", "visualize"):  # only where the target is predicted
        _check_hog(cfg.target, patch, size)


def _check_video(cfg: Any) -> None:
    v, m = cfg.video, cfg.model
    _require(v.num_frames > 0 and v.num_frames % 2 == 0, f"video.num_frames must be even, got {v.num_frames}")
    _require(v.frame_stride > 0, f"video.frame_stride must be positive, got {v.frame_stride}")
    _require(len(v.short_side) == 2 and 0 < v.short_side[0] <= v.short_side[1],
             f"video.short_side must be [lo, hi] with 0 < lo <= hi, got {list(v.short_side)}")  # fmt: skip
    _require(v.num_clips > 0 and v.num_crops in (1, 3), "video.num_clips must be >= 1 and video.num_crops 1 or 3")
    _require(
        v.sampling == "stride" or v.num_clips == 1, "video.sampling=segments takes the whole video: video.num_clips=1"
    )
    frame = cfg.target.frame_index
    _require(0 <= frame < 2, f"target.frame_index must be 0 or 1 (2-frame patches), got {frame}")
    if VIDEO_ARCHITECTURES[m.name] == "mvit":
        _require(m.patch_size is None, "model.patch_size does not apply to MViT (its patch embedding is fixed)")
        size = cfg.data.image_size
        _require(m.depth is None, "model.depth does not apply to MViT (its stage depths are fixed by size)")
        _require(size % 32 == 0, f"data.image_size must be a multiple of 32 for MViT, got {size}")


def _check_masks(mask: Any, video: bool) -> None:
    masks = VIDEO_MASKS if video else IMAGE_MASKS
    _require(mask.type == "auto" or mask.type in masks,
             f"mask.type must be auto or one of {', '.join(masks)} for {'video' if video else 'image'} models, "
             f"got '{mask.type}'")  # fmt: skip
    if mask.unit is not None:
        dims = 3 if video else 2
        _require(len(mask.unit) == dims and all(u > 0 for u in mask.unit),
                 f"mask.unit must have {dims} positive factors, got {list(mask.unit)}")  # fmt: skip


def _check_hog(target: Any, patch: int, image_size: int) -> None:
    _require(target.cell_size > 0 and target.nbins > 0, "target.cell_size and target.nbins must be positive")
    cell = target.cell_size
    _require(patch % cell == 0, f"patch size {patch} is not divisible by the HOG cell size target.cell_size={cell}")
    window = target.gaussian_window
    if window:
        _require(image_size % window == 0,
                 f"data.image_size={image_size} is not divisible by target.gaussian_window={window}")  # fmt: skip


def hub_task(name: str, num_classes: int) -> tuple[str, bool]:
    """The Hugging Face pipeline tag of the encoder ``name`` (with ``num_classes`` outputs, 0 = features) and
    whether timm builds it only once maskfeat's registry is imported (the video encoders are not timm's own)."""
    video = is_video_architecture(name)
    if video:
        return "video-classification", True
    return ("image-classification" if num_classes else "image-feature-extraction"), False
