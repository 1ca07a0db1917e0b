"""From a config to what a command runs: the encoder's arguments, the MaskFeat model, the classifier, the data
sets with their transforms, the mask collate, the optimizer and its schedule, and the run's resolved settings.

This is the one place where images and video are told apart. The models see an image as a clip of one frame, so
past this module the two differ only in the data: which folder is read, how it is decoded and augmented, and
the grid the masks are drawn on.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig
from timm.data import create_transform
from timm.layers import resample_abs_pos_embed, trunc_normal_
from torch import nn

from maskfeat import checkpoint as ckpt_io
from maskfeat.data import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, eval_transform, pretrain_transform
from maskfeat.data.collate import MaskCollator
from maskfeat.data.loader import make_loader
from maskfeat.data.sample import sample_image_folder, sample_labeled_folder, sample_video_folder
from maskfeat.data.sampler import label_subset
from maskfeat.data.video import VideoDataset
from maskfeat.data.video_transforms import KINETICS_MEAN, KINETICS_STD, VideoTrainTransform
from maskfeat.errors import ConfigError
from maskfeat.models.maskfeat import MaskFeat, target_patch_size
from maskfeat.models.mvit import MViTEncoder, load_pretrained_mvit
from maskfeat.models.names import IMAGE_ARCHITECTURES, is_video_architecture
from maskfeat.models.registry import create_encoder, video_encoder_args
from maskfeat.models.vit import encoder_model_args
from maskfeat.optim import build_optimizer, build_scheduler, scaled_lr
from maskfeat.targets import build_target

log = logging.getLogger("maskfeat")

SAMPLE_IMAGE_SIZE = 160  # side of the embedded sample images (crops of scikit-image's bundled photos)
CLASSIFIERS = ("finetune", "linprobe")


def is_video(cfg: DictConfig | dict) -> bool:
    """Whether the run's ``model.name`` is a video encoder (everything else follows from it)."""
    return is_video_architecture(cfg["model"]["name"])


class SampleKind(NamedTuple):
    """How a run names what it trains on, for its messages."""

    noun: str  # the data set's items: images | videos
    unit: str  # one training sample, for the console's rate: img | clips
    timm: bool  # the encoder is a timm model (its weights load into plain timm)


def sample_kind(cfg: DictConfig) -> SampleKind:
    return SampleKind("videos", "clips", False) if is_video(cfg) else SampleKind("images", "img", True)


# --- the run's settings ------------------------------------------------------------------------------------------


def resolve(cfg: DictConfig, world_size: int, samples_per_step: int) -> int:
    """Fill in what the config leaves to the run, before ``config.yaml`` records it: ``world_size`` and the peak
    learning rate (``train.lr``, from ``train.blr`` scaled by the total batch when null). ``samples_per_step`` is
    what one process feeds the model per optimizer step. Returns the total batch."""
    total_batch = samples_per_step * world_size
    cfg.world_size = world_size
    cfg.train.lr = scaled_lr(cfg.train.lr, cfg.train.blr, total_batch)
    return total_batch


def make_pretrained_cfg(config: Any, num_classes: int = 0, label_names: list[str] | None = None) -> dict[str, Any]:
    """How the encoder was trained to be used, in timm's ``pretrained_cfg`` keys, from a run's config (a
    ``DictConfig`` or the plain dict a checkpoint saves; older checkpoints' keys are read too).

    Images: ``input_size`` ``[3, H, W]``, ImageNet ``mean``/``std`` (every image transform normalises with
    them), ``interpolation`` bicubic and ``crop_pct`` = ``data.crop_pct`` (evaluation resizes the short side to
    ``H / crop_pct``, then crops the centre), so that ``timm.data.resolve_data_config({}, model=model)`` of a
    model built with ``timm.create_model(..., pretrained_cfg_overlay=pretrained_cfg)`` gives maskfeat's own
    evaluation transform. Video encoders (not timm models) have the Kinetics ``mean``/``std`` of SlowFast (0.45,
    0.225: clips are normalised so) and add ``num_frames`` and ``frame_stride`` (clips of
    ``num_frames`` frames, every ``frame_stride``-th); their frames are resized bilinearly, short side to ``H``,
    and centre-cropped, hence ``crop_pct`` 1. ``num_classes`` (0: no classifier) and, for a classifier,
    ``label_names`` (its class folder names, in output order) describe the head.
    """
    from maskfeat.config import upgrade_saved_config

    config = upgrade_saved_config(config)
    data = config["data"]
    size = int(data["image_size"])
    cfg: dict[str, Any] = {"input_size": [3, size, size]}
    if is_video(config):
        video = config["video"]
        cfg.update(mean=list(KINETICS_MEAN), std=list(KINETICS_STD), interpolation="bilinear", crop_pct=1.0,
                   num_frames=int(video["num_frames"]), frame_stride=int(video["frame_stride"]))  # fmt: skip
    else:
        cfg.update(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), interpolation="bicubic",
                   crop_pct=float(data["crop_pct"]))  # fmt: skip
    cfg["num_classes"] = int(num_classes)
    if label_names:
        cfg["label_names"] = [str(n) for n in label_names]
    return cfg


