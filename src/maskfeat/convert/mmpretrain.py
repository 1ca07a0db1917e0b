"""mmpretrain's MaskFeat ViT: ``MaskFeat`` with a ``MaskFeatViT`` backbone (mmpretrain's ViT layout, a [MASK]
token), a ``LinearNeck`` predicting the HOG and a ``HOGGenerator`` target (mmpretrain's default: Gaussian window 16,
unlike SlowFast's none); or a fine-tuned mmpretrain ViT. The checkpoint is ``{"meta", "state_dict"}``.

Names: ``backbone.layers.i.{ln1, attn.qkv, attn.proj, ln2, ffn.layers.0.0, ffn.layers.1}`` are timm's
``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``; ``backbone.ln1`` the final norm,
``backbone.ln2`` the norm after average pooling (timm's ``fc_norm``); ``neck.fc`` MaskFeat's head.
"""

from __future__ import annotations

import math
from typing import Any

from maskfeat.convert.common import Converted, fail, rename
from maskfeat.convert.slowfast import HOG_TARGET
from maskfeat.models.names import IMAGE_ARCHITECTURES
from maskfeat.models.vit import VIT_SIZES, encoder_model_args

__all__ = ["convert_mmpretrain", "is_mmpretrain"]

_RULES = [
    (r"^backbone\.(cls_token|pos_embed)$", r"\1"),
    (r"^backbone\.patch_embed\.projection\.", "patch_embed.proj."),
    (r"^backbone\.layers\.(\d+)\.ln([12])\.", r"blocks.\1.norm\2."),
    (r"^backbone\.layers\.(\d+)\.attn\.(qkv|proj)\.", r"blocks.\1.attn.\2."),
    (r"^backbone\.layers\.(\d+)\.ffn\.layers\.0\.0\.", r"blocks.\1.mlp.fc1."),
    (r"^backbone\.layers\.(\d+)\.ffn\.layers\.1\.", r"blocks.\1.mlp.fc2."),
    (r"^backbone\.ln1\.", "norm."),
    (r"^backbone\.ln2\.", "fc_norm."),
    (r"^head\.(fc|layers\.head)\.", "head."),  # LinearClsHead / VisionTransformerClsHead
    (r"^(target_generator|data_preprocessor)\.", None),
]
_MASKFEAT = {"backbone.mask_token": "mask_token", "neck.fc.weight": "head.weight", "neck.fc.bias": "head.bias"}


def is_mmpretrain(obj: Any) -> bool:
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    return isinstance(state, dict) and "backbone.patch_embed.projection.weight" in state


def convert_mmpretrain(obj: dict[str, Any], src: str) -> Converted:
    state = dict(obj["state_dict"])
    extra = {_MASKFEAT[k]: state.pop(k) for k in list(state) if k in _MASKFEAT}
    pretrain = bool(extra)
    if pretrain and set(extra) != set(_MASKFEAT.values()):
        fail(src, f"an mmpretrain MaskFeat needs {', '.join(_MASKFEAT)}; found only {', '.join(extra)}")
    window = state.get("target_generator.gaussian_kernel")
    encoder_state = rename(state, _RULES, src)
    if any(k.endswith(("gamma1", "gamma2")) for k in encoder_state):
        fail(src, "layer scale (gamma1/gamma2) is not supported")
    meta = _meta(encoder_state, pretrain, src)
    if not pretrain:
        return Converted(encoder_state, meta, None)
    meta["target"] = {**HOG_TARGET, "gaussian_window": int(window.shape[0]) if window is not None else 16}
    return Converted(encoder_state, meta, {**{f"encoder.{k}": v for k, v in encoder_state.items()}, **extra})


def _meta(state: dict[str, Any], pretrain: bool, src: str) -> dict[str, Any]:
    width, _, patch, _ = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    # The weights do not say the number of heads: that of the timm size of this width and depth (64 per head else).
    heads = next(
        (s["num_heads"] for s in VIT_SIZES.values() if (s["embed_dim"], s["depth"]) == (width, depth)), width // 64
    )
    names = [n for n, p in IMAGE_ARCHITECTURES.items() if p == patch]
    if not names:
        fail(src, f"patch size {patch}: no ViT of that patch size ({', '.join(IMAGE_ARCHITECTURES)})")
    dims = {"embed_dim": int(width), "depth": depth, "num_heads": int(heads)}
    arch = next((n for n in names if VIT_SIZES[n] == dims), names[0])
    pool = {"global_pool": "avg", "fc_norm": "fc_norm.weight" in state}
    args = encoder_model_args(grid * int(patch), int(patch), **dims, **pool)
    if "head.weight" in state:
        args["num_classes"] = int(state["head.weight"].shape[0])
    # mmpretrain's ImageNet normalisation (its data_preprocessor: mean/std x 255)
    cfg = {"input_size": [3, grid * patch, grid * patch], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
           "interpolation": "bicubic"}  # fmt: skip
    return {"architecture": arch, "model_args": args, "pretrained_cfg": cfg}
