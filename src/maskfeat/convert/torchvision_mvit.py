"""torchvision's MViTv2-S weights: placeholder, filled in below."""

from __future__ import annotations

from typing import Any

from maskfeat.convert.common import Converted, fail

__all__ = ["convert_torchvision_mvit", "is_torchvision_mvit"]


def is_torchvision_mvit(obj: Any) -> bool:
    return False


def convert_torchvision_mvit(obj: Any, src: str) -> Converted:
    fail(src, "torchvision MViT weights are not supported yet")
