"""Weights from other implementations: official SlowFast MaskFeat checkpoints (``.pyth``), mmpretrain's MaskFeat
ViT, torchvision's MViTv2-S, converted to maskfeat's encoders and MaskFeat model (README: "Use the official models").

    result = convert("k400_MVIT_S_MaskFeat_PT_epoch_00300.pyth")  # (encoder_state, encoder_meta, pretrain_state)
    model = build_converted(*result)        # the MaskFeat model (pre-training sources) or the encoder, eval mode
    write_converted(result, "out_dir")      # encoder.safetensors + encoder.json (+ maskfeat.safetensors)

Every source is read with ``torch.load(weights_only=True)``; the converted state is checked key by key and shape
by shape against the model its meta builds before it is returned.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from maskfeat.checkpoint import state_mismatches
from maskfeat.convert.common import Converted, fail
from maskfeat.convert.mmpretrain import convert_mmpretrain, is_mmpretrain
from maskfeat.convert.slowfast import HOG_TARGET, convert_slowfast, is_slowfast
from maskfeat.convert.torchvision_mvit import convert_torchvision_mvit, is_torchvision_mvit

__all__ = ["Converted", "build_converted", "convert", "read_source", "write_converted"]

_EXPECTED = ("a SlowFast .pyth (model_state + cfg), an mmpretrain MaskFeat ViT checkpoint (state_dict with "
             "backbone.*) or torchvision MViTv2 weights (conv_proj.*, blocks.*)")  # fmt: skip


def read_source(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, every failure as one line."""
    if not os.path.isfile(path):
        raise ValueError(f"cannot convert {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file, or one holding pickled objects other than tensors and containers
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"cannot convert {path}: not a weights-only torch file ({first[:200]}); expected {_EXPECTED}"
        ) from None


def convert(src_path: str) -> Converted:
    """``src_path`` converted: ``(encoder_state, encoder_meta, pretrain_state or None)`` (see :class:`Converted`)."""
    obj = read_source(src_path)
    if is_slowfast(obj):
        result = convert_slowfast(obj, src_path)
    elif is_mmpretrain(obj):
        result = convert_mmpretrain(obj, src_path)
    elif is_torchvision_mvit(obj):
        result = convert_torchvision_mvit(obj, src_path)
    else:
        fail(src_path, f"unknown layout; expected {_EXPECTED}")
    _check_fits(result, src_path)
    return result


def build_converted(
    encoder_state: dict[str, torch.Tensor] | None,
    encoder_meta: dict[str, Any],
    pretrain_state: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """The model of a conversion, weights loaded strictly, in eval mode: with ``pretrain_state`` the MaskFeat
    model (``model(x, mask) -> (loss, pred, target)``), otherwise the encoder (``model(x) -> logits``).
    Without states it is built with fresh weights (on the current default device)."""
    model = _build(encoder_meta, pretrain=pretrain_state is not None)
    state = pretrain_state if pretrain_state is not None else encoder_state
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model.eval()


def write_converted(result: Converted, out_dir: str) -> list[str]:
    """Writes ``encoder.safetensors`` + ``encoder.json`` and, for pre-training sources, ``maskfeat.safetensors``
    (its safetensors metadata ``maskfeat`` holds the encoder meta, target included). Returns the paths written."""
    from safetensors.torch import save_file

    from maskfeat.checkpoint import write_encoder

    meta = result.encoder_meta
    write_encoder(out_dir, result.encoder_state, meta["architecture"], meta["model_args"], meta.get("pretrained_cfg"))
    paths = [os.path.join(out_dir, "encoder.safetensors"), os.path.join(out_dir, "encoder.json")]
    if result.pretrain_state is not None:
        path = os.path.join(out_dir, "maskfeat.safetensors")
        tensors = {k: v.detach().contiguous() for k, v in result.pretrain_state.items()}
        save_file(tensors, path, metadata={"format": "pt", "maskfeat": json.dumps(meta)})
        paths.append(path)
    return paths


def _build(meta: dict[str, Any], pretrain: bool) -> nn.Module:
    from maskfeat.models.maskfeat import MaskFeat, target_patch_size
    from maskfeat.models.registry import create_encoder
    from maskfeat.targets import build_target

    args = dict(meta["model_args"])
    num_classes = int(args.pop("num_classes", 0))
    encoder = create_encoder(meta["architecture"], args, num_classes=num_classes)
    if not pretrain:
        return encoder
    t = {**HOG_TARGET, **meta.get("target", {})}
    frames, patch, _ = target_patch_size(encoder)  # the target's patches are the encoder's output tokens
    target = build_target(t["name"], patch, nbins=t["nbins"], cell_size=t["cell_size"], temporal_patch=frames,
                          gaussian_window=t["gaussian_window"], frame_index=t["frame_index"])  # fmt: skip
    return MaskFeat(encoder, target)


def _check_fits(result: Converted, src: str) -> None:
    """The converted weights, key for key and shape for shape, are those of the model the meta builds."""
    with torch.device("meta"):
        model = _build(result.encoder_meta, pretrain=result.pretrain_state is not None)
    state = result.pretrain_state if result.pretrain_state is not None else result.encoder_state
    diff = state_mismatches(model, state)
    if diff:
        fail(src, f"the converted weights do not fit {result.encoder_meta['architecture']}: {', '.join(diff[:4])}")
