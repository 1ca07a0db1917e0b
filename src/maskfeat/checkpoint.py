"""Checkpoints: atomic save, resume, and export of the encoder as safetensors + timm's ``encoder.json``."""

from __future__ import annotations

import json
import os
import pickle
import random
import tempfile
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

LAST = "checkpoint-last.pt"


def atomic_write(path: str, write_fn) -> None:
    """Write a file via a temporary file in the same folder, flushed and fsynced, then renamed over ``path``.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def rng_state() -> dict[str, Any]:
    """Every random state of this process, as tensors and plain values (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    """``torch.save(state)`` atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str, allow_pickle: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain values: no code is run).

    A checkpoint holding other pickled Python objects is refused unless ``allow_pickle`` (unpickling can run
    arbitrary code: only for files you trust).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise ValueError(f"cannot read checkpoint {path}: {_first_line(e)}") from None
        if not allow_pickle:
            raise ValueError(
                f"{path} holds pickled Python objects, and unpickling can run code: if you trust the file, "
                "pass model.allow_pickle=true"
            ) from None
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def encoder_state_dict(model_state: dict[str, torch.Tensor], prefix: str = "encoder.") -> dict[str, torch.Tensor]:
    """The encoder's own weights from a MaskFeat state dict (no [MASK] token, no prediction head)."""
    return {k[len(prefix) :]: v for k, v in model_state.items() if k.startswith(prefix)}


def write_encoder(out_dir: str, state: dict[str, torch.Tensor], architecture: str, model_args: dict) -> None:
    """Write ``encoder.safetensors`` and ``encoder.json`` (timm's ``{"architecture", "model_args"}``)."""
    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(os.path.join(out_dir, "encoder.safetensors"), lambda f: f.write(_safetensors_bytes(tensors)))
    meta = json.dumps({"architecture": architecture, "model_args": model_args}, indent=2) + "\n"
    atomic_write(os.path.join(out_dir, "encoder.json"), lambda f: f.write(meta.encode()))


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return save(tensors, metadata={"format": "pt"})


def read_encoder(path: str, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Weights and (when present) ``encoder.json`` from an ``encoder.safetensors`` or a checkpoint of ours."""
    if path.endswith(".safetensors"):
        meta_path = os.path.join(os.path.dirname(path), "encoder.json")
        meta = json.load(open(meta_path)) if os.path.isfile(meta_path) else None
        try:
            return load_file(path), meta
        except Exception as e:
            raise ValueError(f"cannot read {path}: {_first_line(e)}") from None
    ckpt = load_checkpoint(path, allow_pickle)
    if "model" not in ckpt or "encoder" not in ckpt:
        raise ValueError(f"{path} is not a maskfeat checkpoint (no 'model'/'encoder' entries)")
    return encoder_state_dict(ckpt["model"], ckpt.get("encoder_prefix", "encoder.")), ckpt["encoder"]


def export(checkpoint: str, out_dir: str) -> None:
    """``maskfeat export``: encoder weights of any checkpoint of ours as safetensors + encoder.json."""
    state, meta = read_encoder(checkpoint)
    if meta is None:
        raise ValueError(f"{checkpoint} has no encoder.json beside it: cannot name its architecture")
    write_encoder(out_dir, state, meta["architecture"], meta["model_args"])
