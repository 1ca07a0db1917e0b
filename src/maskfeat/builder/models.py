"""Models from a config: the encoder's arguments, the MaskFeat model, the classifier and its pre-trained weights,
the optimizer and its schedule."""

from __future__ import annotations

import logging

from omegaconf import DictConfig
from timm.layers import trunc_normal_
from torch import nn

from maskfeat import checkpoint as ckpt_io
from maskfeat.errors import ConfigError
from maskfeat.models.maskfeat import MaskFeat, target_patch_size
from maskfeat.models.mvit import MViTEncoder, load_pretrained_mvit
from maskfeat.models.registry import create_encoder, video_encoder_args
from maskfeat.models.resample import resample_positions
from maskfeat.models.vit import encoder_model_args
from maskfeat.optim import build_optimizer, build_scheduler
from maskfeat.targets import build_target

from .run import is_video, make_pretrained_cfg

log = logging.getLogger("maskfeat")


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
        elif m.patch_size:  # video ViT: 2 x patch_size x patch_size tubelets
            sizes["tubelet"] = (2, m.patch_size, m.patch_size)
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


def fit_positions(encoder: nn.Module, state: dict) -> dict:
    """``state`` with its position parameters resampled to this run's image or clip size (see
    :func:`maskfeat.models.resample.resample_positions`)."""
    state, resized = resample_positions(encoder, state)
    if resized:
        log.info(f"resampled to this run's input size: {', '.join(resized)}")
    return state


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
    state = fit_positions(model, state)
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
