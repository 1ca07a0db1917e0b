"""Which file of a folder holds the weights: the one resolver of ``model.checkpoint``, ``maskfeat export`` and
``maskfeat.models.load_model``. Torch-free (the config checks use it before any work starts).

A path is a weights file, or a folder written by ``maskfeat convert`` (``encoder.safetensors`` + ``encoder.json``,
``maskfeat.safetensors`` for pre-training sources), ``maskfeat export`` (``encoder.safetensors``; ``--hub``:
``model.safetensors`` + ``config.json``) or a run (``checkpoint-last.pt``; ``encoder.safetensors`` at its end).
"""

from __future__ import annotations

import os

__all__ = ["ENCODER", "HUB_CONFIG", "HUB_WEIGHTS", "LAST", "PRETRAIN", "encoder_file", "has_weights", "model_file"]

ENCODER = "encoder.safetensors"  # the encoder (its classifier included after finetune), with encoder.json beside it
PRETRAIN = "maskfeat.safetensors"  # the whole pre-training model: encoder, [MASK] token, prediction head
HUB_WEIGHTS, HUB_CONFIG = "model.safetensors", "config.json"  # export --hub: timm's local-dir / Hub folder
LAST = "checkpoint-last.pt"  # a run's newest checkpoint (everything: model, optimizer, config, ...)

_FOR_ENCODER = (ENCODER, HUB_WEIGHTS, PRETRAIN, LAST)  # the encoder alone first
_FOR_MODEL = (PRETRAIN, LAST, ENCODER, HUB_WEIGHTS)  # the most complete model first


def has_weights(path: str) -> bool:
    """A file, or a folder holding one of the files this module knows."""
    return os.path.isfile(path) or (os.path.isdir(path) and any(_present(path, _FOR_MODEL)))


def encoder_file(path: str) -> str:
    """The file of ``path`` to read an encoder from: ``path`` itself when it is a file; in a folder
    ``encoder.safetensors``, else ``model.safetensors`` (a Hub folder), ``maskfeat.safetensors`` or
    ``checkpoint-last.pt``."""
    return _first(path, _FOR_ENCODER)


def model_file(path: str) -> str:
    """The file of ``path`` holding the most complete model: ``path`` itself when it is a file; in a folder
    ``maskfeat.safetensors`` (converted pre-training model), else ``checkpoint-last.pt`` (a run),
    ``encoder.safetensors`` or ``model.safetensors``."""
    return _first(path, _FOR_MODEL)


def _present(folder: str, names: tuple[str, ...]) -> list[str]:
    return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]


def _first(path: str, names: tuple[str, ...]) -> str:
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise ValueError(f"no weights at {path}: no such file or folder")
    found = _present(path, names)
    if not found:
        raise ValueError(f"no weights in the folder {path}: expected one of {', '.join(names)}")
    return found[0]
