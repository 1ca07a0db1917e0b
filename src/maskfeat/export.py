"""``maskfeat export CHECKPOINT OUT_DIR``: the encoder of any checkpoint of ours as encoder.safetensors +
encoder.json (timm's ``architecture`` / ``model_args`` convention, with ``pretrained_cfg``)."""

from __future__ import annotations

from maskfeat import builder
from maskfeat import checkpoint as ckpt_io
from maskfeat.weight_files import encoder_file


def run_export(checkpoint: str, out_dir: str, allow_pickle: bool = False) -> None:
    """Write ``out_dir/encoder.safetensors`` and ``out_dir/encoder.json`` from ``checkpoint`` (a checkpoint-*.pt,
    or an encoder.safetensors with its encoder.json). Checkpoints of older versions get the ``encoder.json``
    entries runs write today (see :func:`maskfeat.builder.complete_encoder_meta`). A folder: its encoder file
    (see :func:`maskfeat.weight_files.encoder_file`)."""
    checkpoint = encoder_file(checkpoint)
    if checkpoint.endswith(".safetensors"):
        state, meta = ckpt_io.read_encoder(checkpoint, allow_pickle)
        if meta is None:
            raise ValueError(f"{checkpoint} has no encoder.json beside it: cannot name its architecture")
    else:
        ckpt = ckpt_io.load_checkpoint(checkpoint, allow_pickle)
        state, _ = ckpt_io.checkpoint_encoder(ckpt, checkpoint)
        meta = builder.complete_encoder_meta(ckpt)
    ckpt_io.write_encoder(out_dir, state, meta["architecture"], meta["model_args"], meta.get("pretrained_cfg"))
