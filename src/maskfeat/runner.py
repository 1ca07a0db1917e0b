"""What every training command shares: device and processes, data loaders, and ``fit``, the outer loop that
resumes, trains epoch by epoch, evaluates, logs and checkpoints.

``pretrain``, ``finetune`` and ``linprobe`` build their model, loss and optimizer, then hand them to ``fit``.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn

from maskfeat import checkpoint as ckpt_io
from maskfeat.config import ConfigError, to_yaml
from maskfeat.data import SeededSampler, sample_image_folder, sample_video_folder
from maskfeat.distributed import cleanup, init_distributed, is_main_process, local_rank
from maskfeat.engine import LoopOptions, LoopStats, train_one_epoch
from maskfeat.tracking import RunLog

log = logging.getLogger("maskfeat")

SAMPLE_IMAGE_SIZE = 160  # side of the embedded sample images (crops of scikit-image's bundled photos)


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


def data_folder(cfg: DictConfig) -> str:
    """``data.path``, or the embedded sample images (or clips, for a video model) when it is null."""
    if cfg.data.path:
        return cfg.data.path
    from maskfeat.models.video_vit import VIDEO_ARCHITECTURES

    if cfg.model.name in VIDEO_ARCHITECTURES:
        path = sample_video_folder(split="train")
        log.info(f"data.path not set: using the embedded sample clips (photos under camera motion) in {path}")
        return path
    path = sample_image_folder(num_images=cfg.data.sample_images, size=SAMPLE_IMAGE_SIZE, seed=0)
    log.info(f"data.path not set: using {cfg.data.sample_images} embedded sample images in {path}")
    return path


def make_loader(
    dataset: torch.utils.data.Dataset,
    collate: Callable,
    batch_size: int,
    workers: int,
    seed: int,
    device: torch.device,
    train: bool,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.utils.data.DataLoader, SeededSampler]:
    """A loader over ``dataset`` with a :class:`SeededSampler` (shuffled, drop-last batches when ``train``).

    ``workers`` < 0 means min(8, CPU cores).
    """
    workers = min(8, os.cpu_count() or 1) if workers < 0 else workers
    sampler = SeededSampler(len(dataset), seed=seed, shuffle=train, rank=rank, world_size=world_size, drop_last=train)
    kwargs = dict(
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    if workers > 0:
        kwargs["prefetch_factor"] = 4
    return torch.utils.data.DataLoader(dataset, **kwargs), sampler


@dataclass
class Job:
    """Everything ``fit`` trains. ``model`` is what is saved; ``train_model`` what runs (DDP / compiled)."""

    model: nn.Module
    loss_fn: Callable[[nn.Module, dict], torch.Tensor]  # (train_model, batch on device) -> scalar loss
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: torch.utils.data.DataLoader
    sampler: SeededSampler
    steps_per_epoch: int
    total_steps: int
    extra: dict = field(default_factory=dict)  # saved in every checkpoint (e.g. the encoder's architecture)
    evaluate: Callable[[], dict] | None = None  # returns {"top1", "top5", ...}; called after each epoch
    finish: Callable[[dict], None] | None = None  # rank 0, at the end, given the full model state dict
    train_model: nn.Module | None = None
    sharded: bool = False  # the model is sharded with FSDP (see shard_model)


def setup_run(cfg: DictConfig) -> tuple[torch.device, int, int]:
    """Device and process group; records ``world_size`` in the config. Returns (device, rank, world_size)."""
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # this process's GPU (collectives and the CUDA RNG use the current device)
    rank, world_size = init_distributed(device)
    cfg.world_size = world_size
    return device, rank, world_size


def shard_model(model: nn.Module, device: torch.device, world_size: int, strategy: str,
                dtype: torch.dtype | None) -> bool:  # fmt: skip
    """``train.strategy=fsdp``: shard the model over the processes with FSDP2 (``fully_shard`` on every
    transformer block, then on the whole model), in place. Call it before building the optimizer. Parameters
    are gathered in ``dtype`` (bf16 under bf16 autocast) and gradients reduced in float32. Returns whether the
    model is sharded (not with one process: there is nothing to shard)."""
    if strategy != "fsdp":
        return False
    if world_size == 1:
        log.info("train.strategy=fsdp with one process: nothing to shard, training unsharded")
        return False
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)
    blocks = [m for m in model.modules() if type(m).__name__.endswith("Block")]  # timm Block, MViT MultiscaleBlock
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    if is_main_process():
        log.info(f"FSDP: {len(blocks)} blocks and the rest of the model sharded over {world_size} processes")
    return True


def wrap_for_training(model: nn.Module, device: torch.device, world_size: int, compile_model: bool,
                      sharded: bool = False) -> nn.Module:  # fmt: skip
    """DDP over processes (no buffer broadcast: ViTs have no running statistics) unless the model is already
    sharded with FSDP; optionally torch.compile."""
    if world_size > 1 and not sharded:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    if compile_model:
        model = torch.compile(model)
    return model


def _full_state_options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def model_state(job: Job) -> dict:
    """The whole model's state dict (plain tensors). Sharded: gathered from every process (a collective: call it
    on all ranks) onto rank 0's CPU; the other ranks get an empty dict."""
    if not job.sharded:
        return job.model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(job.model, options=_full_state_options(cpu_offload=True))


