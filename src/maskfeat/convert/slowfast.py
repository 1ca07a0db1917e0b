"""Official MaskFeat checkpoints (facebookresearch/SlowFast ``.pyth``) -> maskfeat's encoders and MaskFeat model.

A SlowFast checkpoint is ``{"epoch", "model_state", "optimizer_state", "cfg"}``; ``cfg`` is the whole run config
as a YAML string, and the architecture is read from it (``MVIT.*``, ``DATA.*``, ``MASK.*``), never from the file
name. Four kinds are understood:

* ``MaskMViT`` with ``MVIT.PATCH_2D`` (image ViT pre-training) -> a timm ViT + MaskFeat's [MASK] token and head;
* ``MViT`` with ``MVIT.PATCH_2D`` (image ViT fine-tuning) -> a timm ViT classifier;
* ``MaskMViT`` (MViTv2 video pre-training) -> :class:`~maskfeat.models.mvit.MViTEncoder` (pre-training variant);
* ``MViT`` (MViTv2 video fine-tuning) -> :class:`~maskfeat.models.mvit.MViTEncoder` classifier.

Correspondences. The pre-training model has no final ``norm``: its head's LayerNorm
(``pred_head.transforms.0.0``) is our encoder's final ``norm`` and ``pred_head.projections.0`` our MaskFeat
``head``. With ``MVIT.USE_MEAN_POOLING`` the fine-tuned ``norm`` follows the mean of the patch tokens: timm's
``fc_norm``. The MViT block names map onto torchvision's (``attn.proj`` -> ``attn.project.0``, ``attn.pool_q`` +
``attn.norm_q`` -> ``attn.pool_q.pool`` + ``attn.pool_q.norm_act.0``, ``mlp.fc1/fc2`` -> ``mlp.0/3``, ``proj`` ->
``project``), and every block's widths, heads and pooling strides are checked against the ones SlowFast builds
from the cfg before anything is returned.
"""

from __future__ import annotations

from typing import Any

import yaml

from maskfeat.convert.common import Converted, fail, mvit_name, rename
from maskfeat.models.mvit import (
    KV_STRIDE,
    PATCH_KERNEL,
    PATCH_PADDING,
    PATCH_STRIDE,
    POOL_KERNEL,
    mvit_args,
    mvit_block_settings,
)
from maskfeat.models.names import IMAGE_ARCHITECTURES
from maskfeat.models.vit import VIT_SIZES, encoder_model_args

__all__ = ["convert_slowfast", "is_slowfast"]

# The official HOG target: 9 bins, 8-pixel cells, no Gaussian window; video: the first frame of each 2-frame patch.
HOG_TARGET = {"name": "hog", "nbins": 9, "cell_size": 8, "gaussian_window": 0, "frame_index": 0}

# official name -> ours, per model part (applied in order, first match wins)
_VIT_RULES = [(r"^(cls_token|pos_embed|patch_embed\.proj\..*|blocks\..*)$", r"\1")]
_MVIT_RULES = [
    (r"^patch_embed\.proj\.", "conv_proj."),
    (r"^cls_token$", "pos_encoding.class_token"),
    (r"^(blocks\.\d+\.attn)\.proj\.", r"\1.project.0."),
    (r"^(blocks\.\d+\.attn)\.pool_([qkv])\.", r"\1.pool_\2.pool."),
    (r"^(blocks\.\d+\.attn)\.norm_([qkv])\.", r"\1.pool_\2.norm_act.0."),
    (r"^(blocks\.\d+)\.mlp\.fc1\.", r"\1.mlp.0."),
    (r"^(blocks\.\d+)\.mlp\.fc2\.", r"\1.mlp.3."),
    (r"^(blocks\.\d+)\.proj\.", r"\1.project."),
    (r"^(blocks\.\d+\.(norm[12]|attn\.qkv|attn\.rel_pos_[hwt])\b.*)$", r"\1"),
]
_PRETRAIN_RULES = [(r"^pred_head\.transforms\.0\.0\.", "norm."), (r"^hogs\.", None)]  # + the head, mask token


