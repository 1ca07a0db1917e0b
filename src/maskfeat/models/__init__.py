"""Encoders and the MaskFeat pre-training wrapper.

The names below load on first use, so that ``maskfeat.models.names`` (the architecture tables the config checks)
loads fast. The video encoders join timm's registry with ``import maskfeat`` (see :mod:`maskfeat`; the command line
skips it) or ``maskfeat.models.registry``; then ``timm.create_model("vit_b")`` / ``timm.create_model("mvit_v2_s")``
build them.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "MaskFeat": "maskfeat.models.maskfeat",
    "masked_mse": "maskfeat.models.maskfeat",
    "mean_target_mse": "maskfeat.models.maskfeat",
    "target_patch_size": "maskfeat.models.maskfeat",
    "ARCHITECTURES": "maskfeat.models.vit",
    "MaskableViT": "maskfeat.models.vit",
    "encoder_model_args": "maskfeat.models.vit",
    "encoder_patch_size": "maskfeat.models.vit",
    "create_encoder": "maskfeat.models.registry",
    "video_encoder_args": "maskfeat.models.registry",
    "load_model": "maskfeat.loading",  # builds through maskfeat.builder: imported on first use only
}

__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
