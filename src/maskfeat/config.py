"""One typed config tree for every command: defaults in code, YAML files hold overrides, then ``key=value``.

The tree is a set of dataclasses; OmegaConf type-checks every value. ``load_config`` merges, in order:
the code defaults, the command's own defaults (``COMMAND_DEFAULTS``), the YAML file, the command line.
Unknown keys and bad values raise :class:`ConfigError` with a one-line message that names the key.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import io
import os
import sys
import textwrap
import tokenize
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration problem, reported to the user as one line."""


@dataclass
class DataConfig:
    path: str | None = None  # image folder (class sub-folders or flat); null = the embedded sample images
    val_path: str | None = None  # labeled folder for evaluation (finetune / linprobe / evaluate)
    image_size: int = 224  # side of the square training crop, pixels
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])  # RandomResizedCrop area range
    hflip: float = 0.5  # horizontal flip probability
    num_workers: int = -1  # data-loader worker processes; -1 = min(8, CPU cores)
    max_bad_fraction: float = 0.05  # stop once more than this fraction of the data set's files cannot be decoded
    # (each file counted once, over all processes)
    sample_images: int = 512  # size of the embedded sample data set (used when data.path is null)
    label_fraction: float = 1.0  # finetune / linprobe: train on this class-balanced fraction of the labels
    auto_augment: str | None = None  # timm RandAugment spec for finetune, e.g. rand-m9-mstd0.5-inc1
    reprob: float = 0.0  # random erasing probability (finetune; video: one box through all frames)
    repeated_aug: int = 1  # video finetune: augmented clips per decoded video (repeated augmentation; the batch
    # of train.batch_size clips holds batch_size / repeated_aug videos)
    crop_pct: float = 0.875  # evaluation: centre crop of the image resized to image_size / crop_pct
    num_frames: int = 16  # video: frames per clip
    frame_stride: int = 4  # video: take every N-th frame (16 x 4 = the official Kinetics clip)
    short_side: list[int] = field(default_factory=lambda: [256, 320])  # video training: short-side jitter range
    num_clips: int = 1  # video evaluation: temporal clips per video (scores averaged)
    num_crops: int = 1  # video evaluation: spatial crops per clip, 1 (centre) or 3
    video_backend: str = "pyav"  # video decoding: pyav | torchcodec (optional install) | auto (torchcodec if usable)


@dataclass
class ModelConfig:
    name: str = "vit_base_patch16_224"  # image: timm ViT (vit_{tiny,small,base,large}_patch16_224, ...);
    # video: vit_s / vit_b / vit_l (2x16x16 tubelets) or mvit_v2_s / mvit_v2_b / mvit_v2_l
    patch_size: int | None = None  # patch side, pixels (images); null = the architecture's own
    embed_dim: int | None = None  # token width; null = the architecture's own
    depth: int | None = None  # number of transformer blocks; null = the architecture's own
    num_heads: int | None = None  # attention heads per block; null = the architecture's own
    drop_path: float = 0.0  # stochastic depth rate (0 for pre-training, as the official recipe)
    checkpoint: str | None = None  # weights to start from: checkpoint-*.pt or encoder.safetensors
    allow_pickle: bool = False  # load model.checkpoint even if it holds pickled objects (runs code: trusted files only)
    head_init_std: float = 2e-5  # finetune / linprobe: std of the new classifier head's weights (small, as MAE)
    grad_checkpointing: bool = False  # activation checkpointing: less memory, ~30% more compute


@dataclass
class TargetConfig:
    name: str = "hog"  # what the masked tokens predict: hog (the paper's HOG histograms) | pixel (as MAE)
    nbins: int = 9  # HOG orientation bins (unsigned, 0..pi)
    cell_size: int = 8  # HOG cell side, pixels
    gaussian_window: int = 0  # HOG Gaussian spatial window; 0 = off (official)
    norm_pix: bool = True  # pixel target: normalise each patch by its own mean/std (MAE norm_pix_loss)
    frame_index: int = 0  # video: the frame of each 2-frame temporal patch whose HOG is the target (0 = official)