def complete_encoder_meta(ckpt: dict[str, Any]) -> dict:
    """A checkpoint's ``encoder`` entry, completed as runs write it today for checkpoints of older versions:
    ``pretrained_cfg`` from the run's saved config, and image ViT pre-training encoders pooled as maskfeat
    probes them (``global_pool="avg"`` over the final-norm patch tokens, ``fc_norm=False``: same weights)."""
    meta = dict(ckpt["encoder"])
    args = dict(meta.get("model_args", {}))
    config = ckpt.get("config")
    if "pretrained_cfg" not in meta and isinstance(config, dict):
        try:
            meta["pretrained_cfg"] = make_pretrained_cfg(config, args.get("num_classes", 0), ckpt.get("classes"))
        except (KeyError, TypeError, ValueError):  # a config without these keys: leave timm's defaults
            pass
    if meta.get("architecture") in IMAGE_ARCHITECTURES and "global_pool" not in args and "num_classes" not in args:
        meta["model_args"] = {**args, "global_pool": "avg", "fc_norm": False}
    return meta


# --- models ------------------------------------------------------------------------------------------------------


def encoder_args(cfg: DictConfig, use: str) -> dict:
    """The JSON-able architecture arguments of ``model.name`` for ``use`` (pretrain, finetune, linprobe or detect).

    Image ViTs pool the average of the patch tokens: after a new norm (``fc_norm``) when fine-tuned (the
    MaskFeat/MAE recipe), after the pre-trained final norm otherwise (``fc_norm=False`` keeps the final norm where
    it is: same weights and state_dict keys as timm's default). MViT pre-trains with a stride-16 output and
    classifies from the mean of its tokens, normalised after pooling (fine-tuning, the official head) or before
    (linear probing, and detect: its box head pools the final-norm tokens, as the official MViT detector).
    """
    m = cfg.model
    if is_video(cfg):
        sizes = {k: v for k, v in (("embed_dim", m.embed_dim), ("depth", m.depth), ("num_heads", m.num_heads)) if v}
        if m.name.startswith("mvit"):  # classify as the official MaskFeat MViT: mean of the tokens, then the norm
            sizes["pretrain"] = use == "pretrain"
            if use != "pretrain":
                sizes.update(global_pool="avg", fc_norm=use == "finetune")
        return video_encoder_args(m.name, img_size=cfg.data.image_size, num_frames=cfg.video.num_frames, **sizes)
    args = encoder_model_args(cfg.data.image_size, m.patch_size, m.embed_dim, m.depth, m.num_heads, global_pool="avg")
    if use != "finetune":
        args["fc_norm"] = False
    return args


def build_pretrain_model(cfg: DictConfig) -> tuple[MaskFeat, dict]:
    """The MaskFeat model of the config and its encoder's ``{"architecture", "model_args", "pretrained_cfg"}``.
    The target's patches are the encoder's output tokens (its geometry comes from the encoder)."""
    m, t = cfg.model, cfg.target
    args = encoder_args(cfg, "pretrain")
    encoder = create_encoder(m.name, args, num_classes=0, drop_path=m.drop_path)
    frames, patch, _ = target_patch_size(encoder)
    target = build_target(t.name, patch, in_chans=3, nbins=t.nbins, cell_size=t.cell_size, temporal_patch=frames,
                          frame_index=t.frame_index, gaussian_window=t.gaussian_window,
                          norm_pix=t.norm_pix)  # fmt: skip
    model = MaskFeat(encoder, target)
    if m.grad_checkpointing:
        encoder.set_grad_checkpointing(True)
    return model, {"architecture": m.name, "model_args": args, "pretrained_cfg": make_pretrained_cfg(cfg)}


