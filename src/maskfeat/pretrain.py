"""``maskfeat pretrain``: build the MaskFeat model, data and optimizer from the config, then ``runner.fit``.

Data flow: folder -> ImageDataset (seeded per sample) -> MaskCollator (block masks) -> MaskFeat(x, mask)
-> HOG target of x -> masked MSE -> AdamW step -> metrics / checkpoint -> encoder.safetensors.
"""

from __future__ import annotations

import logging
import os

import torch
from omegaconf import DictConfig

from maskfeat import checkpoint as ckpt_io
from maskfeat.config import ConfigError
from maskfeat.data import ImageDataset, pretrain_transform
from maskfeat.data.collate import MaskCollator
from maskfeat.data.video import VideoDataset
from maskfeat.data.video_transforms import VideoTrainTransform
from maskfeat.models.maskfeat import MaskFeat, mean_target_mse, target_patch_size
from maskfeat.models.names import VIDEO_ARCHITECTURES
from maskfeat.models.registry import create_encoder, video_encoder_args
from maskfeat.models.vit import encoder_model_args
from maskfeat.optim import build_optimizer, build_scheduler, scaled_lr
from maskfeat.runner import Job, amp_dtype, data_folder, fit, make_loader, setup_run, shard_model, wrap_for_training
from maskfeat.targets import build_target
from maskfeat.tracking import count_str

log = logging.getLogger("maskfeat")


def is_video(cfg: DictConfig) -> bool:
    return cfg.model.name in VIDEO_ARCHITECTURES


def video_model_args(cfg: DictConfig, pretrain: bool) -> dict:
    """The JSON-able arguments of the video encoder of ``model.name`` (MViT: pretrain = stride-16 output)."""
    m = cfg.model
    sizes = {k: v for k, v in (("embed_dim", m.embed_dim), ("depth", m.depth), ("num_heads", m.num_heads)) if v}
    if m.name.startswith("mvit"):
        sizes["pretrain"] = pretrain
    return video_encoder_args(m.name, img_size=cfg.data.image_size, num_frames=cfg.data.num_frames, **sizes)


def build_model(cfg: DictConfig) -> tuple[torch.nn.Module, dict]:
    """The MaskFeat model (image or video, by ``model.name``) and the encoder's ``{"architecture", "model_args"}``."""
    m, t = cfg.model, cfg.target
    if is_video(cfg):
        args = video_model_args(cfg, pretrain=True)
    else:
        # Pooled as maskfeat probes it: the average of the final-norm patch tokens. fc_norm=False keeps the final
        # norm where it is (same weights, same state_dict keys as timm's default token pooling).
        args = encoder_model_args(cfg.data.image_size, m.patch_size, m.embed_dim, m.depth, m.num_heads,
                                  global_pool="avg", fc_norm=False)  # fmt: skip
    encoder = create_encoder(m.name, args, num_classes=0, drop_path=m.drop_path)
    frames, patch, _ = target_patch_size(encoder)  # the target's patches are the encoder's output tokens
    target = build_target(t.name, patch, in_chans=3, nbins=t.nbins, cell_size=t.cell_size, temporal_patch=frames,
                          frame_index=t.frame_index, gaussian_window=t.gaussian_window,
                          norm_pix=t.norm_pix)  # fmt: skip
    model = MaskFeat(encoder, target)
    if m.grad_checkpointing:
        encoder.set_grad_checkpointing(True)
    return model, {"architecture": m.name, "model_args": args}


def token_grid(cfg: DictConfig, model: torch.nn.Module) -> tuple[int, ...]:
    """The grid the masks are drawn on: the model's output grid, (T/2, H/16, W/16) for video, (h, w) for images."""
    grid = tuple(model.output_grid)
    return grid if is_video(cfg) else grid[1:]


def mask_type(cfg: DictConfig, video: bool) -> str:
    """``mask.type``, with auto resolved: block masks for images, cube masks for video (as the paper)."""
    return cfg.mask.type if cfg.mask.type != "auto" else ("cube" if video else "block")


def mask_collate(cfg: DictConfig, grid: tuple[int, ...]) -> MaskCollator:
    """The collate function drawing ``mask.type`` masks (auto: block for images, cube for video) on ``grid``,
    on units of ``mask.unit`` cells (auto: the official 2-frame x 32x32-pixel unit for video)."""
    video = len(grid) == 3
    kind = mask_type(cfg, video)
    unit = tuple(cfg.mask.unit) if cfg.mask.unit is not None else ((1, 2, 2) if video else (1, 1))
    if any(g % u for g, u in zip(grid, unit)):
        unit = (1,) * len(grid)  # a grid too small for the unit: mask single tokens
    return MaskCollator(kind, grid, cfg.mask.ratio, unit=unit)