@dataclass
class MaskConfig:
    type: str = "auto"  # auto (block for images, cube for video) | block | random | cube | tube | frame
    ratio: float = 0.4  # fraction of patch tokens replaced by [MASK]
    unit: list[int] | None = None  # mask drawn on a grid coarser by these factors; null = auto (video: [1, 2, 2],
    # the official 2-frame x 32x32-pixel unit; images: [1, 1])


@dataclass
class TrainConfig:
    epochs: int = 300  # passes over the data set
    warmup_epochs: float = 30.0  # linear warm-up length, in epochs
    batch_size: int = 64  # samples (images, or clips) per process per forward pass
    accum_steps: int = 1  # gradient accumulation: optimizer step every N batches
    lr: float | None = None  # peak learning rate; null = blr * total_batch / 256
    blr: float = 2e-4  # base learning rate for a total batch of 256
    min_lr: float = 1e-6  # learning rate at the end of the cosine schedule
    warmup_lr: float = 1e-6  # learning rate at the start of the warm-up
    optimizer: str = "adamw"  # adamw | lars (linear probing) | sgd
    weight_decay: float = 0.05  # AdamW weight decay (never on 1-D params, pos_embed, cls/mask tokens)
    layer_decay: float | None = None  # layer-wise lr decay (finetune: 0.65 ViT-B, 0.75 ViT-L); null = off
    mixup: float = 0.0  # Mixup alpha (finetune 0.8); 0 = off
    cutmix: float = 0.0  # CutMix alpha (finetune 1.0); 0 = off
    label_smoothing: float = 0.0  # label smoothing of the classification targets (finetune 0.1); 0 = off
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    clip_grad: float | None = 0.02  # max global gradient L2 norm; null = no clipping
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    compile: bool = False  # torch.compile the model
    strategy: str = "ddp"  # with several processes: ddp (replicated weights) | fsdp (FSDP2 fully_shard: weights,
    # gradients and optimizer state sharded over the processes, for ViT-L/H and MViT-L)
    log_every: int = 20  # optimizer steps between log lines / metrics.jsonl rows
    checkpoint_every: int = 500  # optimizer steps between checkpoints (0 = only at epoch ends)
    keep_checkpoints: int = 1  # numbered step checkpoints kept besides checkpoint-last.pt
    max_steps: int = 0  # stop after this many optimizer steps (0 = the full schedule); for smoke tests
    resume: str = "auto"  # auto: continue the run in output_dir if its settings are these, else stop naming the keys
    # that differ | force: continue it even with other settings


@dataclass
class VisualizeConfig:
    num_images: int = 8  # images drawn by `maskfeat visualize`


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    visualize: VisualizeConfig = field(default_factory=VisualizeConfig)
    output_dir: str = "runs/maskfeat"  # where config.yaml, metrics.jsonl, checkpoints and weights go
    seed: int = 0  # makes a CPU run bit-for-bit repeatable
    device: str = "auto"  # auto (CUDA when present, else CPU) | cpu | cuda | cuda:N
    world_size: int = 1  # recorded by the run (number of processes); not an input