def build_classifier(meta: dict, kind: str, drop_path: float = 0.0) -> nn.Module:
    """A classifier from ``{"architecture", "model_args"}``: the encoder with its own head (finetune) or a frozen
    encoder with a BatchNorm + linear head (linprobe). ``model_args`` holds ``num_classes``."""
    args = dict(meta["model_args"])
    num_classes = args.pop("num_classes")
    if kind == "finetune":
        return create_encoder(meta["architecture"], args, num_classes=num_classes, drop_path=drop_path)
    model = create_encoder(meta["architecture"], args, num_classes=0)
    dim = model.num_features
    model.head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    model.num_classes = num_classes
    return model


def new_classifier(cfg: DictConfig, kind: str, classes: list[str]) -> tuple[nn.Module, dict]:
    """The classifier a finetune / linprobe run trains: a small-initialised head, the pre-trained encoder of
    ``model.checkpoint`` when set (else random weights), frozen but for the head when linear probing. Returns the
    model and its encoder.json entry."""
    m = cfg.model
    meta = {"architecture": m.name, "model_args": {**encoder_args(cfg, kind), "num_classes": len(classes)},
            "pretrained_cfg": make_pretrained_cfg(cfg, len(classes), classes)}  # fmt: skip
    model = build_classifier(meta, kind, drop_path=m.drop_path if kind == "finetune" else 0.0)
    if m.grad_checkpointing and kind == "finetune":
        model.set_grad_checkpointing(True)
    head = [layer for layer in model.head.modules() if isinstance(layer, nn.Linear)][-1]  # the classifier layer
    trunc_normal_(head.weight, std=m.head_init_std)
    nn.init.zeros_(head.bias)
    if m.checkpoint:
        load_pretrained(model, m.checkpoint, m.allow_pickle)
    else:
        log.warning(f"model.checkpoint not set: {kind} starts from random weights (the from-scratch baseline)")
    if kind == "linprobe":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("head.")
    return model, meta


def load_pretrained(model: nn.Module, path: str, allow_pickle: bool = False) -> None:
    """Load encoder weights into a classifier: the head (and the pre-training final norm, when the classifier
    pools with a new ``fc_norm``) are left out; position embeddings are resampled to the new grid."""
    state, meta = ckpt_io.read_encoder(path, allow_pickle)
    if isinstance(model, MViTEncoder):  # the last stage's query pooling comes back: MViT's own loader
        report = load_pretrained_mvit(model, state)
        log.info(f"loaded pre-trained MViT from {path} (new: {', '.join(report.missing_keys) or 'none'})")
        return
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm."))}
    if isinstance(getattr(model, "norm", None), nn.Identity):
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
    if "pos_embed" in state and state["pos_embed"].shape != model.pos_embed.shape and state["pos_embed"].dim() == 3:
        old = state["pos_embed"].shape
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"], list(model.patch_embed.grid_size), num_prefix_tokens=model.num_prefix_tokens
        )
        log.info(f"resampled position embeddings {tuple(old)} -> {tuple(model.pos_embed.shape)}")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        arch = meta["architecture"] if meta else "?"
        raise ConfigError(f"{path} ({arch}) does not fit model.name/sizes of this run: "
                          f"{str(e).splitlines()[1].strip()}") from None  # fmt: skip
    bad = [k for k in missing if not k.startswith(("head.", "fc_norm.", "norm."))] + list(unexpected)
    if bad:
        raise ConfigError(f"{path} does not match the encoder: missing or unexpected weights {bad[:6]}")
    log.info(f"loaded pre-trained encoder from {path} (new: {', '.join(sorted({k.split('.')[0] for k in missing}))})")