def is_slowfast(obj: Any) -> bool:
    return isinstance(obj, dict) and "model_state" in obj and isinstance(obj.get("cfg"), str)


def convert_slowfast(ckpt: dict[str, Any], src: str) -> Converted:
    """A loaded SlowFast checkpoint as our encoder state, ``{"architecture", "model_args", ...}`` and, for
    ``MaskMViT``, the MaskFeat model's state (``encoder.*``, ``mask_token``, ``head.*``)."""
    try:
        cfg = yaml.safe_load(ckpt["cfg"])
        mvit, model = cfg["MVIT"], cfg["MODEL"]
    except (yaml.YAMLError, KeyError, TypeError) as e:
        fail(src, f"its 'cfg' is not a SlowFast config ({type(e).__name__})")
    name = model.get("MODEL_NAME")
    if name not in ("MaskMViT", "MViT"):
        fail(src, f"MODEL.MODEL_NAME is {name!r}; expected MaskMViT (pre-training) or MViT (fine-tuning)")
    pretrain, mask = name == "MaskMViT", cfg["MASK"]
    if pretrain and not (mask["PRED_HOG"] and not mask["MAE_ON"] and len(mask["PRETRAIN_DEPTH"]) == 1):
        fail(src, "only MaskFeat pre-training (MASK.PRED_HOG, one MASK.PRETRAIN_DEPTH, no MAE) is supported")
    _check_common(mvit, src)
    # pre-training: the blocks after MASK.PRETRAIN_DEPTH are deleted from the model (and its state)
    n_blocks = min(mask["PRETRAIN_DEPTH"][-1] + 1 if pretrain else 10**9, int(mvit["DEPTH"]))
    if mvit["PATCH_2D"]:
        meta, rules = _vit_meta(cfg, n_blocks, pretrain, src), _VIT_RULES
    else:
        meta, rules = _mvit_meta(cfg, n_blocks, pretrain, src), _MVIT_RULES
    state = dict(ckpt["model_state"])
    extra = {}  # the MaskFeat model's own entries
    if pretrain:
        extra = {k.replace("pred_head.projections.0.", "head."): state.pop(k) for k in list(state)
                 if k == "mask_token" or k.startswith("pred_head.projections.0.")}  # fmt: skip
        if set(extra) != {"mask_token", "head.weight", "head.bias"}:
            fail(src, "a MaskMViT checkpoint needs mask_token and pred_head.projections.0 (one prediction head)")
    head_rules = _PRETRAIN_RULES if pretrain else _classifier_rules(mvit["USE_MEAN_POOLING"], image=mvit["PATCH_2D"])
    encoder_state = rename(state, rules + head_rules, src)
    if "pos_encoding.class_token" in encoder_state:  # (1, 1, C) -> torchvision's (C,)
        encoder_state["pos_encoding.class_token"] = encoder_state["pos_encoding.class_token"].reshape(-1)
    if pretrain:
        meta["target"] = dict(HOG_TARGET)
        return Converted(encoder_state, meta, {**{f"encoder.{k}": v for k, v in encoder_state.items()}, **extra})
    classifier = encoder_state.get("head.weight", encoder_state.get("head.1.weight"))
    if classifier is None:
        fail(src, "a fine-tuned MViT without its classifier head.projection")
    meta["model_args"]["num_classes"] = int(classifier.shape[0])
    return Converted(encoder_state, meta, None)


def _classifier_rules(mean_pooling: bool, image: bool) -> list[tuple[str, str | None]]:
    norm = "fc_norm." if mean_pooling else "norm."
    return [(r"^norm\.", norm), (r"^head\.projection\.", "head." if image else "head.1.")]