def optimizer_state(job: Job) -> dict:
    """The optimizer's state dict; sharded: gathered like :func:`model_state` (keyed by parameter names)."""
    if not job.sharded:
        return job.optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(job.model, job.optimizer, options=_full_state_options(cpu_offload=True))


def load_training_state(job: Job, model: dict, optimizer: dict) -> None:
    """Load full (unsharded) model and optimizer state dicts into the job, sharding them when the model is."""
    if not job.sharded:
        job.model.load_state_dict(model)
        job.optimizer.load_state_dict(optimizer)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(job.model, model, options=_full_state_options())
    set_optimizer_state_dict(job.model, job.optimizer, optimizer, options=_full_state_options())


def gather_rng_states() -> list[dict]:
    """Every process's random states, rank order (a collective with several processes)."""
    state = ckpt_io.rng_state()
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [state]
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


class PreemptionSignals:
    """SIGTERM / SIGUSR1 (a cluster's pre-emption notice) set a flag; the loop saves a checkpoint at the next step
    boundary and stops. With several processes the flag is agreed on (max over ranks) every ``every`` steps, so
    all ranks stop at the same step."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, every: int):
        self.every, self.flag, self.previous = every, False, {}

    def __enter__(self) -> PreemptionSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if not self.flag:
            log.warning(f"received {signal.Signals(signum).name}: saving a checkpoint at the end of this step")
        self.flag = True

    def requested(self, step: int) -> bool:
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return self.flag
        if step % self.every:
            return False
        flag = torch.tensor([float(self.flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _numbered(output_dir: str) -> list[str]:
    """Numbered step checkpoints, oldest first."""
    found = glob.glob(os.path.join(output_dir, "checkpoint-[0-9]*.pt"))
    return sorted(found, key=lambda p: int(re.findall(r"(\d+)\.pt$", p)[0]))


_RESUME_KEYS = ("model", "target", "data.image_size", "train.batch_size", "train.accum_steps", "train.epochs",
                "mask", "seed", "world_size")  # fmt: skip


def _check_resume_config(saved: dict, cfg: DictConfig) -> None:
    """Warn when the run being resumed was started with settings that change the result."""
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
        log.warning(f"resuming a run whose settings differ in {', '.join(changed)}: it will not match an "
                    "uninterrupted run")  # fmt: skip


def resume(cfg: DictConfig, job: Job, scaler: torch.amp.GradScaler) -> tuple[int, dict]:
    """Load ``output_dir/checkpoint-last.pt`` into the job when it exists.

    Returns the step to continue from and the best evaluation metrics so far.
    """
    last = os.path.join(cfg.output_dir, ckpt_io.LAST)
    candidates = [p for p in [last, *reversed(_numbered(cfg.output_dir))] if os.path.isfile(p)]
    if not candidates:
        return 0, {"top1": float("-inf")}
    state = None
    for path in candidates:  # the newest readable checkpoint; a torn or corrupt file falls back to an older one
        try:
            state = ckpt_io.load_checkpoint(path)
            last = path
            break
        except ValueError as e:
            log.warning(f"{e}; trying an older checkpoint")
    if state is None:
        raise ValueError(f"no readable checkpoint in {cfg.output_dir} (tried {', '.join(candidates)})")
    _check_resume_config(state.get("config", {}), cfg)
    if bool(state.get("sharded", False)) != job.sharded:
        was = "sharded (train.strategy=fsdp)" if state.get("sharded") else "unsharded"
        raise ValueError(f"{last} was written by a {was} run; resume it with the same train.strategy and number of "
                         "processes, or start a new run from its weights with model.checkpoint=...")  # fmt: skip
    load_training_state(job, state["model"], state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    rank = dist.get_rank() if dist.is_initialized() else 0
    per_rank = state.get("rng_ranks") or [state["rng"]]
    ckpt_io.set_rng_state(per_rank[rank] if rank < len(per_rank) else state["rng"])
    step = int(state["step"])
    if is_main_process():
        log.info(f"resuming from {last} at step {step}/{job.total_steps}")
    return step, dict(state.get("best", {"top1": float("-inf")}))


def fit(cfg: DictConfig, job: Job, device: torch.device, summary_line: str) -> dict:
    """Train ``job`` for ``train.epochs`` (or ``train.max_steps``), resuming from ``output_dir`` when it holds a
    checkpoint. Writes config.yaml, metrics.jsonl, tb/, checkpoint-last.pt (and numbered / best checkpoints).
    Returns ``{"step", "loss", "best_top1", "output_dir", "seconds"}``.
    """
    tr, out = cfg.train, cfg.output_dir
    main = is_main_process()
    dtype = amp_dtype(tr.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step, best = resume(cfg, job, scaler)
    if main:
        os.makedirs(out, exist_ok=True)
        ckpt_io.atomic_write(os.path.join(out, "config.yaml"), lambda f: f.write(to_yaml(cfg).encode()))
        log.info(summary_line + f"; {job.total_steps} steps -> {out}")
    run_log = RunLog(out, job.total_steps, start_step=step, enabled=main)
    stats = LoopStats()
    opts = LoopOptions(device=device, steps_per_epoch=job.steps_per_epoch, accum_steps=tr.accum_steps,
                       clip_grad=tr.clip_grad, amp_dtype=dtype, log_every=tr.log_every,
                       checkpoint_every=tr.checkpoint_every, max_steps=tr.max_steps)  # fmt: skip
    last_row: dict = {}

    def on_log(row: dict) -> None:
        nonlocal last_row
        last_row = row
        seen = stats.seen_images + stats.bad_images
        if stats.bad_images > 1 and stats.bad_images / seen > cfg.data.max_bad_fraction:
            names = sorted(set(stats.bad_files))
            listed = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            raise ValueError(
                f"{stats.bad_images} of {seen} images could not be decoded, more than data.max_bad_fraction="
                f"{cfg.data.max_bad_fraction}: {listed}"
            )
        run_log.write(row)
        run_log.progress(row["step"], row)

    end = min(job.total_steps, tr.max_steps) if tr.max_steps else job.total_steps

    def evaluate(at_step: int) -> None:
        nonlocal best
        metrics = job.evaluate()
        job.model.train()
        epoch = (at_step - 1) // job.steps_per_epoch
        run_log.write({"step": at_step, "epoch": epoch, **metrics}, prefix="val")
        if main:
            log.info(f"epoch {epoch} step {at_step}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        if metrics["top1"] > best["top1"]:
            best = dict(metrics)
            save(at_step, "checkpoint-best.pt", numbered=False)

    def on_checkpoint(at_step: int) -> None:
        """Called by the loop when a checkpoint is due; at an epoch's end, evaluate first (so the saved state
        knows the best score so far)."""
        if job.evaluate is not None and (at_step % job.steps_per_epoch == 0 or at_step == end):
            evaluate(at_step)
        save(at_step)

    def save(at_step: int, name: str = ckpt_io.LAST, numbered: bool = True) -> None:
        """Called on every rank: gathering a sharded model's state and the ranks' random states are collective."""
        model_sd, optim_sd, rngs = model_state(job), optimizer_state(job), gather_rng_states()
        if not main:
            return
        state = {
            "model": model_sd,
            "optimizer": optim_sd,
            "scaler": scaler.state_dict(),
            "step": at_step,
            "rng": rngs[0],
            "rng_ranks": rngs,
            "sharded": job.sharded,
            "config": OmegaConf.to_container(cfg),
            "best": best,
            **job.extra,
        }
        try:
            ckpt_io.save_checkpoint(os.path.join(out, name), state)
            if numbered and tr.keep_checkpoints > 0:
                ckpt_io.save_checkpoint(os.path.join(out, f"checkpoint-{at_step:08d}.pt"), state)
                for old in _numbered(out)[: -tr.keep_checkpoints]:
                    os.unlink(old)
        except OSError as e:  # disk full, quota, permissions: the previous checkpoint is intact (atomic writes)
            log.warning(f"could not write the step {at_step} checkpoint to {out} ({e.strerror or e}); the previous "
                        "checkpoint is intact and training goes on")  # fmt: skip

    train_model = job.train_model if job.train_model is not None else job.model
    t0 = time.perf_counter()
    with PreemptionSignals(tr.log_every) as signals:
        opts.stop_requested = signals.requested
        try:
            while step < end:
                epoch = step // job.steps_per_epoch
                job.sampler.set_epoch(epoch)
                job.sampler.set_start((step % job.steps_per_epoch) * tr.accum_steps * job.loader.batch_size)
                step = train_one_epoch(train_model, job.loader, job.optimizer, job.scheduler, scaler, opts, epoch,
                                       step, stats, job.loss_fn, on_log, on_checkpoint)  # fmt: skip
        finally:
            run_log.close()
    if job.finish is not None:
        final_state = model_state(job)  # collective when sharded
        if main:
            job.finish(final_state)
    if main and stats.bad_images:
        log.warning(f"{stats.bad_images} unreadable images were skipped (named in the warnings above)")
    cleanup()
    return {
        "step": step,
        "loss": last_row.get("loss"),
        "best_top1": best["top1"] if job.evaluate is not None else None,
        "output_dir": out,
        "seconds": time.perf_counter() - t0,
    }