def build_optimizer_and_schedule(cfg: DictConfig, model: nn.Module, kind: str, spe: int) -> tuple:
    """AdamW (or ``train.optimizer``) and the per-step warm-up + cosine schedule of ``train.epochs`` x ``spe``
    steps. Fine-tuning adds layer-wise lr decay; linear probing optimizes the head only."""
    tr = cfg.train
    if kind == "linprobe":
        optimizer = build_optimizer(model.head, tr.lr, tr.weight_decay, tuple(tr.betas), opt=tr.optimizer)
    else:
        decay = tr.layer_decay if kind == "finetune" else None
        optimizer = build_optimizer(model, tr.lr, tr.weight_decay, tuple(tr.betas), layer_decay=decay,
                                    opt=tr.optimizer)  # fmt: skip
    total = tr.epochs * spe
    scheduler = build_scheduler(optimizer, total, round(tr.warmup_epochs * spe), tr.min_lr, tr.warmup_lr)
    return optimizer, scheduler


# --- masks -------------------------------------------------------------------------------------------------------


def token_grid(cfg: DictConfig, model: nn.Module) -> tuple[int, ...]:
    """The grid the masks are drawn on: the model's output grid, (T/2, H/16, W/16) for video, (h, w) for images."""
    grid = tuple(model.output_grid)
    return grid if is_video(cfg) else grid[1:]


def mask_type(cfg: DictConfig) -> str:
    """``mask.type``, with auto resolved: block masks for images, cube masks for video (as the paper)."""
    return cfg.mask.type if cfg.mask.type != "auto" else ("cube" if is_video(cfg) else "block")


def mask_collate(cfg: DictConfig, grid: tuple[int, ...]) -> MaskCollator:
    """The collate function drawing ``mask.type`` masks on ``grid``, on units of ``mask.unit`` cells (auto: the
    official 2-frame x 32x32-pixel unit for video, single tokens for images)."""
    unit = tuple(cfg.mask.unit) if cfg.mask.unit is not None else ((1, 2, 2) if is_video(cfg) else (1, 1))
    if any(g % u for g, u in zip(grid, unit)):
        unit = (1,) * len(grid)  # a grid too small for the unit: mask single tokens
    return MaskCollator(mask_type(cfg), grid, cfg.mask.ratio, unit=unit)


def label_collate() -> MaskCollator:
    """The collate function of classification batches (no masks)."""
    return MaskCollator(None, (1, 1), 0.5)


# --- data --------------------------------------------------------------------------------------------------------


def data_folder(cfg: DictConfig) -> str:
    """``data.path``, or the embedded sample images (or clips, for a video model) when it is null."""
    if cfg.data.path:
        return cfg.data.path
    if is_video(cfg):
        path = sample_video_folder(split="train")
        log.info(f"data.path not set: using the embedded sample clips (photos under camera motion) in {path}")
        return path
    path = sample_image_folder(num_images=cfg.data.sample_images, size=SAMPLE_IMAGE_SIZE, seed=0)
    log.info(f"data.path not set: using {cfg.data.sample_images} embedded sample images in {path}")
    return path


def labeled_folders(cfg: DictConfig, need_train: bool = True) -> tuple[str | None, str | None]:
    """(train, val) folders: ``data.path`` / ``data.val_path``, or the embedded labeled sample images (crops of
    scikit-image's photos, one class per photo) or clips when both are null."""
    if cfg.data.path is None and cfg.data.val_path is None:
        make = sample_video_folder if is_video(cfg) else partial(sample_labeled_folder, size=SAMPLE_IMAGE_SIZE)
        train = make(split="train") if need_train else None
        val = make(split="val")
        log.info(f"data.path and data.val_path not set: using the embedded labeled samples ({val})")
        return train, val
    if need_train and cfg.data.path is None:
        raise ConfigError("data.path=... is needed: a folder of class sub-folders to train on")
    return cfg.data.path, cfg.data.val_path


def _video_dataset(cfg: DictConfig, folder: str, **kwargs) -> VideoDataset:
    v = cfg.video
    return VideoDataset(folder, num_frames=v.num_frames, stride=v.frame_stride, backend=v.backend, **kwargs)


def _video_train_transform(cfg: DictConfig, augment: bool) -> VideoTrainTransform:
    d = cfg.data
    return VideoTrainTransform(crop_size=d.image_size, short_side=tuple(cfg.video.short_side),
                               scale=tuple(d.crop_scale), hflip=d.hflip,
                               auto_augment=d.auto_augment if augment else None,
                               reprob=d.reprob if augment else 0.0)  # fmt: skip


