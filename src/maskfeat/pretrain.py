"""``maskfeat pretrain``: build everything from the config, resume if the output folder holds a checkpoint,
train, and write the encoder weights.

Data flow: folder -> ImageDataset (seeded per sample) -> MaskCollator (block masks) -> MaskFeat(x, mask)
-> HOG target of x -> masked MSE -> AdamW step -> metrics / checkpoint.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import time

import torch
from omegaconf import DictConfig, OmegaConf

from maskfeat import checkpoint as ckpt_io
from maskfeat.config import ConfigError, to_yaml
from maskfeat.data import ImageDataset, SeededSampler, pretrain_transform, sample_image_folder
from maskfeat.distributed import cleanup, init_distributed, is_main_process, local_rank
from maskfeat.engine import LoopOptions, LoopStats, train_one_epoch
from maskfeat.masking import MaskCollator
from maskfeat.models import MaskFeat, create_encoder, encoder_model_args, encoder_patch_size
from maskfeat.optim import build_optimizer, build_scheduler, scaled_lr
from maskfeat.targets import build_target
from maskfeat.tracking import RunLog

log = logging.getLogger("maskfeat")

SAMPLE_IMAGE_SIZE = 160  # side of the embedded sample images (crops of scikit-image photos)


def resolve_device(name: str) -> torch.device:
    """``auto`` = CUDA when present (this process's local GPU under torchrun), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA device is available (use device=auto or device=cpu)")
        name = f"cuda:{local_rank()}"
    return torch.device(name)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``: auto = bf16 on CUDA, full precision on CPU."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def num_workers(requested: int) -> int:
    return min(8, os.cpu_count() or 1) if requested < 0 else requested


def data_folder(cfg: DictConfig, labeled: bool = False) -> str:
    """``data.path``, or the embedded sample images when it is null."""
    if cfg.data.path:
        return cfg.data.path
    path = sample_image_folder(num_images=cfg.data.sample_images, size=SAMPLE_IMAGE_SIZE, seed=0)
    log.info(f"data.path not set: using {cfg.data.sample_images} embedded sample images in {path}")
    return path


def build_model(cfg: DictConfig) -> tuple[MaskFeat, dict]:
    """The MaskFeat model and the encoder's ``{"architecture", "model_args"}``."""
    m, t = cfg.model, cfg.target
    args = encoder_model_args(cfg.data.image_size, m.patch_size, m.embed_dim, m.depth, m.num_heads)
    encoder = create_encoder(m.name, args, num_classes=0, drop_path=m.drop_path)
    if m.grad_checkpointing:
        encoder.set_grad_checkpointing(True)
    patch = encoder_patch_size(m.name, m.patch_size)
    target = build_target(
        t.name,
        patch,
        in_chans=3,
        nbins=t.nbins,
        cell_size=t.cell_size,
        gaussian_window=t.gaussian_window,
        norm_pix=t.norm_pix,
    )
    return MaskFeat(encoder, target), {"architecture": m.name, "model_args": args}


def _numbered(output_dir: str) -> list[str]:
    """Numbered step checkpoints, oldest first."""
    found = glob.glob(os.path.join(output_dir, "checkpoint-[0-9]*.pt"))
    return sorted(found, key=lambda p: int(re.findall(r"(\d+)\.pt$", p)[0]))


def run_pretrain(cfg: DictConfig) -> dict:
    """Pre-train; returns a summary (final step, last loss, paths)."""
    device = resolve_device(cfg.device)
    rank, world_size = init_distributed(device)
    cfg.world_size = world_size
    main = is_main_process()
    tr = cfg.train
    try:
        folder = data_folder(cfg)
        dataset = ImageDataset(
            folder, pretrain_transform(cfg.data.image_size, scale=tuple(cfg.data.crop_scale), hflip=cfg.data.hflip)
        )
        patch = encoder_patch_size(cfg.model.name, cfg.model.patch_size)
        grid = (cfg.data.image_size // patch, cfg.data.image_size // patch)
        sampler = SeededSampler(
            len(dataset), seed=cfg.seed, shuffle=True, rank=rank, world_size=world_size, drop_last=True
        )
        workers = num_workers(cfg.data.num_workers)
        loader_kwargs = dict(
            batch_size=tr.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=workers,
            collate_fn=MaskCollator(cfg.mask.type, grid, cfg.mask.ratio),
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )
        if workers > 0:
            loader_kwargs["prefetch_factor"] = 4
        loader = torch.utils.data.DataLoader(dataset, **loader_kwargs)
        steps_per_epoch = len(dataset) // world_size // tr.batch_size // tr.accum_steps
        if steps_per_epoch == 0:
            raise ConfigError(
                f"{len(dataset)} images in {folder} are fewer than one optimizer step needs "
                f"(train.batch_size={tr.batch_size} x train.accum_steps={tr.accum_steps} x {world_size} processes)"
            )
        total_steps = tr.epochs * steps_per_epoch
        total_batch = tr.batch_size * tr.accum_steps * world_size
        cfg.train.lr = scaled_lr(tr.lr, tr.blr, total_batch)

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model, encoder_meta = build_model(cfg)
        model.to(device)
        optimizer = build_optimizer(model, cfg.train.lr, tr.weight_decay, tuple(tr.betas))
        scheduler = build_scheduler(
            optimizer, total_steps, round(tr.warmup_epochs * steps_per_epoch), tr.min_lr, tr.warmup_lr
        )
        dtype = amp_dtype(tr.amp, device)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

        out = cfg.output_dir
        last = os.path.join(out, ckpt_io.LAST)
        step = 0
        if os.path.isfile(last):
            state = ckpt_io.load_checkpoint(last)
            _check_resume_config(state.get("config", {}), cfg)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            step = int(state["step"])
            ckpt_io.set_rng_state(state["rng"])
            if main:
                log.info(f"resuming from {last} at step {step}/{total_steps}")
        else:
            if cfg.model.checkpoint:
                _load_initial_weights(model, cfg.model.checkpoint)
            torch.manual_seed(cfg.seed + rank)  # per-rank stream for drop path and friends
        if main:
            os.makedirs(out, exist_ok=True)
            ckpt_io.atomic_write(os.path.join(out, "config.yaml"), lambda f: f.write(to_yaml(cfg).encode()))
            n_params = sum(p.numel() for p in model.encoder.parameters())
            log.info(
                f"pretrain {cfg.model.name} ({n_params / 1e6:.1f}M params, {grid[0]}x{grid[1]} patches of {patch}px) "
                f"on {len(dataset)} images from {folder}; {world_size} process(es) on {device}, "
                f"batch {total_batch}, lr {cfg.train.lr:.3g}, {total_steps} steps -> {out}"
            )

        train_model = model
        if world_size > 1:
            train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
            )
        if tr.compile:
            train_model = torch.compile(train_model)

        run_log = RunLog(out, total_steps, start_step=step, enabled=main)
        stats = LoopStats()
        opts = LoopOptions(
            device=device,
            steps_per_epoch=steps_per_epoch,
            accum_steps=tr.accum_steps,
            clip_grad=tr.clip_grad,
            amp_dtype=dtype,
            log_every=tr.log_every,
            checkpoint_every=tr.checkpoint_every,
            max_steps=tr.max_steps,
        )
        last_row: dict = {}

        def on_log(row: dict) -> None:
            nonlocal last_row
            last_row = row
            seen = stats.seen_images + stats.bad_images
            if seen and stats.bad_images / seen > cfg.data.max_bad_fraction and stats.bad_images > 1:
                raise ConfigError(
                    f"{stats.bad_images} of {seen} images could not be decoded (more than data.max_bad_fraction="
                    f"{cfg.data.max_bad_fraction}); the warnings above name them"
                )
            run_log.write(row)
            run_log.progress(row["step"], row)

        def on_checkpoint(at_step: int) -> None:
            if not main:
                return
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "step": at_step,
                "rng": ckpt_io.rng_state(),
                "config": OmegaConf.to_container(cfg),
                "encoder": encoder_meta,
            }
            ckpt_io.save_checkpoint(last, state)
            if tr.keep_checkpoints > 0:
                numbered = os.path.join(out, f"checkpoint-{at_step:08d}.pt")
                ckpt_io.save_checkpoint(numbered, state)
                for old in _numbered(out)[: -tr.keep_checkpoints]:
                    os.unlink(old)

        t0 = time.perf_counter()
        end = min(total_steps, tr.max_steps) if tr.max_steps else total_steps
        while step < end:
            epoch = step // steps_per_epoch
            sampler.set_epoch(epoch)
            sampler.set_start((step % steps_per_epoch) * tr.accum_steps * tr.batch_size)
            step = train_one_epoch(
                train_model, loader, optimizer, scheduler, scaler, opts, epoch, step, stats, on_log, on_checkpoint
            )
        run_log.close()
        summary = {"step": step, "loss": last_row.get("loss"), "output_dir": out, "seconds": time.perf_counter() - t0}
        if main:
            ckpt_io.write_encoder(out, ckpt_io.encoder_state_dict(model.state_dict()), **encoder_meta)
            if stats.bad_images:
                log.warning(f"{stats.bad_images} unreadable images were skipped (named in the warnings above)")
            log.info(
                f"done: step {step}, loss {summary['loss']:.4f}. Outputs in {out}: config.yaml, metrics.jsonl, "
                f"{ckpt_io.LAST}, encoder.safetensors + encoder.json (timm), tb/ (tensorboard --logdir {out}/tb)"
            )
        return summary
    finally:
        cleanup()


def _load_initial_weights(model: MaskFeat, path: str) -> None:
    """Start from existing weights: a checkpoint of ours (full model) or an encoder.safetensors."""
    if path.endswith(".safetensors"):
        state, _ = ckpt_io.read_encoder(path)
        model.encoder.load_state_dict(state, strict=True)
    else:
        model.load_state_dict(ckpt_io.load_checkpoint(path)["model"], strict=True)
    log.info(f"initialised from {path}")


_RESUME_KEYS = (
    "model",
    "target",
    "data.image_size",
    "train.batch_size",
    "train.accum_steps",
    "train.epochs",
    "mask",
    "seed",
    "world_size",
)


def _check_resume_config(saved: dict, cfg: DictConfig) -> None:
    """Warn when the run being resumed was started with different settings that change the result."""
    current = OmegaConf.to_container(cfg)
    changed = []
    for key in _RESUME_KEYS:
        a, b = saved, current
        for part in key.split("."):
            a = a.get(part) if isinstance(a, dict) else None
            b = b.get(part) if isinstance(b, dict) else None
        if a != b:
            changed.append(key)
    if changed:
        log.warning(
            f"resuming a run whose settings differ in {', '.join(changed)}: it will not match an uninterrupted run"
        )
