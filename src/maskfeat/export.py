"""``maskfeat export CHECKPOINT OUT_DIR [--hub]``: the encoder of any checkpoint of ours as encoder.safetensors +
encoder.json (timm's ``architecture`` / ``model_args`` convention, with ``pretrained_cfg``), or with ``--hub`` as a
folder timm loads with ``timm.create_model("local-dir:OUT_DIR", pretrained=True)`` (see :mod:`maskfeat.hub`)."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import OmegaConf

from maskfeat import builder
from maskfeat import checkpoint as ckpt_io
from maskfeat.weight_files import encoder_file


def run_export(checkpoint: str, out_dir: str, allow_pickle: bool = False, hub: bool = False,
               license: str = "apache-2.0") -> list[str]:  # fmt: skip
    """Write ``out_dir/encoder.safetensors`` and ``out_dir/encoder.json`` (``hub``: ``config.json``,
    ``model.safetensors``, ``README.md``) from ``checkpoint`` (a checkpoint-*.pt, an encoder.safetensors with its
    encoder.json, or a folder: its encoder file, see :func:`maskfeat.weight_files.encoder_file`). Checkpoints of
    older versions get the ``encoder.json`` entries runs write today (see
    :func:`maskfeat.builder.complete_encoder_meta`). Returns the paths written."""
    checkpoint = encoder_file(checkpoint)
    state, meta, provenance = _read(checkpoint, allow_pickle)
    if hub:
        from maskfeat.hub import summarize_metrics, write_hub_folder

        if provenance["command"] == "linprobe":
            raise ValueError(f"{checkpoint} is a linprobe classifier (BatchNorm + linear head, not timm's): export "
                             "the encoder of its pre-training run instead")  # fmt: skip
        provenance["metrics"] = summarize_metrics(os.path.join(os.path.dirname(checkpoint), "metrics.jsonl"))
        return write_hub_folder(out_dir, state, meta, provenance, license)
    ckpt_io.write_encoder(out_dir, state, meta["architecture"], meta["model_args"], meta.get("pretrained_cfg"))
    return [os.path.join(out_dir, "encoder.safetensors"), os.path.join(out_dir, "encoder.json")]


def _read(checkpoint: str, allow_pickle: bool) -> tuple[dict, dict, dict[str, Any]]:
    """(encoder state, encoder meta, provenance: the command and resolved config of the run, where known)."""
    if checkpoint.endswith(".safetensors"):
        state, meta = ckpt_io.read_encoder(checkpoint, allow_pickle)
        if meta is None:
            raise ValueError(f"{checkpoint} has no encoder.json beside it: cannot name its architecture")
        config_path = os.path.join(os.path.dirname(checkpoint), "config.yaml")  # a run's folder
        config = OmegaConf.to_container(OmegaConf.load(config_path)) if os.path.isfile(config_path) else None
        command = None if config is None else "finetune" if "num_classes" in meta["model_args"] else "pretrain"
    else:
        ckpt = ckpt_io.load_checkpoint(checkpoint, allow_pickle)
        state, _ = ckpt_io.checkpoint_encoder(ckpt, checkpoint)
        meta = builder.complete_encoder_meta(ckpt)
        config, command = ckpt.get("config"), ckpt.get("classifier", "pretrain")
    return state, meta, {"command": command, "config": config, "source": checkpoint}