# Per-command defaults, applied over the dataclass defaults and under the user's file.
_FINETUNE = {  # the MAE/MaskFeat end-to-end fine-tuning recipe (ViT-B: 100 epochs, layer decay 0.65)
    "output_dir": "runs/finetune",
    "data": {"crop_scale": [0.08, 1.0], "auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25},
    "model": {"drop_path": 0.1},
    "train": {"epochs": 100, "warmup_epochs": 5, "batch_size": 128, "blr": 5e-4, "layer_decay": 0.65,
              "clip_grad": None, "mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1, "checkpoint_every": 0},
}  # fmt: skip
_LINPROBE = {  # the MAE linear-probing recipe: frozen encoder, BatchNorm (no affine) + linear head, LARS
    "output_dir": "runs/linprobe",
    "data": {"crop_scale": [0.08, 1.0]},
    "train": {"epochs": 90, "warmup_epochs": 10, "batch_size": 256, "blr": 0.1, "optimizer": "lars",
              "weight_decay": 0.0, "clip_grad": None, "checkpoint_every": 0},
}  # fmt: skip
COMMAND_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": {"output_dir": "runs/pretrain"},
    "finetune": _FINETUNE,
    "linprobe": _LINPROBE,
    "evaluate": {"output_dir": "runs/evaluate"},
    "visualize": {"output_dir": "runs/visualize", "data": {"num_workers": 0}},
}

# The data folders each command reads (the others may be set in a shared YAML file and are not checked).
PATHS_READ = {
    "pretrain": ("path",),
    "visualize": ("path",),
    "finetune": ("path", "val_path"),
    "linprobe": ("path", "val_path"),
    "evaluate": ("val_path",),
}
STRATEGIES = ("ddp", "fsdp")
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
OPTIMIZERS = ("adamw", "lars", "sgd")
TARGETS = ("hog", "pixel")
IMAGE_MASKS = ("block", "random")
VIDEO_MASKS = ("cube", "tube", "frame", "random")


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    """All dotted leaf keys of a nested dict / DictConfig."""
    keys: list[str] = []
    items = node.items() if isinstance(node, dict) else node.items_ex(resolve=False)
    for k, v in items:
        path = f"{prefix}{k}"
        if isinstance(v, (dict, DictConfig)):
            keys.extend(_flat_keys(v, path + "."))
        else:
            keys.append(path)
    return keys


def valid_keys() -> list[str]:
    return _flat_keys(OmegaConf.structured(Config))


def _check_keys(user: dict, source: str) -> None:
    """Raise ConfigError for the first key of ``user`` that the tree does not have, with the nearest valid keys."""
    valid = valid_keys()
    sections = {k.split(".")[0] for k in valid}
    for key in _flat_keys(user):
        if key in valid:
            continue
        if key in sections:
            raise ConfigError(f"{source}: '{key}' is a section, give one of its keys (e.g. {key}.<name>=...)")
        near = [k for k in valid if k.endswith("." + key)] or _nearest(key, valid)
        if not near:  # fall back to the keys of the same section
            head = key.split(".")[0]
            near = [k for k in valid if k.startswith(head + ".")][:6]
        hint = f"; did you mean {', '.join(near)}?" if near else f"; valid sections: {', '.join(sorted(sections))}"
        raise ConfigError(f"{source}: unknown key '{key}'{hint}")


def _nearest(key: str, valid: list[str]) -> list[str]:
    """Up to three valid keys close to ``key``, keeping only those nearly as close as the best one."""
    scored = sorted(((difflib.SequenceMatcher(None, key, k).ratio(), k) for k in valid), reverse=True)
    best = scored[0][0] if scored else 0.0
    return [k for r, k in scored[:3] if r >= 0.6 and r >= best - 0.08]


def _parse_overrides(overrides: list[str]) -> dict:
    out: dict = {}
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.epochs=1)")
        try:
            part = OmegaConf.to_container(OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as e:
            raise ConfigError(f"cannot parse override '{item}': {_first_line(e)}") from None
        out = OmegaConf.to_container(OmegaConf.merge(out, part))
    return out


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def load_config(command: str, config_file: str | None = None, overrides: list[str] | None = None,
                check_paths: bool = True) -> DictConfig:  # fmt: skip
    """Build the resolved, validated config of ``command`` from defaults, an optional YAML file and overrides.
    ``check_paths=False`` skips the checks that the data and checkpoint files exist (for printing the config)."""
    cfg = OmegaConf.structured(Config)
    layers: list[tuple[str, dict]] = [("defaults", COMMAND_DEFAULTS.get(command, {}))]
    if config_file:
        if not os.path.isfile(config_file):
            raise ConfigError(f"config file not found: {config_file}")
        try:
            file_cfg = OmegaConf.to_container(OmegaConf.load(config_file))
        except Exception as e:  # yaml.YAMLError and friends
            raise ConfigError(f"cannot read config file {config_file}: {_first_line(e)}") from None
        if file_cfg is None:
            file_cfg = {}
        if not isinstance(file_cfg, dict):
            raise ConfigError(f"config file {config_file} must hold a mapping of keys, not {type(file_cfg).__name__}")
        layers.append((config_file, file_cfg))
    layers.append(("command line", _parse_overrides(overrides or [])))
    for source, layer in layers:
        _check_keys(layer, source)
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "?"
            raise ConfigError(f"{source}: invalid value for '{key}': {_first_line(e)}") from None
    if config_file and not any("output_dir" in layer for _, layer in layers[1:]):
        # one folder per config file by default, so that two configs never share (and resume) one run folder
        cfg.output_dir = os.path.join(cfg.output_dir, os.path.splitext(os.path.basename(config_file))[0])
    if cfg.train.amp == "False":  # YAML reads a bare `off` as the boolean false (then stored as the string "False")
        cfg.train.amp = "off"
    validate(cfg, command, check_paths)
    return cfg


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: DictConfig, command: str, check_paths: bool = True) -> None:
    """Check ranges and compatible sizes before any work starts; with ``check_paths``, also that the files the
    command reads exist (``--keys`` only prints the config, so it checks none)."""
    d, m, t, tr = cfg.data, cfg.model, cfg.target, cfg.train
    _require(d.image_size > 0, f"data.image_size must be positive, got {d.image_size}")
    _require(
        len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1,
        f"data.crop_scale must be [lo, hi] with 0 < lo <= hi <= 1, got {list(d.crop_scale)}",
    )
    _require(0 <= d.hflip <= 1, f"data.hflip must be a probability in [0, 1], got {d.hflip}")
    _require(0 <= d.max_bad_fraction <= 1, f"data.max_bad_fraction must be in [0, 1], got {d.max_bad_fraction}")
    if check_paths:  # only the paths this command reads (evaluate reads no training data)
        for key in PATHS_READ.get(command, ("path", "val_path")):
            p = d[key]
            _require(p is None or os.path.exists(p), f"data.{key} does not exist: {p}")
    from maskfeat.models.video_vit import VIDEO_ARCHITECTURES
    from maskfeat.models.vit import encoder_patch_size, known_architectures

    names = known_architectures() + list(VIDEO_ARCHITECTURES)
    _require(m.name in names, f"model.name '{m.name}' is not a known architecture; choose one of {', '.join(names)}")
    video = m.name in VIDEO_ARCHITECTURES
    if video:
        _require(d.num_frames > 0 and d.num_frames % 2 == 0, f"data.num_frames must be even, got {d.num_frames}")
        _require(d.frame_stride > 0, f"data.frame_stride must be positive, got {d.frame_stride}")
        _require(len(d.short_side) == 2 and 0 < d.short_side[0] <= d.short_side[1],
                 f"data.short_side must be [lo, hi] with 0 < lo <= hi, got {list(d.short_side)}")  # fmt: skip
        _require(d.video_backend in ("pyav", "torchcodec", "auto"),
                 f"data.video_backend must be pyav, torchcodec or auto, got '{d.video_backend}'")  # fmt: skip
        _require(d.num_clips > 0 and d.num_crops in (1, 3), "data.num_clips must be >= 1 and data.num_crops 1 or 3")
        _require(0 <= t.frame_index < 2, f"target.frame_index must be 0 or 1 (2-frame patches), got {t.frame_index}")
        _require(m.patch_size is None, "model.patch_size is fixed for video models (2x16x16 tubelets)")
        if m.name.startswith("mvit"):
            _require(m.depth is None, "model.depth does not apply to MViT (its stage depths are fixed by size)")
            _require(d.image_size % 32 == 0, f"data.image_size must be a multiple of 32 for MViT, got {d.image_size}")
    masks = VIDEO_MASKS if video else IMAGE_MASKS
    _require(cfg.mask.type == "auto" or cfg.mask.type in masks,
             f"mask.type must be auto or one of {', '.join(masks)} for {'video' if video else 'image'} models, "
             f"got '{cfg.mask.type}'")  # fmt: skip
    if cfg.mask.unit is not None:
        _require(len(cfg.mask.unit) == (3 if video else 2) and all(u > 0 for u in cfg.mask.unit),
                 f"mask.unit must have {3 if video else 2} positive factors, got {list(cfg.mask.unit)}")  # fmt: skip
    patch = 16 if video else encoder_patch_size(m.name, m.patch_size)
    _require(patch > 0, f"model.patch_size must be positive, got {patch}")
    _require(
        d.image_size % patch == 0,
        f"data.image_size={d.image_size} is not divisible by the patch size {patch} (model.patch_size)",
    )
    _require(0 <= m.drop_path < 1, f"model.drop_path must be in [0, 1), got {m.drop_path}")
    _require(not check_paths or m.checkpoint is None or os.path.isfile(m.checkpoint),
             f"model.checkpoint not found: {m.checkpoint}")  # fmt: skip
    _require(t.name in TARGETS, f"target.name must be one of {', '.join(TARGETS)}, got '{t.name}'")
    if t.name == "hog" and command in ("pretrain", "visualize"):  # the target only matters where it is predicted
        _require(t.cell_size > 0 and t.nbins > 0, "target.cell_size and target.nbins must be positive")
        _require(
            patch % t.cell_size == 0,
            f"patch size {patch} is not divisible by the HOG cell size target.cell_size={t.cell_size}",
        )
        if t.gaussian_window:
            _require(
                d.image_size % t.gaussian_window == 0,
                f"data.image_size={d.image_size} is not divisible by target.gaussian_window={t.gaussian_window}",
            )
    _require(0 < cfg.mask.ratio < 1, f"mask.ratio must be in (0, 1), got {cfg.mask.ratio}")
    _require(tr.epochs > 0, f"train.epochs must be positive, got {tr.epochs}")
    _require(tr.batch_size > 0, f"train.batch_size must be positive, got {tr.batch_size}")
    _require(tr.accum_steps > 0, f"train.accum_steps must be positive, got {tr.accum_steps}")
    _require(tr.warmup_epochs >= 0, f"train.warmup_epochs must be >= 0, got {tr.warmup_epochs}")
    _require(tr.lr is None or tr.lr > 0, f"train.lr must be positive, got {tr.lr}")
    _require(tr.blr > 0, f"train.blr must be positive, got {tr.blr}")
    _require(len(tr.betas) == 2 and all(0 <= b < 1 for b in tr.betas), "train.betas must be two numbers in [0, 1)")
    _require(tr.clip_grad is None or tr.clip_grad > 0, f"train.clip_grad must be positive or null, got {tr.clip_grad}")
    _require(
        tr.optimizer in OPTIMIZERS, f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got '{tr.optimizer}'"
    )
    _require(
        tr.layer_decay is None or 0 < tr.layer_decay <= 1, f"train.layer_decay must be in (0, 1], got {tr.layer_decay}"
    )
    _require(tr.mixup >= 0 and tr.cutmix >= 0, "train.mixup and train.cutmix must be >= 0")
    _require(0 <= tr.label_smoothing < 1, f"train.label_smoothing must be in [0, 1), got {tr.label_smoothing}")
    _require(0 < d.label_fraction <= 1, f"data.label_fraction must be in (0, 1], got {d.label_fraction}")
    _require(0 <= d.reprob <= 1, f"data.reprob must be in [0, 1], got {d.reprob}")
    _require(d.repeated_aug >= 1, f"data.repeated_aug must be >= 1, got {d.repeated_aug}")
    _require(video or d.repeated_aug == 1, "data.repeated_aug applies to video models; use 1 for images")
    _require(
        tr.batch_size % d.repeated_aug == 0,
        f"train.batch_size={tr.batch_size} must be a multiple of data.repeated_aug={d.repeated_aug} (clips per video)",
    )
    _require(0 < d.crop_pct <= 1, f"data.crop_pct must be in (0, 1], got {d.crop_pct}")
    if command == "evaluate":
        _require(m.checkpoint is not None, "evaluate needs model.checkpoint=... (a finetune or linprobe checkpoint)")
    if command in ("evaluate",):
        _require(d.val_path is not None, f"{command} needs data.val_path=... (a folder of class sub-folders)")
    _require(tr.amp in AMP_CHOICES, f"train.amp must be one of {', '.join(AMP_CHOICES)}, got '{tr.amp}'")
    _require(tr.strategy in STRATEGIES, f"train.strategy must be one of {', '.join(STRATEGIES)}, got '{tr.strategy}'")
    _require(
        not (tr.strategy == "fsdp" and tr.amp == "fp16"),
        "train.strategy=fsdp trains with train.amp=bf16 or off (fp16 would need a sharded gradient scaler)",
    )
    _require(tr.log_every > 0, f"train.log_every must be positive, got {tr.log_every}")
    _require(tr.resume in ("auto", "force"), f"train.resume must be auto or force, got '{tr.resume}'")
    _require(
        tr.checkpoint_every >= 0 and tr.max_steps >= 0 and tr.keep_checkpoints >= 0,
        "train.checkpoint_every, train.max_steps and train.keep_checkpoints must be >= 0",
    )
    dev = str(cfg.device)
    _require(
        dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:"),
        f"device must be auto, cpu, cuda or cuda:N, got '{dev}'",
    )


