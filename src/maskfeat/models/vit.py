"""Image encoders: timm's VisionTransformer with the encoder interface (:class:`MaskableViT`), built by timm name.

An image is a clip of one frame: the patch and output grids are ``(1, H/p, W/p)``. The subclass adds no parameter
and renames none, so an exported image encoder loads into plain ``timm.create_model(name, **model_args)`` strictly.
The image names are timm's own (not registered again); the video encoders register theirs
(``models/video_vit.py``, ``models/mvit.py``).
"""

from __future__ import annotations

import torch
from timm.models import build_model_with_cfg, checkpoint_seq
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from maskfeat.models.layers import apply_token_mask

# The ViT sizes we build, with each architecture's own patch size: the torch-free table in models/names.py.
from maskfeat.models.names import IMAGE_ARCHITECTURES as ARCHITECTURES
from maskfeat.models.names import encoder_patch_size  # noqa: F401  (re-exported)

__all__ = [
    "ARCHITECTURES",
    "VIT_SIZES",
    "MaskableViT",
    "create_image_encoder",
    "encoder_model_args",
    "known_architectures",
]

# Width, depth and heads of each architecture, as timm's entrypoints of the same names define them (a test holds
# every parameter shape against timm's own model).
VIT_SIZES: dict[str, dict[str, int]] = {
    "vit_tiny_patch16_224": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small_patch16_224": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base_patch16_224": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_large_patch16_224": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "vit_huge_patch14_224": {"embed_dim": 1280, "depth": 32, "num_heads": 16},
}


class MaskableViT(VisionTransformer):
    """timm's :class:`VisionTransformer` with the encoder interface: ``patch_grid``, ``output_grid``,
    ``clip_size`` and ``forward_features(x, mask, mask_token)``; same modules, same ``state_dict``.

    ``forward_features`` returns what timm's does, every token after the final norm, prefix tokens first:
    (B, num_prefix_tokens + N, D). Without a mask it *is* timm's.
    """

    @property
    def patch_grid(self) -> tuple[int, int, int]:
        """The patch-embedding grid (1, H/p, W/p) of the image size the model was built for."""
        return (1, *self.patch_embed.grid_size)

    @property
    def output_grid(self) -> tuple[int, int, int]:
        """The grid of the output tokens: the patch grid (a ViT does not pool)."""
        return self.patch_grid

    @property
    def clip_size(self) -> tuple[int, int, int]:
        """The input (T, H, W) the model was built for: one frame of ``img_size``."""
        return (1, *self.patch_embed.img_size)

    def forward_features(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        """Encodes images (B, C, H, W); ``mask`` (bool (B, 1, h, w), (B, h, w) or (B, N), True = masked) puts
        ``mask_token`` in place of the masked patch embeddings before the position embeddings.

        Returns:
            (B, num_prefix_tokens + N, D), final-norm tokens. ``kwargs`` (timm's ``attn_mask``, ``is_causal``) go
            to timm's own forward, which runs when there is no mask.
        """
        if mask is None:
            return super().forward_features(x, **kwargs)
        x = apply_token_mask(self.patch_embed(x), mask, mask_token)  # (B, N, D)
        x = self.norm_pre(self.patch_drop(self._add_position(x)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def _add_position(self, x: torch.Tensor) -> torch.Tensor:
        """Position embeddings added, prefix tokens prepended: (B, N, D) -> (B, prefix + N, D).

        The one private timm call (``VisionTransformer._pos_embed``, no public equivalent); the masked path is held
        against timm's own ``forward_features`` by tests/test_model.py, which fails if timm changes it.
        """
        return self._pos_embed(x)


def known_architectures() -> list[str]:
    return list(ARCHITECTURES)


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


def create_image_encoder(name: str, model_args: dict, num_classes: int = 0, drop_path: float = 0.0) -> MaskableViT:
    """The timm ViT ``name`` as a :class:`MaskableViT`, built the way ``timm.create_model(name, **model_args)``
    builds its VisionTransformer (same arguments, same initialisation, same ``pretrained_cfg``), never downloading.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown image architecture '{name}'; choose one of {', '.join(ARCHITECTURES)}")
    kwargs = {"patch_size": ARCHITECTURES[name], **VIT_SIZES[name], **model_args}
    return build_model_with_cfg(
        MaskableViT,
        name,
        pretrained=False,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        num_classes=num_classes,
        drop_path_rate=drop_path,
        **{k: v for k, v in kwargs.items() if v is not None},
    )