def _check_common(mvit: dict, src: str) -> None:
    """The settings every supported model shares: anything else would build another network."""
    want = {"CLS_EMBED_ON": True, "QKV_BIAS": True, "NORM": "layernorm", "MODE": "conv", "POOL_FIRST": False,
            "SEPARATE_QKV": False, "LAYER_SCALE_INIT_VALUE": 0.0, "USE_FIXED_SINCOS_POS": False}  # fmt: skip
    bad = [f"MVIT.{k}={mvit.get(k)!r} (expected {v!r})" for k, v in want.items() if mvit.get(k) != v]
    if mvit.get("REV", {}).get("ENABLE"):
        bad.append("MVIT.REV.ENABLE (reversible MViT)")
    if bad:
        fail(src, "unsupported settings: " + ", ".join(bad))


def _pretrained_cfg(cfg: dict, video: bool) -> dict[str, Any]:
    data = cfg["DATA"]
    size = int(data["TEST_CROP_SIZE"])
    out: dict[str, Any] = {"input_size": [3, size, size], "mean": list(data["MEAN"]), "std": list(data["STD"])}
    if video:
        out |= {"interpolation": "bilinear", "crop_pct": 1.0, "num_frames": int(data["NUM_FRAMES"]),
                "frame_stride": int(data["SAMPLING_RATE"])}  # fmt: skip
    else:
        out["interpolation"] = "bicubic"
    return out


def _vit_meta(cfg: dict, depth: int, pretrain: bool, src: str) -> dict[str, Any]:
    mvit = cfg["MVIT"]
    patch = int(mvit["PATCH_KERNEL"][0])
    flat = mvit["DIM_MUL"] or mvit["HEAD_MUL"] or mvit["POOL_Q_STRIDE"] or mvit["REL_POS_SPATIAL"]
    if flat or not mvit["USE_ABS_POS"] or mvit["SEP_POS_EMBED"] or list(mvit["PATCH_STRIDE"]) != [patch, patch]:
        fail(src, "a PATCH_2D model that is not a plain ViT (pooling, relative or separable positions, overlap)")
    dims = {"embed_dim": int(mvit["EMBED_DIM"]), "depth": depth, "num_heads": int(mvit["NUM_HEADS"])}
    same_patch = [n for n, p in IMAGE_ARCHITECTURES.items() if p == patch]
    if not same_patch:
        fail(src, f"patch size {patch}: no ViT of that patch size ({', '.join(IMAGE_ARCHITECTURES)})")
    arch = next(
        (n for n in same_patch if VIT_SIZES[n] == dims), "vit_base_patch16_224" if patch == 16 else same_patch[0]
    )
    extra: dict[str, Any] = {"global_pool": "avg", "fc_norm": not pretrain and bool(mvit["USE_MEAN_POOLING"])}
    if not pretrain and not mvit["USE_MEAN_POOLING"]:
        extra = {"global_pool": "token"}  # the official head without mean pooling: norm, then the class token
    if float(mvit["MLP_RATIO"]) != 4.0:
        extra["mlp_ratio"] = float(mvit["MLP_RATIO"])
    args = encoder_model_args(int(cfg["DATA"]["TRAIN_CROP_SIZE"]), patch, **dims, **extra)
    return {"architecture": arch, "model_args": args, "pretrained_cfg": _pretrained_cfg(cfg, video=False)}