@functools.cache
def field_descriptions() -> dict[str, str]:
    """``{dotted key: description}`` for every leaf key of :class:`Config`: the comment after each dataclass field
    in this module, with the comment-only lines right below that continue it, read from the source at run time
    (one place for the documentation: the code). Empty when the source is not available."""
    try:
        source = inspect.getsource(sys.modules[__name__])
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    comments = {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}
    per_class: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields = per_class.setdefault(node.name, {})
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            line = stmt.end_lineno
            parts = [comments[line]] if line in comments else []
            while line < len(lines) and lines[line].lstrip().startswith("#"):  # continuation lines (1-based: +1)
                line += 1
                parts.append(comments[line])
            fields[stmt.target.id] = " ".join(parts)

    out: dict[str, str] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                out[prefix + f.name] = per_class.get(cls.__name__, {}).get(f.name, "")

    walk(Config, "")
    return out


def to_yaml(cfg: DictConfig | ListConfig, descriptions: bool = False) -> str:
    """The config as YAML; with ``descriptions``, each key followed by its description as a ``# ...`` comment
    (still valid YAML: saved to a file, it loads back as the same config)."""
    if not descriptions:
        return OmegaConf.to_yaml(cfg)
    about = field_descriptions()
    out: list[str] = []

    def entry(k: str, v: Any) -> str:  # one line: lists in flow style, [0.5, 1.0]
        if isinstance(v, list):
            return f"{k}: " + yaml.safe_dump(v, default_flow_style=True, width=1 << 30).strip()
        return yaml.safe_dump({k: v}, default_flow_style=False, width=1 << 30).strip()

    def emit(node: dict, prefix: str, indent: str) -> None:
        texts = {k: entry(k, v) for k, v in node.items() if not isinstance(v, dict)}
        column = len(indent) + min(max((len(t) for t in texts.values()), default=0), 40) + 2
        for k, v in node.items():
            if isinstance(v, dict):
                out.append(f"{indent}{k}:")
                emit(v, f"{prefix}{k}.", indent + "  ")
                continue
            text = about.get(prefix + k, "")
            if not text:
                out.append(indent + texts[k])
                continue
            head = f"{indent}{texts[k]}  ".ljust(column)
            # wrapped to 120 columns, the continuation lines as comments under the first one
            for i, part in enumerate(textwrap.wrap(text, max(40, 118 - len(head)))):
                out.append((head if i == 0 else " " * len(head)) + "# " + part)

    emit(OmegaConf.to_container(cfg, resolve=True), "", "")
    return "\n".join(out) + "\n"
