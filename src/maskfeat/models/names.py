"""The encoder names maskfeat knows, with their patch geometry: plain data, no torch (the config checks them).

The model modules build from these tables (``models/vit.py``, ``models/video_vit.py``); ``maskfeat.config``
validates ``model.name`` against them without importing torch or timm.
"""

from __future__ import annotations

__all__ = [
    "IMAGE_ARCHITECTURES",
    "VIDEO_ARCHITECTURES",
    "VIDEO_PATCH_SIZE",
    "all_architectures",
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

VIDEO_PATCH_SIZE = 16  # the video encoders' spatial patch side, pixels (2x16x16 tubelets)


def all_architectures() -> list[str]:
    """Every ``model.name`` maskfeat can build: the image ViTs, then the video encoders."""
    return [*IMAGE_ARCHITECTURES, *VIDEO_ARCHITECTURES]


def is_video_architecture(name: str) -> bool:
    return name in VIDEO_ARCHITECTURES


def encoder_patch_size(name: str, patch_size: int | None = None) -> int:
    """The patch side, pixels, that an image model of ``name`` will have, given an optional override."""
    return int(patch_size) if patch_size else IMAGE_ARCHITECTURES[name]
