"""Image encoders: timm's VisionTransformer, built by name with explicit size overrides.

The encoder is always a plain timm model, so its weights load straight into ``timm.create_model``.
"""

from __future__ import annotations

import timm
from timm.models.vision_transformer import VisionTransformer

# The ViT sizes we register, with each architecture's own patch size (timm names, timm conventions).
ARCHITECTURES: dict[str, int] = {
    "vit_tiny_patch16_224": 16,
    "vit_small_patch16_224": 16,
    "vit_base_patch16_224": 16,
    "vit_large_patch16_224": 16,
    "vit_huge_patch14_224": 14,
}


def known_architectures() -> list[str]:
    return list(ARCHITECTURES)


def encoder_patch_size(name: str, patch_size: int | None = None) -> int:
    """The patch size a model of ``name`` will have, given an optional override."""
    return int(patch_size) if patch_size else ARCHITECTURES[name]


def encoder_model_args(
    img_size: int,
    patch_size: int | None = None,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    **extra,
) -> dict:
    """The keyword arguments (timm's ``model_args``) that rebuild an encoder; None means the architecture's own."""
    args = dict(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads)
    args.update(extra)
    return {k: v for k, v in args.items() if v is not None}


def create_encoder(name: str, model_args: dict, num_classes: int = 0, drop_path: float = 0.0) -> VisionTransformer:
    """A timm ViT ``name`` built from ``model_args`` (see :func:`encoder_model_args`), never downloading weights.

    ``drop_path`` is a training setting, kept out of ``model_args`` so exported weights do not carry it.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{name}'; choose one of {', '.join(ARCHITECTURES)}")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, drop_path_rate=drop_path, **model_args)
    assert isinstance(model, VisionTransformer)
    return model
