"""Checkpoints: atomic save, random states, numbered-checkpoint rotation, resume (the newest readable checkpoint,
after checking that it is the same run), and export of the encoder as safetensors + timm's ``encoder.json``."""

from __future__ import annotations

import glob
import json
import logging
import os
import pickle
import random
import re
import secrets
import zipfile
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save

from maskfeat.config import Config, upgrade_saved_config
from maskfeat.distributed import is_main_process, load_training_state
from maskfeat.errors import ConfigError
from maskfeat.weight_files import HUB_CONFIG, HUB_WEIGHTS, LAST, PRETRAIN, encoder_file

log = logging.getLogger("maskfeat")


def atomic_write(path: str, write_fn) -> None:
    """Write a file via a temporary file in the same folder, flushed and fsynced, then renamed over ``path``.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{secrets.token_hex(6)}-{os.path.basename(path)}")
    # mode 0o666 less the umask, as open() gives any other file (mkstemp would make it private: 0o600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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


def gather_rng_states() -> list[dict]:
    """Every process's random states, rank order (a collective with several processes)."""
    state = rng_state()
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [state]
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    """``torch.save(state)`` atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


def save_training_checkpoint(out: str, name: str, state: dict[str, Any], keep: int) -> None:
    """Save a training state as ``out/name`` and, with ``keep`` > 0, as ``out/checkpoint-<step>.pt``, keeping the
    newest ``keep`` numbered ones. A failed write (disk full, quota, permissions) is a warning: the previous
    checkpoint is intact (atomic writes) and training goes on."""
    step = state["step"]
    try:
        save_checkpoint(os.path.join(out, name), state)
        if keep > 0:
            save_checkpoint(os.path.join(out, f"checkpoint-{step:08d}.pt"), state)
            for old in numbered_checkpoints(out)[:-keep]:
                os.unlink(old)
    except OSError as e:
        log.warning(f"could not write the step {step} checkpoint to {out} ({e.strerror or e}); the previous "
                    "checkpoint is intact and training goes on")  # fmt: skip


def load_checkpoint(path: str, allow_pickle: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain values: no code is run).

    A checkpoint holding other pickled Python objects is refused unless ``allow_pickle`` (unpickling can run
    arbitrary code: only for files you trust).
    """
    if os.path.isfile(path) and not _written_by_torch_save(path):
        raise ValueError(
            f"cannot read checkpoint {path}: it is not a file written by torch.save (expected a checkpoint-*.pt, "
            "or an encoder.safetensors)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise ValueError(f"cannot read checkpoint {path}: {_first_line(e)}") from None
        if not allow_pickle:
            raise ValueError(
                f"{path} holds pickled Python objects, and unpickling can run code: if you trust the file, "
                "pass model.allow_pickle=true (maskfeat export: --allow-pickle)"
            ) from None
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {_first_line(e)}") from None


def _written_by_torch_save(path: str) -> bool:
    """A zip archive (torch.save since PyTorch 1.6), or the legacy format: a pickle (protocol 2) of its magic number."""
    with open(path, "rb") as f:
        head = f.read(4)
    return zipfile.is_zipfile(path) or head == b"\x80\x02\x8a\x0a"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def numbered_checkpoints(output_dir: str) -> list[str]:
    """Numbered step checkpoints, oldest first."""
    found = glob.glob(os.path.join(output_dir, "checkpoint-[0-9]*.pt"))
    return sorted(found, key=lambda p: int(re.findall(r"(\d+)\.pt$", p)[0]))


# Keys that say how a run is carried out, not what it computes: they may change when a run is continued.
FREE_ON_RESUME = ("data.num_workers", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                  "train.max_steps", "train.resume", "train.compile", "device", "model.allow_pickle",
                  "visualize.num_images")  # fmt: skip


def _flat(node: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    """``key: old -> new`` for every key whose value differs between two config dicts, except the keys of
    :data:`FREE_ON_RESUME`."""
    a, b = _flat(saved), _flat(current)
    keys = sorted((set(a) | set(b)) - set(FREE_ON_RESUME))
    return [f"{k}: {a.get(k)} -> {b.get(k)}" for k in keys if a.get(k) != b.get(k)]


def check_same_run(cfg: DictConfig, saved: dict | None = None) -> None:
    """Before continuing the run in ``output_dir``: its settings (its ``config.yaml``, or ``saved``, the config
    inside its checkpoint) must be those of ``cfg``. Otherwise stop with one line naming the keys that differ,
    unless ``train.resume=force`` (then warn and continue with the new settings)."""
    path = os.path.join(cfg.output_dir, "config.yaml")
    if os.path.isfile(path):
        saved = OmegaConf.to_container(OmegaConf.load(path))
    if not saved:
        return
    try:  # a key the saved run did not have (an older maskfeat) had its default
        saved = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(Config), upgrade_saved_config(saved)))
    except Exception:  # a key that no longer exists: compare as saved
        pass
    changed = config_differences(saved, OmegaConf.to_container(cfg))
    if not changed:
        return
    listed = "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
    if cfg.train.resume == "force":
        log.warning(f"train.resume=force: continuing the run in {cfg.output_dir} with other settings ({listed})")
        return
    raise ConfigError(
        f"{cfg.output_dir} holds a run with other settings ({listed}): choose a new output_dir=... to start a new "
        "run, or pass train.resume=force to continue that one with these settings"
    )


