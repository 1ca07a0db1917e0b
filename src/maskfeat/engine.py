"""The training loop as plain functions: one epoch of MaskFeat pre-training.

No host-device synchronisation per step: per-step losses stay on the device and are read once per logging
interval (or before a checkpoint), where a non-finite value stops the run naming the exact step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from maskfeat.errors import NonFiniteLossError, Preempted


@dataclass
class LoopOptions:
    """How to run the loop (explicit arguments, no config object)."""

    device: torch.device
    steps_per_epoch: int  # optimizer steps in one epoch
    accum_steps: int = 1  # batches per optimizer step
    clip_grad: float | None = None  # max global gradient L2 norm
    amp_dtype: torch.dtype | None = None  # autocast dtype, None = full precision
    log_every: int = 20  # optimizer steps between logging rows
    checkpoint_every: int = 0  # optimizer steps between checkpoints (0 = epoch ends only)
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit)
    stop_requested: Callable[[int], bool] | None = None  # (step) -> True when a pre-emption signal arrived


@dataclass
class LoopStats:
    """Counters carried across epochs."""

    bad_images: int = 0  # samples that could not be decoded so far
    bad_files: list = field(default_factory=list)  # their paths
    seen_images: int = 0  # samples that reached the model so far
    pending: list = field(default_factory=list)  # (step, loss tensor) not yet read back from the device
    pending_extras: list = field(default_factory=list)  # per step: {name: tensor} from loss_fn, not yet read back
    images_since_log: int = 0
    time_since_log: float = field(default_factory=time.perf_counter)


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


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[dict],
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
    opts: LoopOptions,
    epoch: int,
    step: int,
    stats: LoopStats,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]],
    on_log: Callable[[dict], None],
    on_checkpoint: Callable[[int], None],
) -> int:
    """Train over ``loader`` until the epoch's last optimizer step. ``step`` is the number of optimizer steps done
    before; returns the new count. ``loss_fn(model, batch)`` returns the loss of a collated batch whose tensors
    (``images``, ``labels``, ``masks``) are already on the device, or ``(loss, extras)`` with ``extras`` a dict of
    scalar tensors (no gradient) that are averaged like the loss and added to the logged rows by name.

    ``on_log(row)`` receives ``{step, epoch, loss, lr, images_per_s, bad_images, grad_norm, *extras}`` every
    ``log_every`` steps; ``on_checkpoint(step)`` is called when a checkpoint is due (losses checked first).
    """
    model.train()
    end_step = (epoch + 1) * opts.steps_per_epoch
    if opts.max_steps:
        end_step = min(end_step, opts.max_steps)
    micro = (step % opts.steps_per_epoch) * opts.accum_steps  # batches of this epoch consumed before
    step_loss = torch.zeros((), device=opts.device)
    step_extras: dict[str, torch.Tensor] = {}
    grad_norm = None
    for batch in loader:
        if step >= end_step:
            break
        stats.bad_images += batch["num_bad"]
        stats.bad_files.extend(batch.get("bad_files", ()))
        last_micro = micro % opts.accum_steps == opts.accum_steps - 1
        if micro % opts.accum_steps == 0:
            scheduler.step_update(step)  # set this optimizer step's learning rate
        micro += 1
        if batch["images"] is not None:
            batch = {k: v.to(opts.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            with _gradient_sync(model, last_micro):
                with torch.autocast(
                    opts.device.type, dtype=opts.amp_dtype or torch.float32, enabled=opts.amp_dtype is not None
                ):
                    loss = loss_fn(model, batch)
                loss, extras = loss if isinstance(loss, tuple) else (loss, {})
                scaler.scale(loss / opts.accum_steps).backward()
            step_loss += loss.detach() / opts.accum_steps
            for k, v in extras.items():
                step_extras[k] = step_extras.get(k, 0.0) + v.detach().float() / opts.accum_steps
            stats.seen_images += len(batch["images"])
            stats.images_since_log += len(batch["images"])
        if not last_micro:
            continue
        if opts.clip_grad:
            scaler.unscale_(optimizer)
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        stats.pending.append((step, step_loss))
        stats.pending_extras.append(step_extras)
        step_loss, step_extras = torch.zeros((), device=opts.device), {}

        preempted = opts.stop_requested is not None and opts.stop_requested(step)
        checkpoint_due = preempted or step == end_step or (opts.checkpoint_every and step % opts.checkpoint_every == 0)
        if step % opts.log_every == 0 or checkpoint_due:
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
                values = [e[k] for e in stats.pending_extras if k in e]
                row[k] = float(torch.stack(values).mean())
            stats.pending_extras.clear()
            if grad_norm is not None:  # FSDP: a DTensor, the same on every rank
                row["grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            on_log(row)
            stats.images_since_log, stats.time_since_log = 0, now
        if checkpoint_due:
            on_checkpoint(step)
        if preempted:
            raise Preempted(step)
    return step


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
