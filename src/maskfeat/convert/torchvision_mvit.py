"""torchvision's MViTv2 weights (``torchvision.models.video.mvit_v2_s``, or any ``MViT`` of its MViTv2 family):
the names are already ours (:class:`~maskfeat.models.mvit.MViTEncoder` adopts torchvision's modules), so only
the architecture is read off the shapes: widths, heads, stage depths, where the width doubles, and the clip size
the relative-position tables were made for."""

from __future__ import annotations

from typing import Any

import torch

from maskfeat.convert.common import Converted, fail, mvit_name
from maskfeat.models.mvit import PATCH_STRIDE, mvit_args

__all__ = ["convert_torchvision_mvit", "is_torchvision_mvit", "torchvision_state"]


def torchvision_state(obj: Any) -> dict[str, torch.Tensor] | None:
    """The state dict in ``obj`` (itself, or under ``state_dict`` / ``model``) if it has torchvision's MViT names."""
    for state in (obj, *(obj.get(k) for k in ("state_dict", "model") if isinstance(obj, dict))):
        if isinstance(state, dict) and {"conv_proj.weight", "pos_encoding.class_token"} <= set(state):
            return state
    return None


def is_torchvision_mvit(obj: Any) -> bool:
    return torchvision_state(obj) is not None


def convert_torchvision_mvit(obj: Any, src: str) -> Converted:
    state = dict(torchvision_state(obj))
    if "pos_encoding.spatial_pos" in state or "blocks.0.attn.rel_pos_h" not in state:
        fail(src, "a torchvision MViTv1 (absolute positions); only MViTv2 (relative positions) converts")
    n_blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    blocks = [_block(state, i) for i in range(n_blocks)]  # (dim_in, attention width, dim_out, heads)
    heads = [b[3] for b in blocks]
    starts = [i for i in range(1, n_blocks) if heads[i] != heads[i - 1]]  # the heads double at every stage start
    bounds = [0, *starts, n_blocks]
    depths = [b - a for a, b in zip(bounds, bounds[1:])]
    dim_mul_in_att = any(b[1] != b[0] for b in blocks)  # the attention runs at the new width
    rows_t, rows_h = state["blocks.0.attn.rel_pos_t"].shape[0], state["blocks.0.attn.rel_pos_h"].shape[0]
    frames, size = (rows_t + 1) // 2 * PATCH_STRIDE[0], (rows_h + 1) // 2 * PATCH_STRIDE[1]  # 2T'-1, 2H'-1 rows
    args = mvit_args("mvit_v2_s", img_size=size, num_frames=frames, depths=depths, embed_dim=blocks[0][0],
                     num_heads=heads[0], global_pool="token")  # fmt: skip
    args["dim_mul_in_att"] = dim_mul_in_att
    name = mvit_name(args)
    if "head.1.weight" in state:
        args["num_classes"] = int(state["head.1.weight"].shape[0])
    cfg = {
        "input_size": [3, size, size],
        "mean": [0.45, 0.45, 0.45],
        "std": [0.225, 0.225, 0.225],
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "num_frames": frames,
    }  # fmt: skip  (torchvision's Kinetics)
    return Converted(state, {"architecture": name, "model_args": args, "pretrained_cfg": cfg}, None)


def _block(state: dict[str, torch.Tensor], i: int) -> tuple[int, int, int, int]:
    p = f"blocks.{i}."
    dim_in = state[p + "norm1.weight"].shape[0]
    attn = state[p + "attn.project.0.weight"].shape[0]
    dim_out = state[p + "mlp.3.weight"].shape[0]
    return dim_in, attn, dim_out, attn // state[p + "attn.rel_pos_h"].shape[1]