def pretrain_dataset(cfg: DictConfig, folder: str):
    d = cfg.data
    if is_video(cfg):
        transform = VideoTrainTransform(crop_size=d.image_size, short_side=tuple(d.short_side),
                                        scale=tuple(d.crop_scale), hflip=d.hflip)  # fmt: skip
        return VideoDataset(
            folder, num_frames=d.num_frames, stride=d.frame_stride, transform=transform, backend=d.video_backend
        )
    return ImageDataset(folder, pretrain_transform(d.image_size, scale=tuple(d.crop_scale), hflip=d.hflip))


def masked_feature_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The MaskFeat loss of a collated batch: masked MSE between predicted and target features.

    Returns ``(loss, {"baseline": b})``: ``b`` (no gradient) is the masked MSE of predicting the mean target of
    the batch's masked tokens for every one of them, the loss of a model that learned nothing from the context.
    """
    masks = batch["masks"]
    loss, _, target = model(batch["images"], masks)
    return loss, {"baseline": mean_target_mse(target, masks.reshape(masks.shape[0], -1))}


def steps_per_epoch(num_items: int, source: str, batch_size: int, accum_steps: int, world_size: int,
                    noun: str = "images") -> int:  # fmt: skip
    steps = num_items // world_size // batch_size // accum_steps
    if steps == 0:
        raise ConfigError(
            f"{num_items} {noun} in {source} are fewer than one optimizer step needs (train.batch_size="
            f"{batch_size} x train.accum_steps={accum_steps} x {world_size} processes)"
        )
    return steps


def run_pretrain(cfg: DictConfig) -> dict:
    """Pre-train; returns ``fit``'s summary."""
    device, rank, world_size = setup_run(cfg)
    tr = cfg.train
    folder = data_folder(cfg)
    dataset = pretrain_dataset(cfg, folder)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model, encoder_meta = build_model(cfg)
    encoder_meta["pretrained_cfg"] = ckpt_io.make_pretrained_cfg(cfg)  # the preprocessing, for timm
    grid = token_grid(cfg, model)
    loader, sampler = make_loader(dataset, mask_collate(cfg, grid), tr.batch_size, cfg.data.num_workers, cfg.seed,
                                  device, train=True, rank=rank, world_size=world_size)  # fmt: skip
    spe = steps_per_epoch(len(dataset), folder, tr.batch_size, tr.accum_steps, world_size,
                          "videos" if is_video(cfg) else "images")  # fmt: skip
    total_steps = tr.epochs * spe
    total_batch = tr.batch_size * tr.accum_steps * world_size
    cfg.train.lr = scaled_lr(tr.lr, tr.blr, total_batch)

    if cfg.model.checkpoint:
        _load_initial_weights(model, cfg.model.checkpoint, cfg.model.allow_pickle)
    model.to(device)
    sharded = shard_model(model, device, world_size, tr.strategy, amp_dtype(tr.amp, device))
    optimizer = build_optimizer(model, cfg.train.lr, tr.weight_decay, tuple(tr.betas))
    scheduler = build_scheduler(optimizer, total_steps, round(tr.warmup_epochs * spe), tr.min_lr, tr.warmup_lr)
    torch.manual_seed(cfg.seed + rank)  # per-rank stream for drop path (restored from the checkpoint on resume)

    out = cfg.output_dir

    timm_note = "" if is_video(cfg) else " (timm)"

    def finish(state: dict) -> None:
        ckpt_io.write_encoder(out, ckpt_io.encoder_state_dict(state), **encoder_meta)
        log.info(
            f"done. Outputs in {out}: config.yaml, metrics.jsonl, {ckpt_io.LAST}, encoder.safetensors + "
            f"encoder.json{timm_note}, tb/ (tensorboard --logdir {os.path.join(out, 'tb')})"
        )

    job = Job(model=model, loss_fn=masked_feature_loss, optimizer=optimizer, scheduler=scheduler, loader=loader,
              sampler=sampler, steps_per_epoch=spe, total_steps=total_steps, extra={"encoder": encoder_meta},
              finish=finish, train_model=wrap_for_training(model, device, world_size, tr.compile, sharded),
              sharded=sharded)  # fmt: skip
    n_params = sum(p.numel() for p in model.encoder.parameters())
    summary = (
        f"pretrain {cfg.model.name} ({count_str(n_params)} params, {'x'.join(map(str, grid))} tokens, "
        f"target {cfg.target.name} {model.target.dim}-d) on {len(dataset)} {'videos' if is_video(cfg) else 'images'}"
        f" from {folder}; "
        f"{world_size} process(es) on {device}, batch {total_batch}, lr {cfg.train.lr:.3g}"
    )
    return fit(cfg, job, device, summary)


def _load_initial_weights(model: MaskFeat, path: str, allow_pickle: bool = False) -> None:
    """Start from existing weights: a checkpoint of ours (full model) or an encoder.safetensors."""
    if path.endswith(".safetensors"):
        state, _ = ckpt_io.read_encoder(path, allow_pickle)
        model.encoder.load_state_dict(state, strict=True)
    else:
        model.load_state_dict(ckpt_io.load_checkpoint(path, allow_pickle)["model"], strict=True)
    log.info(f"initialised from {path}")