def pretrain_dataset(cfg: DictConfig, folder: str) -> ImageDataset | VideoDataset:
    """Random resized crops and flips (video: with a jittered short side), no other augmentation."""
    d = cfg.data
    if is_video(cfg):
        return _video_dataset(cfg, folder, transform=_video_train_transform(cfg, augment=False))
    return ImageDataset(folder, pretrain_transform(d.image_size, scale=tuple(d.crop_scale), hflip=d.hflip))


def _image_train_transform(cfg: DictConfig, augment: bool):
    d = cfg.data
    return create_transform(d.image_size, is_training=True, scale=tuple(d.crop_scale), hflip=d.hflip,
                            color_jitter=0.4 if augment else None, auto_augment=d.auto_augment if augment else None,
                            interpolation="bicubic", re_prob=d.reprob if augment else 0.0, re_mode="pixel",
                            mean=IMAGENET_MEAN, std=IMAGENET_STD)  # fmt: skip


def train_dataset(cfg: DictConfig, folder: str, kind: str) -> ImageDataset | VideoDataset:
    """The labeled training set of a finetune (augmented: RandAugment, random erasing, ...) or linprobe (crops and
    flips only) run; ``data.label_fraction`` < 1 keeps a class-balanced subset."""
    augment = kind == "finetune"
    if is_video(cfg):
        transform = _video_train_transform(cfg, augment)
        make = partial(_video_dataset, cfg, repeats=cfg.video.repeated_aug)
    else:
        transform, make = _image_train_transform(cfg, augment), ImageDataset
    full = make(folder, transform=transform)
    if not full.classes:
        raise ConfigError(f"data.path={folder} has no class sub-folders: classification needs labeled data")
    fraction = cfg.data.label_fraction
    if fraction >= 1:
        return full
    keep = label_subset(full.labels, fraction, cfg.seed)
    subset = make(folder, transform=transform, files=[full.files[i] for i in keep],
                  labels=[full.labels[i] for i in keep], classes=full.classes)  # fmt: skip
    log.info(f"data.label_fraction={fraction}: training on {len(subset)} of {len(full)} labeled samples")
    return subset


def val_dataset(cfg: DictConfig, folder: str, image_size: int, video: bool) -> ImageDataset | VideoDataset:
    """Images: resize + centre crop. Video: ``video.num_clips`` x ``video.num_crops`` views per video."""
    if video:
        v = cfg.video
        return _video_dataset(cfg, folder, mode="eval", num_clips=v.num_clips, num_crops=v.num_crops,
                              crop_size=image_size)  # fmt: skip
    return ImageDataset(folder, eval_transform(image_size, crop_pct=cfg.data.crop_pct))


def val_loader(cfg: DictConfig, folder: str, classes: list[str], device: torch.device, image_size: int,
               architecture: str) -> torch.utils.data.DataLoader:  # fmt: skip
    """The evaluation loader over ``folder`` for an ``architecture`` classifier of input size ``image_size``; the
    folder's class sub-folders must be ``classes`` (when given)."""
    dataset = val_dataset(cfg, folder, image_size, is_video_architecture(architecture))
    if classes and dataset.classes != classes:
        raise ConfigError(
            f"data.val_path={folder} has classes {dataset.classes[:5]}... but training has {classes[:5]}...: "
            "they must be the same sub-folder names"
        )
    loader, _ = make_loader(dataset, label_collate(), cfg.train.batch_size, cfg.data.num_workers, cfg.seed,
                            device, train=False)  # fmt: skip
    return loader


def check_drawable(run_cfg: DictConfig, path: str) -> None:
    """``visualize`` draws image models: stop with one line for the checkpoint ``path`` of a video model."""
    if is_video(run_cfg):
        raise ConfigError(f"visualize draws image models; {path} is a video model ({run_cfg.model.name})")


def view_dataset(run_cfg: DictConfig, folder: str) -> ImageDataset:
    """The images ``visualize`` draws for a run of ``run_cfg``: resized and centre-cropped to its
    ``data.image_size``, nothing cut off."""
    return ImageDataset(folder, eval_transform(run_cfg.data.image_size, crop_pct=1.0))


def image_mask_type(cfg: DictConfig) -> str:
    """``mask.type`` for an image model (auto: block), whatever ``model.name`` says."""
    return cfg.mask.type if cfg.mask.type != "auto" else "block"
