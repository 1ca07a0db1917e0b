"""What every training command shares: ``Job`` (what is trained) and ``fit``, the outer loop that resumes, trains
epoch by epoch, evaluates, logs and checkpoints. Device, processes and sharding live in :mod:`maskfeat.distributed`,
checkpoints and resume in :mod:`maskfeat.checkpoint`, loaders in :mod:`maskfeat.data.loader`.

``pretrain``, ``finetune`` and ``linprobe`` build their model, loss and optimizer, then hand them to ``fit``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from maskfeat import checkpoint as ckpt_io
from maskfeat.checkpoint import FREE_ON_RESUME, check_same_run, config_differences, gather_rng_states
from maskfeat.config import to_yaml
from maskfeat.data import SeededSampler
from maskfeat.data.loader import SAMPLE_IMAGE_SIZE, data_folder, make_loader
from maskfeat.distributed import (
    PreemptionSignals,
    all_gather_lists,
    cleanup,
    is_main_process,
    load_training_state,
    model_state,
    optimizer_state,
    resolve_device,
    setup_run,
    shard_model,
    wrap_for_training,
)
from maskfeat.engine import LoopOptions, LoopStats, train_one_epoch
from maskfeat.errors import Interrupted, Preempted
from maskfeat.models.names import is_video_architecture
from maskfeat.tracking import RunLog

__all__ = [  # the names moved to checkpoint.py, distributed.py and data/loader.py stay importable from here
    "FREE_ON_RESUME",
    "SAMPLE_IMAGE_SIZE",
    "BadFiles",
    "Job",
    "PreemptionSignals",
    "amp_dtype",
    "check_same_run",
    "config_differences",
    "data_folder",
    "fit",
    "gather_rng_states",
    "load_training_state",
    "make_loader",
    "model_state",
    "optimizer_state",
    "resolve_device",
    "resume",
    "setup_run",
    "shard_model",
    "wrap_for_training",
]

log = logging.getLogger("maskfeat")


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``: auto = bf16 on CUDA, full precision on CPU."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


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


def resume(cfg: DictConfig, job: Job, scaler: torch.amp.GradScaler) -> tuple[int, dict]:
    """Load the newest readable checkpoint of ``output_dir`` into the job when there is one (see
    :func:`maskfeat.checkpoint.resume_training`).

    Returns the step to continue from and the best evaluation metrics so far.
    """
    return ckpt_io.resume_training(cfg, job.model, job.optimizer, scaler, job.sharded, job.total_steps)


class BadFiles:
    """The unreadable files of a data set of ``num_files`` files, as found by all processes together.

    ``data.max_bad_fraction`` is judged against the size of the data set, not against the samples seen so far:
    the run stops as soon as more than ``max_fraction`` of the data set's files are known to be unreadable, which
    is then certain. A rate over the samples seen so far would be noisy early in a run, would depend on which
    files each process happened to read first (one rank's share can hold all the broken files), and could stop a
    run whose data set is within the limit. The files are counted once each (not once per epoch) over every
    process, so the verdict, the step at which it is known and the message do not depend on the number of
    processes or nodes beyond which files a step has read: after each :meth:`update` every rank holds the same
    set, so every rank raises the same error at the same step and none is left waiting in a collective.
    """

    def __init__(self, num_files: int, max_fraction: float):
        self.num_files, self.max_fraction = num_files, max_fraction
        self.names: set[str] = set()
        self._synced = 0  # how much of the caller's list of found files has been shared already

    def update(self, found: list[str]) -> None:
        """Share the files this process found since the last call (``found`` only grows; it may repeat names) and
        take in the other processes'. A collective: call it on every rank at the same step (the logging step).

        Raises:
            ValueError: more than ``max_fraction`` of the data set's files are unreadable (one line, naming them).
        """
        new = sorted(set(found[self._synced :]) - self.names)
        self._synced = len(found)
        self.names.update(all_gather_lists(new))
        if self.num_files and len(self.names) / self.num_files > self.max_fraction:
            raise ValueError(f"{self.summary()}, more than data.max_bad_fraction={self.max_fraction}: {self.listed()}")

    def summary(self) -> str:
        return f"{len(self.names)} of the {self.num_files} files could not be decoded"

    def listed(self) -> str:
        names = sorted(self.names)
        return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")


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
    sample = "clips" if is_video_architecture(cfg.model.name) else "img"
    run_log = RunLog(out, job.total_steps, start_step=step, enabled=main, sample=sample)
    stats = LoopStats()
    opts = LoopOptions(device=device, steps_per_epoch=job.steps_per_epoch, accum_steps=tr.accum_steps,
                       clip_grad=tr.clip_grad, amp_dtype=dtype, log_every=tr.log_every,
                       checkpoint_every=tr.checkpoint_every, max_steps=tr.max_steps)  # fmt: skip
    last_row: dict = {}
    bad = BadFiles(job.sampler.num_samples, cfg.data.max_bad_fraction)

    def on_log(row: dict) -> None:
        nonlocal last_row
        last_row = row
        bad.update(stats.bad_files)  # every rank logs at the same steps: the ranks are in step here
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
        model_sd = model_state(job.model, job.sharded)
        optim_sd = optimizer_state(job.model, job.optimizer, job.sharded)
        rngs = gather_rng_states()
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
            "config": OmegaConf.to_container(cfg, enum_to_str=True),
            "best": best,
            **job.extra,
        }
        try:
            ckpt_io.save_checkpoint(os.path.join(out, name), state)
            if numbered and tr.keep_checkpoints > 0:
                ckpt_io.save_checkpoint(os.path.join(out, f"checkpoint-{at_step:08d}.pt"), state)
                for old in ckpt_io.numbered_checkpoints(out)[: -tr.keep_checkpoints]:
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
        except Preempted as e:
            if signals.received == "SIGINT":  # Ctrl-C: exit status 130, as an interrupted command
                raise Interrupted(e.step) from None
            raise
        finally:
            run_log.close()
    if job.finish is not None:
        final_state = model_state(job.model, job.sharded)  # collective when sharded
        if main:
            job.finish(final_state)
    if main and bad.names:  # counted over all processes, each file once
        log.warning(f"{bad.summary()} and were skipped: {bad.listed()}")
    cleanup()
    return {
        "step": step,
        "loss": last_row.get("loss"),
        "best_top1": best["top1"] if job.evaluate is not None else None,
        "output_dir": out,
        "seconds": time.perf_counter() - t0,
    }
