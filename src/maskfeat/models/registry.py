"""Every encoder by name: one builder, :func:`create_encoder`, for the image ViTs, video ViTs and MViTv2s.

All of them have one interface: ``forward_features(x, mask=None, mask_token=None)`` (final-norm tokens, prefix
tokens first; ``mask`` on the ``patch_grid``, True = that patch embedding replaced by ``mask_token`` before the
position embeddings), ``patch_grid`` / ``output_grid`` / ``clip_size`` as (T, H, W) (an image is a one-frame
clip), ``embed_dim`` (patch-embedding width), ``num_features`` (output width), ``num_prefix_tokens`` and timm's
``no_weight_decay`` / ``group_matcher`` / ``set_grad_checkpointing``.

The names come from the torch-free tables of :mod:`maskfeat.models.names`. Image names are timm's own ViTs, built as
:class:`~maskfeat.models.vit.MaskableViT`; the video names are registered with timm's ``register_model`` by
``models/video_vit.py`` and ``models/mvit.py`` (importing this module imports both), so that
``timm.create_model("vit_b")`` or ``timm.create_model("mvit_v2_s")`` build them too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
from torch import nn

from maskfeat.models.mvit import MVIT_SIZES, mvit_args
from maskfeat.models.names import IMAGE_ARCHITECTURES, VIDEO_ARCHITECTURES, all_architectures
from maskfeat.models.video_vit import video_vit_args
from maskfeat.models.vit import create_image_encoder

__all__ = ["create_encoder", "video_encoder_args"]


def video_encoder_args(kind: str, img_size: int | Sequence[int] = 224, num_frames: int = 16, **kwargs: Any) -> dict:
    """The JSON-able architecture arguments that rebuild the video encoder ``kind`` (a VIDEO_ARCHITECTURES name).

    ``kwargs`` go to :func:`~maskfeat.models.video_vit.video_vit_args` (ViT: ``embed_dim``, ``depth``,
    ``num_heads``, ``tubelet``, ...) or :func:`~maskfeat.models.mvit.mvit_args` (MViT: ``pretrain``, ``depths``,
    ``embed_dim``, ``num_heads``, ...).
    """
    if kind not in VIDEO_ARCHITECTURES:
        raise ValueError(f"unknown video architecture '{kind}'; choose one of {', '.join(VIDEO_ARCHITECTURES)}")
    make_args = mvit_args if kind in MVIT_SIZES else video_vit_args
    return make_args(kind, img_size=img_size, num_frames=num_frames, **kwargs)


def create_encoder(name: str, model_args: dict[str, Any], num_classes: int = 0, drop_path: float = 0.0) -> nn.Module:
    """The encoder ``name`` rebuilt from ``model_args``, never loading weights.

    ``model_args`` are the JSON-able architecture arguments a checkpoint stores (images:
    :func:`~maskfeat.models.vit.encoder_model_args`; video: :func:`video_encoder_args`). ``num_classes`` (0 = no
    classifier) and ``drop_path`` are training settings, kept out of ``model_args`` so exported weights do not
    carry them; other settings (e.g. ``head_drop``) may ride in ``model_args``.
    """
    if name in IMAGE_ARCHITECTURES:
        return create_image_encoder(name, model_args, num_classes=num_classes, drop_path=drop_path)
    if name not in VIDEO_ARCHITECTURES:
        raise ValueError(f"unknown architecture '{name}'; choose one of {', '.join(all_architectures())}")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, drop_path_rate=drop_path, **model_args)
