"""The training loop as plain functions, in the spirit of MAE's ``train_one_epoch``: what is trained (:class:`Job`),
how (:class:`LoopOptions`), and :func:`train_steps`, which runs optimizer steps until it is told to stop.

No host-device synchronisation per step: per-step losses stay on the device and are read once per logging
interval (and at every stop, before a checkpoint), where a non-finite value stops the run naming the exact step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from maskfeat.errors import NonFiniteLossError

LossFn = Callable[[nn.Module, dict], "torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]"]


@dataclass
class Job:
    """Everything a run trains. ``model`` is what is saved; ``train_model`` what runs (DDP / compiled; default
    ``model``). ``loss_fn(train_model, batch)`` returns the loss of a collated batch on the device, or
    ``(loss, extras)`` with ``extras`` scalar tensors (no gradient) logged beside the loss by name."""

    model: nn.Module
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    scheduler: object  # timm scheduler: ``step_update(step)`` sets the learning rate of optimizer step ``step``
    loader: torch.utils.data.DataLoader
    sampler: object  # SeededSampler: ``set_epoch``, ``set_start``, ``num_samples``
    steps_per_epoch: int
    total_steps: int
    extra: dict = field(default_factory=dict)  # saved in every checkpoint (e.g. the encoder's architecture)
    evaluate: Callable[[], dict] | None = None  # returns {"top1", "top5", ...}; called after each epoch
    best_metric: str = "top1"  # the key of ``evaluate``'s result that checkpoint-best.pt maximises (detect: mAP)
    train_model: nn.Module | None = None
    sharded: bool = False  # the model is sharded with FSDP (see distributed.shard_model)
    sample: str = "img"  # what one sample is, for the console's rate: img (images/s) or clips (clips/s)

    def __post_init__(self) -> None:
        if self.train_model is None:
            self.train_model = self.model


@dataclass
class LoopOptions:
    """How to run the loop (explicit values, no config object)."""

    device: torch.device
    accum_steps: int = 1  # batches per optimizer step
    clip_grad: float | None = None  # max global gradient L2 norm
    amp_dtype: torch.dtype | None = None  # autocast dtype, None = full precision
    log_every: int = 20  # optimizer steps between logging rows
    signals: object | None = None  # distributed.PreemptionSignals: ``requested(step)`` is True once a signal came


@dataclass
class LoopStats:
    """Counters carried across calls."""

    bad_images: int = 0  # samples that could not be decoded so far
    bad_files: list = field(default_factory=list)  # their paths
    seen_images: int = 0  # samples that reached the model so far
    pending: list = field(default_factory=list)  # (step, loss tensor) not yet read back from the device
    pending_extras: list = field(default_factory=list)  # per step: {name: tensor} from loss_fn, not yet read back
    images_since_log: int = 0
    time_since_log: float = field(default_factory=time.perf_counter)
    last_row: dict = field(default_factory=dict)  # the newest logged row


class StepLog(Protocol):
    """Where logging rows go: ``write(row, bad_files)`` at each logging step, on every process at the same steps
    (it may run a collective: see runner.TrainLog)."""

    def write(self, row: dict, bad_files: list[str]) -> None: ...


def _flush(stats: LoopStats) -> float:
    """Read the pending per-step losses back (one sync); raise on the first non-finite one. Returns their mean."""
    if not stats.pending:
        return float("nan")
    values = torch.stack([v for _, v in stats.pending]).float().cpu().tolist()
    for (step, _), v in zip(stats.pending, values):
        if not math.isfinite(v):
            raise NonFiniteLossError(f"loss is {v} at step {step}: stopping (try a lower train.lr or train.amp=off)")
    stats.pending.clear()
    return sum(values) / len(values)


def _forward_backward(job: Job, batch: dict, scaler: torch.amp.GradScaler, opts: LoopOptions, sync: bool,
                      sums: dict[str, torch.Tensor]) -> int:  # fmt: skip
    """One micro-batch: loss, scaled backward (gradients synchronised only when ``sync``), the loss and extras
    added to ``sums`` (divided by the accumulation steps). Returns the number of samples."""
    batch = {k: v.to(opts.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    with _gradient_sync(job.train_model, sync):
        dtype = opts.amp_dtype or torch.float32
        with torch.autocast(opts.device.type, dtype=dtype, enabled=opts.amp_dtype is not None):
            loss = job.loss_fn(job.train_model, batch)
        loss, extras = loss if isinstance(loss, tuple) else (loss, {})
        scaler.scale(loss / opts.accum_steps).backward()
    for k, v in {"loss": loss, **extras}.items():
        sums[k] = sums.get(k, 0.0) + v.detach().float() / opts.accum_steps
    return len(batch["images"])


def _optimizer_step(job: Job, scaler: torch.amp.GradScaler, clip_grad: float | None):
    """Clip (when set), step, zero the gradients. Returns the gradient norm before clipping, or None."""
    grad_norm = None
    if clip_grad:
        scaler.unscale_(job.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(job.train_model.parameters(), clip_grad)
    scaler.step(job.optimizer)
    scaler.update()
    job.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _row(stats: LoopStats, optimizer: torch.optim.Optimizer, step: int, epoch: int, grad_norm) -> dict:
    """The logging row of ``step``: the losses and extras since the last row, averaged; lr, rate, counters."""
    loss_mean = _flush(stats)  # also guards every checkpoint against non-finite weights
    now = time.perf_counter()
    row = {
        "step": step,
        "epoch": epoch,
        "loss": loss_mean,
        "lr": max(g["lr"] for g in optimizer.param_groups),  # the peak (layer decay scales the others down)
        # samples per second: images, or clips for a video model (one key for both, as older runs have it)
        "images_per_s": stats.images_since_log / max(now - stats.time_since_log, 1e-9),
        "bad_images": stats.bad_images,
    }
    for k in dict.fromkeys(k for e in stats.pending_extras for k in e):  # averaged over the steps, as the loss
        row[k] = float(torch.stack([e[k] for e in stats.pending_extras if k in e]).mean())
    stats.pending_extras.clear()
    if grad_norm is not None:  # FSDP: a DTensor, the same on every rank
        row["grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    stats.images_since_log, stats.time_since_log, stats.last_row = 0, now, row
    return row


def train_steps(job: Job, batches: Iterator[dict], scaler: torch.amp.GradScaler, opts: LoopOptions, epoch: int,
                step: int, stop_at: int, stats: LoopStats, log: StepLog) -> tuple[int, bool]:  # fmt: skip
    """Optimizer steps from ``step`` (the number done before) until ``stop_at``, a pre-emption signal, or the end
    of ``batches`` (an iterator over one epoch's collated batches, positioned at ``step``'s first batch).

    Each step takes ``opts.accum_steps`` batches; a batch whose samples were all unreadable (``images`` None)
    still counts. A row goes to ``log`` every ``opts.log_every`` steps and at the stop (losses checked first).
    Returns ``(step, preempted)``.
    """
    job.train_model.train()
    sums: dict[str, torch.Tensor] = {}
    grad_norm, micro = None, 0
    for batch in batches:
        stats.bad_images += batch["num_bad"]
        stats.bad_files.extend(batch.get("bad_files", ()))
        if micro % opts.accum_steps == 0:
            job.scheduler.step_update(step)  # set this optimizer step's learning rate
        micro += 1
        last_micro = micro % opts.accum_steps == 0
        if batch["images"] is not None:
            n = _forward_backward(job, batch, scaler, opts, last_micro, sums)
            stats.seen_images += n
            stats.images_since_log += n
        if not last_micro:
            continue
        grad_norm = _optimizer_step(job, scaler, opts.clip_grad)
        step += 1
        stats.pending.append((step, sums.pop("loss", torch.zeros((), device=opts.device))))
        stats.pending_extras.append(sums)
        sums = {}
        preempted = opts.signals is not None and opts.signals.requested(step)
        if step % opts.log_every == 0 or step == stop_at or preempted:
            log.write(_row(stats, job.optimizer, step, epoch, grad_norm), stats.bad_files)
        if step == stop_at or preempted:
            return step, preempted
    return step, False


def train_one_epoch(job: Job, scaler: torch.amp.GradScaler, opts: LoopOptions, epoch: int, stats: LoopStats,
                    log: StepLog) -> int:  # fmt: skip
    """One whole epoch from its start, without checkpoints (``runner.fit`` adds resume, evaluation and
    checkpoints around :func:`train_steps`). Returns the number of optimizer steps done."""
    start = epoch * job.steps_per_epoch
    return train_steps(job, iter(job.loader), scaler, opts, epoch, start, start + job.steps_per_epoch, stats, log)[0]


def _gradient_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Gradient accumulation without needless all-reduces: only the last micro-batch of a step synchronises
    gradients (DDP's ``no_sync``; FSDP2's ``set_requires_gradient_sync``). A no-op for a single process."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    no_sync = getattr(model, "no_sync", None)
    return no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable[dict], device: torch.device, amp_dtype: torch.dtype | None = None
) -> dict[str, float]:
    """Classification accuracy over ``loader``: ``{"top1", "top5", "loss"}`` in percent (top-k with k capped
    at the number of classes), every sample counted once. Multi-view video batches ``(B, V, C, T, H, W)`` are
    scored per video: the softmax of its V views (temporal clips x spatial crops) averaged."""
    model.eval()
    correct1 = correct5 = loss_sum = 0.0
    count = 0
    for batch in loader:
        if batch["images"] is None:
            continue
        x = batch["images"].to(device, non_blocking=True)
        y = batch["labels"].to(device, non_blocking=True)
        views = x.shape[1] if x.dim() == 6 else 1
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(x.flatten(0, 1) if x.dim() == 6 else x)
        logits = logits.float()
        if x.dim() == 6:  # average the views' probabilities; log of the mean as the logits
            logits = logits.view(len(y), views, -1).softmax(-1).mean(1).clamp_min(1e-12).log()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, k)
        hits = top == y[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += len(y)
    if count == 0:
        raise ValueError("no readable images to evaluate on")
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count}
