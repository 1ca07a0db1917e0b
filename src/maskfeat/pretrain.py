"""``maskfeat pretrain``: the MaskFeat model, data and optimizer from :mod:`maskfeat.builder`, then ``runner.fit``.

Data flow: folder -> data set (seeded per sample) -> MaskCollator (block or cube masks) -> MaskFeat(x, mask)
-> target features of x (HOG) -> masked MSE -> AdamW step -> metrics / checkpoint -> encoder.safetensors.
"""

from __future__ import annotations

import logging
import os

import torch
from omegaconf import DictConfig, OmegaConf

from maskfeat import builder, weight_files
from maskfeat import checkpoint as ckpt_io
from maskfeat.data.loader import make_loader
from maskfeat.distributed import setup_run
from maskfeat.engine import Job
from maskfeat.errors import ConfigError
from maskfeat.models.maskfeat import MaskFeat, mean_target_mse
from maskfeat.runner import describe_run, fit, place, steps_per_epoch
from maskfeat.tracking import count_str

log = logging.getLogger("maskfeat")


def masked_feature_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The MaskFeat loss of a collated batch: masked MSE between predicted and target features.

    Returns ``(loss, {"baseline": b})``: ``b`` (no gradient) is the masked MSE of predicting the mean target of
    the batch's masked tokens for every one of them, the loss of a model that learned nothing from the context.
    """
    masks = batch["masks"]
    loss, _, target = model(batch["images"], masks)
    return loss, {"baseline": mean_target_mse(target, masks.reshape(masks.shape[0], -1))}


def run_pretrain(cfg: DictConfig) -> dict:
    """Pre-train; returns ``fit``'s summary."""
    device, rank, world_size = setup_run(cfg)
    tr = cfg.train
    folder = builder.data_folder(cfg)
    total_batch = builder.resolve(cfg, world_size, tr.batch_size * tr.accum_steps, folder)
    dataset = builder.pretrain_dataset(cfg, folder)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model, encoder_meta = builder.build_pretrain_model(cfg)
    grid = builder.token_grid(cfg, model)
    loader, sampler = make_loader(dataset, builder.mask_collate(cfg, grid), tr.batch_size, cfg.data.num_workers,
                                  cfg.seed, device, train=True, rank=rank, world_size=world_size,
                                  epoch_size=tr.epoch_size)  # fmt: skip
    kind = builder.sample_kind(cfg)
    spe = steps_per_epoch(tr.epoch_size or len(dataset), folder, tr.batch_size, tr.accum_steps, world_size, kind.noun)
    if cfg.model.checkpoint:
        _load_initial_weights(model, cfg, encoder_meta["architecture"])
    optimizer, scheduler, train_model, sharded = place(cfg, model, "pretrain", spe, device, rank, world_size)
    job = Job(model=model, loss_fn=masked_feature_loss, optimizer=optimizer, scheduler=scheduler, loader=loader,
              sampler=sampler, steps_per_epoch=spe, total_steps=tr.epochs * spe, extra={"encoder": encoder_meta},
              train_model=train_model, sharded=sharded, sample=kind.unit)  # fmt: skip
    n_params = count_str(sum(p.numel() for p in model.encoder.parameters()))
    what = (f"pretrain {cfg.model.name} ({n_params} params, {'x'.join(map(str, grid))} tokens, target "
            f"{cfg.target.name} {model.target.dim}-d)")  # fmt: skip
    summary = describe_run(cfg, what, len(dataset), kind.noun, folder, device, total_batch)
    result, state = fit(cfg, job, device, summary)
    if state is not None:
        out = cfg.output_dir
        ckpt_io.write_encoder(out, ckpt_io.encoder_state_dict(state), **encoder_meta)
        timm_note = " (timm)" if kind.timm else ""
        log.info(
            f"done. Outputs in {out}: config.yaml, metrics.jsonl, {ckpt_io.LAST}, encoder.safetensors + "
            f"encoder.json{timm_note}, tb/ (tensorboard --logdir {os.path.join(out, 'tb')})"
        )
    return result


# The target settings a pre-trained prediction head depends on (the others have no weights to disagree with).
_TARGET_KEYS = ("name", "nbins", "cell_size", "gaussian_window", "frame_index")
_WHAT = "this run's {} (model sizes, data.image_size, video.num_frames or target)"


def _load_initial_weights(model: MaskFeat, cfg: DictConfig, architecture: str) -> None:
    """Start from ``model.checkpoint``: the whole pre-training model (encoder, [MASK] token, head) where it is
    there (``maskfeat.safetensors`` of ``maskfeat convert``, a ``pretrain`` checkpoint, or a folder holding one),
    else its encoder. The architecture and the target must be this run's: otherwise one line says what differs."""
    path = weight_files.model_file(cfg.model.checkpoint)
    whole = ckpt_io.read_pretrain_model(path, cfg.model.allow_pickle)
    if whole is None:
        state, meta = ckpt_io.read_encoder(path, cfg.model.allow_pickle)
        _check_architecture(path, meta, architecture)
        ckpt_io.load_strict(model.encoder, builder.fit_positions(model.encoder, state), path, _WHAT.format("encoder"))
        log.info(f"initialised the encoder from {path} ([MASK] token and head start fresh)")
        return
    state, meta, target = whole
    _check_architecture(path, meta, architecture)
    ours = OmegaConf.to_container(cfg.target, enum_to_str=True)
    differ = [f"target.{k}: {target[k]} there, {ours[k]} here" for k in _TARGET_KEYS
              if k in target and str(target[k]) != str(ours[k])]  # fmt: skip
    if differ:
        raise ConfigError(f"{path} was pre-trained with another target ({'; '.join(differ)}): set the same target")
    encoder = builder.fit_positions(
        model.encoder, {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    )
    state = {**{k: v for k, v in state.items() if not k.startswith("encoder.")},
             **{f"encoder.{k}": v for k, v in encoder.items()}}  # fmt: skip
    ckpt_io.load_strict(model, state, path, _WHAT.format("pre-training model"))
    log.info(f"continuing pre-training from {path} (encoder, [MASK] token and head)")


def _check_architecture(path: str, meta: dict | None, architecture: str) -> None:
    theirs = (meta or {}).get("architecture")
    if theirs is not None and theirs != architecture:
        raise ConfigError(f"{path} holds a {theirs} model, but model.name={architecture}: set model.name={theirs}")
