"""``maskfeat.models.load_model(path)``: the model a folder or file of ours holds, built and loaded, in eval mode.

    model = load_model("converted/")     # maskfeat.safetensors there: model(x, mask) -> (loss, pred, target)
    model = load_model("runs/finetune")  # a classifier: model(x) -> (B, num_classes) logits

``path`` is a folder written by ``maskfeat convert``, ``maskfeat export`` (``--hub`` too) or a run, or a file in it
(:mod:`maskfeat.weight_files` chooses the file of a folder: the most complete model).
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from maskfeat import builder
from maskfeat import checkpoint as ckpt_io
from maskfeat.config import Config, upgrade_saved_config
from maskfeat.models.maskfeat import MaskFeat
from maskfeat.models.registry import create_encoder
from maskfeat.weight_files import PRETRAIN, model_file

__all__ = ["load_model", "saved_pretrain_model"]

_WHAT = "the model its metadata names"


def load_model(path: str, allow_pickle: bool = False) -> nn.Module:
    """The model at ``path``, its weights loaded strictly, on the CPU, in eval mode.

    - The pre-training model where it is there (``maskfeat.safetensors``, or a checkpoint of ``maskfeat
      pretrain``): ``model(x, mask) -> (loss, pred, target)``, ``x`` normalised (B, C, H, W) or (B, C, T, H, W),
      ``mask`` bool (B, N) on the output token grid, row-major (t, h, w), True = masked; ``pred`` and ``target``
      (B, N, D); ``loss`` the masked MSE.
    - Otherwise the encoder: ``model(x) -> (B, num_classes)`` logits where it has a classifier (a finetune or
      linprobe checkpoint, a fine-tuned ``encoder.safetensors``), ``(B, num_features)`` pooled features otherwise.

    ``allow_pickle`` reads checkpoints holding pickled objects (trusted files only).
    """
    file = model_file(path)
    if file.endswith(".safetensors"):
        return _from_safetensors(file).eval()
    ckpt = ckpt_io.load_checkpoint(file, allow_pickle)
    if "classifier" in ckpt:  # finetune / linprobe
        if ckpt["classifier"] not in builder.CLASSIFIERS or "encoder" not in ckpt:
            raise ValueError(f"{file} is not a maskfeat classifier checkpoint")
        model = builder.build_classifier(dict(ckpt["encoder"]), ckpt["classifier"])
    elif isinstance(ckpt.get("config"), dict) and "model" in ckpt:
        model, _ = saved_pretrain_model(ckpt["config"])
    else:
        raise ValueError(f"{file} is not a maskfeat checkpoint (no 'model' and 'config' or 'classifier' entries)")
    ckpt_io.load_strict(model, ckpt["model"], file, _WHAT)
    return model.eval()


def saved_pretrain_model(config: dict[str, Any]) -> tuple[MaskFeat, DictConfig]:
    """The (fresh) MaskFeat model of a ``maskfeat pretrain`` run from the config its checkpoint saved, and that
    config completed with today's defaults."""
    run_cfg = OmegaConf.merge(OmegaConf.structured(Config), upgrade_saved_config(config))
    model, _ = builder.build_pretrain_model(run_cfg)
    return model, run_cfg


def _from_safetensors(file: str) -> nn.Module:
    if os.path.basename(file) == PRETRAIN:
        from maskfeat.convert import build_converted

        found = ckpt_io.read_pretrain_model(file)
        assert found is not None
        state, meta, _ = found
        try:
            return build_converted(None, meta, state)  # loads strictly
        except RuntimeError as e:
            raise ValueError(
                f"{file} does not fit the model its metadata names: {str(e).splitlines()[-1][:300]}"
            ) from None
    state, meta = ckpt_io.read_encoder(file)
    if meta is None:
        raise ValueError(f"{file} has no encoder.json (or config.json) beside it: cannot name its architecture")
    args = dict(meta["model_args"])
    if "num_classes" in args:
        model = builder.build_classifier(meta, "finetune")
    else:
        model = create_encoder(meta["architecture"], args, num_classes=0)
    ckpt_io.load_strict(model, state, file, _WHAT)
    return model
