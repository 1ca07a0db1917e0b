"""The checks of a merged config that one field's type cannot express: ranges, sizes that must divide, the
paths a command reads, keys that only some models take. Each failure is one :class:`ConfigError` line naming the key.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig

from maskfeat.errors import ConfigError
from maskfeat.models.names import check_model_settings
from maskfeat.weight_files import ENCODER, HUB_WEIGHTS, LAST, PRETRAIN, has_weights

__all__ = ["PATHS_READ", "validate"]

# The data folders each command reads (the others may be set in a shared YAML file and are not checked).
PATHS_READ = {
    "pretrain": ("path",),
    "visualize": ("path",),
    "finetune": ("path", "val_path"),
    "linprobe": ("path", "val_path"),
    "evaluate": ("val_path",),
    "detect": ("path", "val_path"),
}


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: DictConfig, command: str, check_paths: bool = True) -> None:
    """Check ranges and compatible sizes before any work starts; with ``check_paths``, also that the files the
    command reads exist (``--keys`` only prints the config, so it checks none)."""
    d, m, tr = cfg.data, cfg.model, cfg.train
    _require(d.image_size > 0, f"data.image_size must be positive, got {d.image_size}")
    _require(
        len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1,
        f"data.crop_scale must be [lo, hi] with 0 < lo <= hi <= 1, got {list(d.crop_scale)}",
    )
    _require(d.hflip is None or 0 <= d.hflip <= 1, f"data.hflip must be a probability in [0, 1], got {d.hflip}")
    _require(0 <= d.max_bad_fraction <= 1, f"data.max_bad_fraction must be in [0, 1], got {d.max_bad_fraction}")
    if check_paths:  # only the paths this command reads (evaluate reads no training data)
        for key in PATHS_READ.get(command, ("path", "val_path")):
            p = d[key]
            _require(p is None or os.path.exists(p), f"data.{key} does not exist: {p}")
    check_model_settings(cfg, command)
    _require(0 <= m.drop_path < 1, f"model.drop_path must be in [0, 1), got {m.drop_path}")
    _require(not check_paths or m.checkpoint is None or has_weights(m.checkpoint),
             f"model.checkpoint not found: {m.checkpoint} (a weights file, or a folder holding {ENCODER}, "
             f"{PRETRAIN}, {HUB_WEIGHTS} or {LAST})")  # fmt: skip
    _require(0 < cfg.mask.ratio < 1, f"mask.ratio must be in (0, 1), got {cfg.mask.ratio}")
    _require(tr.epochs > 0, f"train.epochs must be positive, got {tr.epochs}")
    _require(tr.batch_size > 0, f"train.batch_size must be positive, got {tr.batch_size}")
    _require(tr.accum_steps > 0, f"train.accum_steps must be positive, got {tr.accum_steps}")
    _require(tr.warmup_epochs >= 0, f"train.warmup_epochs must be >= 0, got {tr.warmup_epochs}")
    _require(tr.epoch_size is None or tr.epoch_size >= 1, f"train.epoch_size must be >= 1 or null, got {tr.epoch_size}")
    _require(tr.lr is None or tr.lr > 0, f"train.lr must be positive, got {tr.lr}")
    _require(tr.blr > 0, f"train.blr must be positive, got {tr.blr}")
    _require(len(tr.betas) == 2 and all(0 <= b < 1 for b in tr.betas), "train.betas must be two numbers in [0, 1)")
    _require(tr.clip_grad is None or tr.clip_grad > 0, f"train.clip_grad must be positive or null, got {tr.clip_grad}")
    _require(
        tr.layer_decay is None or 0 < tr.layer_decay <= 1, f"train.layer_decay must be in (0, 1], got {tr.layer_decay}"
    )
    _require(tr.mixup >= 0 and tr.cutmix >= 0, "train.mixup and train.cutmix must be >= 0")
    _require(0 <= tr.label_smoothing < 1, f"train.label_smoothing must be in [0, 1), got {tr.label_smoothing}")
    _require(0 < d.label_fraction <= 1, f"data.label_fraction must be in (0, 1], got {d.label_fraction}")
    _require(0 <= d.reprob <= 1, f"data.reprob must be in [0, 1], got {d.reprob}")
    _require(0 < d.crop_pct <= 1, f"data.crop_pct must be in (0, 1], got {d.crop_pct}")
    if command == "evaluate":
        _require(m.checkpoint is not None, "evaluate needs model.checkpoint=... (a finetune or linprobe checkpoint)")
    if command in ("evaluate",):
        _require(d.val_path is not None, f"{command} needs data.val_path=... (a folder of class sub-folders)")
    _require(
        not (tr.strategy == "fsdp" and tr.amp == "fp16"),
        "train.strategy=fsdp trains with train.amp=bf16 or off (fp16 would need a sharded gradient scaler)",
    )
    _require(tr.log_every > 0, f"train.log_every must be positive, got {tr.log_every}")
    _require(
        tr.checkpoint_every >= 0 and tr.max_steps >= 0 and tr.keep_checkpoints >= 0,
        "train.checkpoint_every, train.max_steps and train.keep_checkpoints must be >= 0",
    )
    det = cfg.detect
    _require(0 <= det.score_threshold <= 1, f"detect.score_threshold must be in [0, 1], got {det.score_threshold}")
    _require(det.box_jitter >= 0 and det.roi_size > 0 and 0 <= det.dropout < 1,
             "detect.box_jitter must be >= 0, detect.roi_size positive and detect.dropout in [0, 1)")  # fmt: skip
    _require(det.frame_rate > 0, f"detect.frame_rate must be positive, got {det.frame_rate}")
    dev = str(cfg.device)
    _require(
        dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:"),
        f"device must be auto, cpu, cuda or cuda:N, got '{dev}'",
    )