def _stage_depths(mvit: dict, n_blocks: int, src: str) -> list[int]:
    starts = [int(i) for i, _ in mvit["DIM_MUL"]]
    if [int(i) for i, _ in mvit["HEAD_MUL"]] != starts or any(
        float(f) != 2.0 for _, f in mvit["DIM_MUL"] + mvit["HEAD_MUL"]
    ):
        fail(src, "MVIT.DIM_MUL / HEAD_MUL must double width and heads at the same blocks")
    bounds = [0, *[s for s in starts if s < n_blocks], n_blocks]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def _official_blocks(mvit: dict, n_blocks: int) -> list[tuple]:
    """(dim_in, dim_out, heads, stride_q, stride_kv) of the first ``n_blocks`` blocks as SlowFast builds them."""
    mul = dict.fromkeys(range(int(mvit["DEPTH"]) + 1), 1.0) | {int(i): float(f) for i, f in mvit["DIM_MUL"]}
    head_mul = dict.fromkeys(range(int(mvit["DEPTH"]) + 1), 1.0) | {int(i): float(f) for i, f in mvit["HEAD_MUL"]}
    q = {int(e[0]): list(e[1:]) for e in mvit["POOL_Q_STRIDE"]}
    kv = {int(e[0]): list(e[1:]) for e in mvit["POOL_KV_STRIDE"]}
    width, heads, blocks = float(mvit["EMBED_DIM"]), float(mvit["NUM_HEADS"]), []
    for i in range(n_blocks):
        heads *= head_mul[i]
        dim_in = width
        width *= mul[i] if mvit["DIM_MUL_IN_ATT"] else mul[i + 1]  # widen in this block's attention, or its MLP
        blocks.append((int(dim_in), int(width), int(heads), q.get(i), kv.get(i)))
    return blocks


def _mvit_meta(cfg: dict, n_blocks: int, pretrain: bool, src: str) -> dict[str, Any]:
    mvit, data = cfg["MVIT"], cfg["DATA"]
    fixed = {"PATCH_KERNEL": PATCH_KERNEL, "PATCH_STRIDE": PATCH_STRIDE, "PATCH_PADDING": PATCH_PADDING,
             "POOL_KVQ_KERNEL": POOL_KERNEL, "POOL_KV_STRIDE_ADAPTIVE": KV_STRIDE, "RESIDUAL_POOLING": True,
             "REL_POS_SPATIAL": True, "REL_POS_TEMPORAL": True, "USE_ABS_POS": False, "MLP_RATIO": 4.0}  # fmt: skip
    bad = [f"MVIT.{k}={mvit.get(k)!r} (expected {v!r})" for k, v in fixed.items() if _plain(mvit.get(k)) != v]
    if bad:
        fail(src, "not an MViTv2 of the MaskFeat configs: " + ", ".join(bad))
    depths = _stage_depths(mvit, n_blocks, src)
    official = _official_blocks(mvit, n_blocks)
    dim_mul_in_att = bool(mvit["DIM_MUL_IN_ATT"])
    for variant in (pretrain, not pretrain):  # pre-training: stride 16 at the end (no last-stage query pooling)
        ours = mvit_block_settings(depths, int(mvit["EMBED_DIM"]), int(mvit["NUM_HEADS"]), variant, dim_mul_in_att)
        built = [(c.input_channels, c.output_channels, c.num_heads, c.stride_q, c.stride_kv) for c in ours]
        if built == official:
            break
    else:
        fail(src, f"its MViT blocks (widths, heads, pooling strides) are not an MViTv2 we build: {official[:3]} ...")
    args = mvit_args("mvit_v2_s", img_size=int(data["TRAIN_CROP_SIZE"]), num_frames=int(data["NUM_FRAMES"]),
                     pretrain=variant, global_pool="avg" if mvit["USE_MEAN_POOLING"] else "token",
                     depths=depths, embed_dim=int(mvit["EMBED_DIM"]), num_heads=int(mvit["NUM_HEADS"]))  # fmt: skip
    if pretrain:
        args["fc_norm"] = False  # the encoder's final norm is the pre-training head's LayerNorm, on every token
    args["dim_mul_in_att"] = dim_mul_in_att
    arch = mvit_name(args)
    return {"architecture": arch, "model_args": args, "pretrained_cfg": _pretrained_cfg(cfg, video=True)}


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(int(x) if float(x).is_integer() else x for x in v)
    return v
