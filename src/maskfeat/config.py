"""One typed config tree for every command: defaults in code, YAML files hold overrides, then ``key=value``.

The tree is a set of dataclasses; OmegaConf type-checks every value (a field with a fixed set of choices is a
``StrEnum``: it compares equal to its string, ``cfg.train.amp == "bf16"``). ``load_config`` merges, in order:
the code defaults, the command's own defaults (``COMMAND_DEFAULTS``), the YAML file, the command line.
Unknown keys and bad values raise :class:`ConfigError` with a one-line message that names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import typing
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from maskfeat.config_checks import PATHS_READ, validate
from maskfeat.config_docs import commented_yaml, describe_fields
from maskfeat.errors import ConfigError

__all__ = ["COMMAND_DEFAULTS", "PATHS_READ", "RENAMED", "Config", "ConfigError", "field_descriptions", "load_config",
           "to_yaml", "upgrade_saved_config", "valid_keys", "validate"]  # fmt: skip


# The fields with a fixed set of choices (OmegaConf rejects any other value; load_config names the key). Each
# member's value is its name: `Amp.bf16 == "bf16"`, and it is written to YAML as `bf16`.
Amp = StrEnum("Amp", "auto bf16 fp16 off", module=__name__)
Optimizer = StrEnum("Optimizer", "adamw lars sgd", module=__name__)
Strategy = StrEnum("Strategy", "ddp fsdp", module=__name__)
TargetName = StrEnum("TargetName", "hog pixel", module=__name__)
Resume = StrEnum("Resume", "auto force", module=__name__)
MaskType = StrEnum("MaskType", "auto block random cube tube frame", module=__name__)
VideoBackend = StrEnum("VideoBackend", "pyav torchcodec auto", module=__name__)
ClipSampling = StrEnum("ClipSampling", "stride segments", module=__name__)
EvalView = StrEnum("EvalView", "center full", module=__name__)


@dataclass
class DataConfig:
    path: str | None = None  # image folder (class sub-folders or flat); null = the embedded sample images
    val_path: str | None = None  # labeled folder for evaluation (finetune / linprobe / evaluate)
    image_size: int = 224  # side of the square training crop, pixels
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])  # RandomResizedCrop area range
    hflip: float | None = None  # horizontal flip probability; null = auto: 0.5, and 0 for Something-Something v2
    # lists (classes defined by left and right)
    num_workers: int = -1  # data-loader worker processes; -1 = min(8, CPU cores)
    max_bad_fraction: float = 0.05  # stop once more than this fraction of the data set's files cannot be decoded
    # (each file counted once, over all processes)
    sample_images: int = 512  # size of the embedded sample data set (used when data.path is null)
    label_fraction: float = 1.0  # finetune / linprobe: train on this class-balanced fraction of the labels
    auto_augment: str | None = None  # timm RandAugment spec for finetune, e.g. rand-m9-mstd0.5-inc1
    reprob: float = 0.0  # random erasing probability (finetune; video: one box through all frames)
    crop_pct: float = 0.875  # evaluation: centre crop of the image resized to image_size / crop_pct


@dataclass
class VideoConfig:
    num_frames: int = 16  # frames per clip
    frame_stride: int = 4  # take every N-th frame (16 x 4 = the official Kinetics clip)
    short_side: list[int] = field(default_factory=lambda: [256, 320])  # training: short-side jitter range, pixels
    num_clips: int = 1  # evaluation: temporal clips per video (scores averaged)
    num_crops: int = 1  # evaluation: spatial crops per clip, 1 (centre) or 3
    repeated_aug: int = 1  # finetune: augmented clips per decoded video (repeated augmentation; the batch of
    # train.batch_size clips holds batch_size / repeated_aug videos)
    sampling: ClipSampling = ClipSampling.stride  # stride: num_frames frames frame_stride apart (Kinetics) | segments:
    # one frame from each of num_frames equal segments of the whole video (Something-Something v2; one temporal clip)
    backend: VideoBackend = VideoBackend.pyav  # decoding: pyav | torchcodec (optional install) | auto (torchcodec if
    # usable)


@dataclass
class ModelConfig:
    name: str = "vit_base_patch16_224"  # image: timm ViT (vit_{tiny,small,base,large}_patch16_224, ...);
    # video: vit_s / vit_b / vit_l (2x16x16 tubelets) or mvit_v2_s / mvit_v2_b / mvit_v2_l
    patch_size: int | None = None  # patch side, pixels (images; video ViT: 2xPxP tubelets); null = the model's own
    embed_dim: int | None = None  # token width; null = the architecture's own
    depth: int | None = None  # number of transformer blocks; null = the architecture's own
    num_heads: int | None = None  # attention heads per block; null = the architecture's own
    drop_path: float = 0.0  # stochastic depth rate (0 for pre-training, as the official recipe)
    checkpoint: str | None = None  # weights to start from: checkpoint-*.pt, encoder.safetensors or a folder
    allow_pickle: bool = False  # load model.checkpoint even if it holds pickled objects (runs code: trusted files only)
    head_init_std: float = 2e-5  # finetune / linprobe: std of the new classifier head's weights (small, as MAE)
    grad_checkpointing: bool = False  # activation checkpointing: less memory, ~30% more compute


@dataclass
class TargetConfig:
    name: TargetName = TargetName.hog  # what the masked tokens predict: hog (the paper's HOG histograms) | pixel
    # (as MAE)
    nbins: int = 9  # HOG orientation bins (unsigned, 0..pi)
    cell_size: int = 8  # HOG cell side, pixels
    gaussian_window: int = 0  # HOG Gaussian spatial window; 0 = off (official)
    norm_pix: bool = True  # pixel target: normalise each patch by its own mean/std (MAE norm_pix_loss)
    frame_index: int = 0  # video: the frame of each 2-frame temporal patch whose HOG is the target (0 = official)


@dataclass
class MaskConfig:
    type: MaskType = MaskType.auto  # auto (block for images, cube for video) | block | random | cube | tube | frame
    ratio: float = 0.4  # fraction of patch tokens replaced by [MASK]
    unit: list[int] | None = None  # mask drawn on a grid coarser by these factors; null = auto (video: [1, 2, 2],
    # the official 2-frame x 32x32-pixel unit; images: [1, 1])


@dataclass
class TrainConfig:
    epochs: int = 300  # schedule length, in epochs (passes over the data set, or of train.epoch_size samples)
    epoch_size: int | None = None  # samples (images, or videos) an epoch draws; null = the data set's size. Set it
    # to make the schedule a budget of samples seen whatever the data set's size: a smaller set is passed over
    # several times an epoch (each pass freshly shuffled and augmented), a larger one in part
    warmup_epochs: float = 30.0  # linear warm-up length, in epochs
    batch_size: int = 64  # samples (images, or clips) per process per forward pass
    accum_steps: int = 1  # gradient accumulation: optimizer step every N batches
    lr: float | None = None  # peak learning rate; null = blr * total_batch / 256
    blr: float = 2e-4  # base learning rate for a total batch of 256
    min_lr: float = 1e-6  # learning rate at the end of the cosine schedule
    warmup_lr: float = 1e-6  # learning rate at the start of the warm-up
    optimizer: Optimizer = Optimizer.adamw  # adamw | lars (linear probing) | sgd
    weight_decay: float = 0.05  # AdamW weight decay (never on 1-D params, pos_embed, cls/mask tokens)
    layer_decay: float | None = None  # layer-wise lr decay (finetune: 0.65 ViT-B, 0.75 ViT-L); null = off
    mixup: float = 0.0  # Mixup alpha (finetune 0.8); 0 = off
    cutmix: float = 0.0  # CutMix alpha (finetune 1.0); 0 = off
    label_smoothing: float = 0.0  # label smoothing of the classification targets (finetune 0.1); 0 = off
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    clip_grad: float | None = 0.02  # max global gradient L2 norm; null = no clipping
    amp: Amp = Amp.auto  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    compile: bool = False  # torch.compile the model
    strategy: Strategy = Strategy.ddp  # with several processes: ddp (replicated weights) | fsdp (FSDP2 fully_shard:
    # weights, gradients and optimizer state sharded over the processes, for ViT-L/H and MViT-L)
    log_every: int = 20  # optimizer steps between log lines / metrics.jsonl rows
    checkpoint_every: int = 500  # optimizer steps between checkpoints (0 = only at epoch ends)
    keep_checkpoints: int = 1  # numbered step checkpoints kept besides checkpoint-last.pt
    max_steps: int = 0  # stop after this many optimizer steps (0 = the full schedule); for smoke tests
    resume: Resume = Resume.auto  # auto: continue the run in output_dir if its settings are these, else stop naming
    # the keys that differ | force: continue it even with other settings


@dataclass
class DetectConfig:
    score_threshold: float = 0.8  # evaluation: detected person boxes scoring below this are not evaluated
    box_jitter: float = 0.0  # training: each ground-truth box edge moved by up to this fraction of the box's size
    roi_size: int = 7  # RoIAlign output side per box (max-pooled after)
    dropout: float = 0.5  # before the box head's linear layer
    frame_rate: float = 30.0  # folders of extracted frames (frames/<video_id>/): frames per second (AVA's: 30)
    frames_start: float = 0.0  # ... and the video time, in seconds, of each folder's first frame (the official AVA
    # frames, cut from second 900 of each video: 900)
    eval_view: EvalView = EvalView.center  # evaluation: center (the centre square) | full (whole frame, AVA test)


@dataclass
class VisualizeConfig:
    num_images: int = 8  # images drawn by `maskfeat visualize`


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    video: VideoConfig = field(default_factory=VideoConfig)  # the clips of video models (image models ignore it)
    model: ModelConfig = field(default_factory=ModelConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)  # action detection (maskfeat detect)
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
_DETECT = {  # an MViT-S detector on AVA-format data; configs/detect/*.yaml hold the official recipes
    "output_dir": "runs/detect",
    "model": {"name": "mvit_v2_s", "drop_path": 0.1},
    "train": {"epochs": 30, "warmup_epochs": 5, "batch_size": 8, "clip_grad": None, "checkpoint_every": 0},
}  # fmt: skip
COMMAND_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": {"output_dir": "runs/pretrain"},
    "finetune": _FINETUNE,
    "linprobe": _LINPROBE,
    "evaluate": {"output_dir": "runs/evaluate"},
    "visualize": {"output_dir": "runs/visualize", "data": {"num_workers": 0}},
    "detect": _DETECT,
}


# Keys that moved, old -> new. An old key in a file or override is a one-line error naming its new place; the
# saved configs of older runs are read with them moved (:func:`upgrade_saved_config`).
RENAMED = {
    **{f"data.{k}": f"video.{k}" for k in ("num_frames", "frame_stride", "short_side", "num_clips", "num_crops",
                                           "repeated_aug")},
    "data.video_backend": "video.backend",
}  # fmt: skip


def upgrade_saved_config(config: Any) -> dict:
    """A run's saved config (a checkpoint's dict, or a DictConfig) as a plain dict with the keys of older versions
    (:data:`RENAMED`) moved to their current place."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, enum_to_str=True)
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for old, new in RENAMED.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = config.get(old_section)
        if isinstance(section, dict) and old_key in section:
            config.setdefault(new_section, {})[new_key] = section.pop(old_key)
    return config


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
        if key in RENAMED:
            raise ConfigError(f"{source}: '{key}' is now '{RENAMED[key]}'")
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
        cfg = _merge(cfg, _amp_off(layer), source)
    if config_file and not any("output_dir" in layer for _, layer in layers[1:]):
        # one folder per config file by default, so that two configs never share (and resume) one run folder
        cfg.output_dir = os.path.join(cfg.output_dir, os.path.splitext(os.path.basename(config_file))[0])
    validate(cfg, command, check_paths)
    return cfg


