"""mmpretrain's MaskFeat ViT (``MaskFeatViT`` backbone + ``LinearNeck``): placeholder, filled in below."""

from __future__ import annotations

from typing import Any

from maskfeat.convert.common import Converted, fail

__all__ = ["convert_mmpretrain", "is_mmpretrain"]


def is_mmpretrain(obj: Any) -> bool:
    return False


def convert_mmpretrain(obj: Any, src: str) -> Converted:
    fail(src, "mmpretrain checkpoints are not supported yet")
