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
from maskfeat.masking import MaskCollator
from maskfeat.models import MaskFeat, create_encoder, encoder_model_args, encoder_patch_size
from maskfeat.optim import build_optimizer, build_scheduler, scaled_lr
from maskfeat.runner import Job, data_folder, fit, make_loader, setup_run, wrap_for_training
from maskfeat.targets import build_target

log = logging.getLogger("maskfeat")


def build_model(cfg: DictConfig) -> tuple[MaskFeat, dict]:
    """The MaskFeat model and the encoder's ``{"architecture", "model_args"}``."""
    m, t = cfg.model, cfg.target
    args = encoder_model_args(cfg.data.image_size, m.patch_size, m.embed_dim, m.depth, m.num_heads)
    encoder = create_encoder(m.name, args, num_classes=0, drop_path=m.drop_path)
    if m.grad_checkpointing:
        encoder.set_grad_checkpointing(True)
    patch = encoder_patch_size(m.name, m.patch_size)
    target = build_target(t.name, patch, in_chans=3, nbins=t.nbins, cell_size=t.cell_size,
                          gaussian_window=t.gaussian_window, norm_pix=t.norm_pix)  # fmt: skip
    return MaskFeat(encoder, target), {"architecture": m.name, "model_args": args}


def masked_feature_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The MaskFeat loss of a collated batch: masked MSE between predicted and target features."""
    return model(batch["images"], batch["masks"])[0]


def steps_per_epoch(num_items: int, source: str, batch_size: int, accum_steps: int, world_size: int) -> int:
    steps = num_items // world_size // batch_size // accum_steps
    if steps == 0:
        raise ConfigError(
            f"{num_items} images in {source} are fewer than one optimizer step needs (train.batch_size="
            f"{batch_size} x train.accum_steps={accum_steps} x {world_size} processes)"
        )
    return steps


def run_pretrain(cfg: DictConfig) -> dict:
    """Pre-train; returns ``fit``'s summary."""
    device, rank, world_size = setup_run(cfg)
    tr = cfg.train
    folder = data_folder(cfg)
    dataset = ImageDataset(folder, pretrain_transform(cfg.data.image_size, scale=tuple(cfg.data.crop_scale),
                                                      hflip=cfg.data.hflip))  # fmt: skip
    patch = encoder_patch_size(cfg.model.name, cfg.model.patch_size)
    grid = (cfg.data.image_size // patch, cfg.data.image_size // patch)
    collate = MaskCollator(cfg.mask.type, grid, cfg.mask.ratio)
    loader, sampler = make_loader(dataset, collate, tr.batch_size, cfg.data.num_workers, cfg.seed, device,
                                  train=True, rank=rank, world_size=world_size)  # fmt: skip
    spe = steps_per_epoch(len(dataset), folder, tr.batch_size, tr.accum_steps, world_size)
    total_steps = tr.epochs * spe
    total_batch = tr.batch_size * tr.accum_steps * world_size
    cfg.train.lr = scaled_lr(tr.lr, tr.blr, total_batch)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model, encoder_meta = build_model(cfg)
    if cfg.model.checkpoint:
        _load_initial_weights(model, cfg.model.checkpoint, cfg.model.allow_pickle)
    model.to(device)
    optimizer = build_optimizer(model, cfg.train.lr, tr.weight_decay, tuple(tr.betas))
    scheduler = build_scheduler(optimizer, total_steps, round(tr.warmup_epochs * spe), tr.min_lr, tr.warmup_lr)
    torch.manual_seed(cfg.seed + rank)  # per-rank stream for drop path (restored from the checkpoint on resume)

    out = cfg.output_dir

    def finish() -> None:
        ckpt_io.write_encoder(out, ckpt_io.encoder_state_dict(model.state_dict()), **encoder_meta)
        log.info(
            f"done. Outputs in {out}: config.yaml, metrics.jsonl, {ckpt_io.LAST}, encoder.safetensors + "
            f"encoder.json (timm), tb/ (tensorboard --logdir {os.path.join(out, 'tb')})"
        )

    job = Job(model=model, loss_fn=masked_feature_loss, optimizer=optimizer, scheduler=scheduler, loader=loader,
              sampler=sampler, steps_per_epoch=spe, total_steps=total_steps, extra={"encoder": encoder_meta},
              finish=finish, train_model=wrap_for_training(model, device, world_size, tr.compile))  # fmt: skip
    n_params = sum(p.numel() for p in model.encoder.parameters())
    summary = (
        f"pretrain {cfg.model.name} ({n_params / 1e6:.1f}M params, {grid[0]}x{grid[1]} patches of {patch}px, "
        f"target {cfg.target.name} {model.target.dim}-d) on {len(dataset)} images from {folder}; "
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