def _amp_off(layer: dict) -> dict:
    """``layer`` with ``train.amp: false`` read as ``off`` (YAML 1.1, in files and overrides, reads a bare ``off`` as
    the boolean false)."""
    train = layer.get("train")
    if isinstance(train, dict) and train.get("amp") is False:
        return {**layer, "train": {**train, "amp": Amp.off.value}}
    return layer


def _merge(cfg: DictConfig, layer: dict, source: str) -> DictConfig:
    """``layer`` merged over ``cfg``; a value of the wrong type, or not among a field's choices, is a one-line
    ConfigError naming ``source`` and the key (and the valid values)."""
    try:
        return OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        choices = _choices(key)
        if choices:
            raise ConfigError(f"{source}: {key} must be one of {', '.join(choices)}, got '{e.value}'") from None
        raise ConfigError(f"{source}: invalid value for '{key}': {_first_line(e)}") from None


def _choices(key: str) -> list[str]:
    """The valid values of the Enum field ``key`` (a dotted key of :class:`Config`); empty for any other key."""
    node: Any = Config
    for part in key.split("."):
        hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        if part not in hints:
            return []
        node = hints[part]
    return [m.value for m in node] if isinstance(node, type) and issubclass(node, Enum) else []


@functools.cache
def field_descriptions() -> dict[str, str]:
    """``{dotted key: description}`` for every leaf key of :class:`Config`: the comment after each dataclass field
    in this module, with the comment-only lines right below that continue it, read from the source at run time
    (one place for the documentation: the code). Empty when the source is not available."""
    return describe_fields(Config)


def to_yaml(cfg: DictConfig | ListConfig, descriptions: bool = False) -> str:
    """The config as YAML; with ``descriptions``, each key followed by its description as a ``# ...`` comment
    (still valid YAML: saved to a file, it loads back as the same config)."""
    if not descriptions:
        return OmegaConf.to_yaml(cfg)
    return commented_yaml(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), field_descriptions())