def newest_readable(output_dir: str) -> tuple[str, dict] | None:
    """The newest readable checkpoint of ``output_dir`` and its path (``checkpoint-last.pt``, else the numbered
    ones, newest first): a torn or corrupt file falls back to an older one. None when there is none.

    Raises:
        ValueError: there are checkpoints, but none is readable.
    """
    last = os.path.join(output_dir, LAST)
    candidates = [p for p in [last, *reversed(numbered_checkpoints(output_dir))] if os.path.isfile(p)]
    if not candidates:
        return None
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except ValueError as e:
            log.warning(f"{e}; trying an older checkpoint")
    raise ValueError(f"no readable checkpoint in {output_dir} (tried {', '.join(candidates)})")


def resume_training(cfg: DictConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, sharded: bool, total_steps: int) -> tuple[int, dict]:  # fmt: skip
    """Load the newest readable checkpoint of ``cfg.output_dir`` (see :func:`newest_readable`) into ``model``,
    ``optimizer``, ``scaler`` and this process's random states, after :func:`check_same_run`.

    Returns the step to continue from and the best evaluation metrics so far (step 0 when there is no checkpoint).
    """
    found = newest_readable(cfg.output_dir)
    if found is None:
        check_same_run(cfg)  # a run killed before its first checkpoint left only its config.yaml
        return 0, {"top1": float("-inf")}
    last, state = found
    check_same_run(cfg, state.get("config"))
    if bool(state.get("sharded", False)) != sharded:
        was = "sharded (train.strategy=fsdp)" if state.get("sharded") else "unsharded"
        raise ValueError(f"{last} was written by a {was} run; resume it with the same train.strategy and number of "
                         "processes, or start a new run from its weights with model.checkpoint=...")  # fmt: skip
    load_training_state(model, optimizer, state["model"], state["optimizer"], sharded)
    scaler.load_state_dict(state["scaler"])
    rank = dist.get_rank() if dist.is_initialized() else 0
    per_rank = state.get("rng_ranks") or [state["rng"]]
    set_rng_state(per_rank[rank] if rank < len(per_rank) else state["rng"])
    step = int(state["step"])
    if is_main_process():
        log.info(f"resuming from {last} at step {step}/{total_steps}")
    return step, dict(state.get("best", {"top1": float("-inf")}))


def encoder_state_dict(model_state: dict[str, torch.Tensor], prefix: str = "encoder.") -> dict[str, torch.Tensor]:
    """The encoder's own weights from a MaskFeat state dict (no [MASK] token, no prediction head)."""
    return {k[len(prefix) :]: v for k, v in model_state.items() if k.startswith(prefix)}


def write_encoder(
    out_dir: str,
    state: dict[str, torch.Tensor],
    architecture: str,
    model_args: dict,
    pretrained_cfg: dict | None = None,
) -> None:
    """Write ``encoder.safetensors`` and ``encoder.json``: timm's ``{"architecture", "model_args"}``, plus
    ``pretrained_cfg`` (see :func:`maskfeat.builder.make_pretrained_cfg`) when given.

    Image ViTs: ``timm.create_model(architecture, pretrained=False, pretrained_cfg_overlay=pretrained_cfg,
    **{"num_classes": 0, **model_args})`` rebuilds the encoder and loads the weights strictly.
    """
    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(os.path.join(out_dir, "encoder.safetensors"), lambda f: f.write(safetensors_bytes(tensors)))
    meta = {"architecture": architecture, "model_args": model_args}
    if pretrained_cfg is not None:
        meta["pretrained_cfg"] = pretrained_cfg
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write(os.path.join(out_dir, "encoder.json"), lambda f: f.write(text.encode()))


def safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return save(tensors, metadata={"format": "pt"})


def read_encoder(path: str, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Encoder weights and (when known) their ``{"architecture", "model_args", "pretrained_cfg"}``, from
    ``path``: a folder (see :func:`maskfeat.weight_files.encoder_file`), an ``encoder.safetensors`` (with the
    ``encoder.json`` beside it), a ``maskfeat.safetensors`` (its ``encoder.*``), a Hub ``model.safetensors``
    (with its ``config.json``) or a checkpoint of ours."""
    path = encoder_file(path)
    if not path.endswith(".safetensors"):
        return checkpoint_encoder(load_checkpoint(path, allow_pickle), path)
    state, meta = read_safetensors(path)
    name = os.path.basename(path)
    if name == PRETRAIN:
        return encoder_state_dict(state), meta
    meta_path = os.path.join(os.path.dirname(path), HUB_CONFIG if name == HUB_WEIGHTS else "encoder.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if name == HUB_WEIGHTS:  # timm's config.json: the same three entries (num_classes only for a classifier)
            meta = {k: meta[k] for k in ("architecture", "model_args", "pretrained_cfg") if k in meta}
            if not meta.get("model_args", {}).get("num_classes", 1):
                meta["model_args"] = {k: v for k, v in meta["model_args"].items() if k != "num_classes"}
    return state, meta


def read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The tensors of a safetensors file and the encoder meta of its ``maskfeat`` metadata (None without)."""
    try:
        with safe_open(path, "pt") as f:
            meta = (f.metadata() or {}).get("maskfeat")
        return load_file(path), json.loads(meta) if meta else None
    except Exception as e:
        raise ValueError(f"cannot read {path}: {_first_line(e)}") from None


def read_pretrain_model(path: str, allow_pickle: bool = False) -> tuple[dict, dict, dict] | None:
    """``(state, encoder meta, target settings)`` of the whole pre-training model at ``path`` (a
    ``maskfeat.safetensors`` or a ``maskfeat pretrain`` checkpoint); None when ``path`` holds another model."""
    if path.endswith(".safetensors"):
        if os.path.basename(path) != PRETRAIN:
            return None
        state, meta = read_safetensors(path)
        if meta is None or "target" not in meta:
            raise ValueError(f"{path} has no 'maskfeat' metadata: cannot name its architecture and target")
        return state, meta, dict(meta["target"])
    ckpt = load_checkpoint(path, allow_pickle)
    if "classifier" in ckpt or not isinstance(ckpt.get("config"), dict) or "model" not in ckpt:
        return None
    config = upgrade_saved_config(ckpt["config"])
    return ckpt["model"], dict(ckpt.get("encoder", {})), dict(config.get("target", {}))


def state_mismatches(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """The names by which ``state`` does not fit ``module`` key for key and shape for shape: the missing and extra
    names, else the misshapen ones (empty when it fits). ``module`` may live on the meta device."""
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    return sorted(set(want) ^ set(have)) or [k for k in want if want[k] != have[k]]


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str, what: str) -> None:
    """``module.load_state_dict(state, strict=True)``; a mismatch is one line: ``{path} does not fit {what}: ...``
    with the first missing, unexpected or misshapen weights."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__
        raise ConfigError(f"{path} does not fit {what}: {detail[:300]}") from None


def checkpoint_encoder(ckpt: dict[str, Any], path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The encoder's weights and its ``encoder`` entry (architecture, model_args, ...) in a loaded checkpoint."""
    if "model" not in ckpt or "encoder" not in ckpt:
        raise ValueError(f"{path} is not a maskfeat checkpoint (no 'model'/'encoder' entries)")
    return encoder_state_dict(ckpt["model"], ckpt.get("encoder_prefix", "encoder.")), dict(ckpt["encoder"])
