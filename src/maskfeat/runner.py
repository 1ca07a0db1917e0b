"""What every training command shares: :func:`fit`, the outer loop that resumes, trains epoch by epoch with
:func:`maskfeat.engine.train_steps`, evaluates, logs and checkpoints. Device, processes and sharding live in
:mod:`maskfeat.distributed`, checkpoint files and resume in :mod:`maskfeat.checkpoint`, loaders in
:mod:`maskfeat.data.loader`.

``pretrain``, ``finetune`` and ``linprobe`` build a :class:`~maskfeat.engine.Job` with :mod:`maskfeat.builder`,
then hand it to :func:`fit`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from maskfeat import checkpoint as ckpt_io
from maskfeat.builder import build_optimizer_and_schedule
from maskfeat.config import to_yaml
from maskfeat.distributed import (
    PreemptionSignals,
    all_gather_lists,
    cleanup,
    is_main_process,
    model_state,
    optimizer_state,
    shard_model,
    wrap_for_training,
)
from maskfeat.engine import Job, LoopOptions, LoopStats, train_steps
from maskfeat.errors import ConfigError, Interrupted, Preempted
from maskfeat.tracking import RunLog

__all__ = ["BadFiles", "Job", "TrainLog", "amp_dtype", "describe_run", "final_state", "fit", "place",
           "steps_per_epoch"]  # fmt: skip

log = logging.getLogger("maskfeat")


def place(cfg: DictConfig, model: nn.Module, kind: str, spe: int, device: torch.device, rank: int,
          world_size: int) -> tuple[torch.optim.Optimizer, object, nn.Module, bool]:  # fmt: skip
    """Put ``model`` on ``device``, shard it (``train.strategy=fsdp``), build its optimizer and schedule for ``kind``
    (see :func:`maskfeat.builder.build_optimizer_and_schedule`), seed this rank's random stream (drop path; a resume
    restores it) and wrap the model for training (DDP / compile). Returns (optimizer, scheduler, train_model,
    sharded)."""
    tr = cfg.train
    model.to(device)
    sharded = shard_model(model, device, world_size, tr.strategy, amp_dtype(tr.amp, device))
    optimizer, scheduler = build_optimizer_and_schedule(cfg, model, kind, spe)
    torch.manual_seed(cfg.seed + rank)
    return optimizer, scheduler, wrap_for_training(model, device, world_size, tr.compile, sharded), sharded


def describe_run(cfg: DictConfig, what: str, num_items: int, noun: str, folder: str, device: torch.device,
                 total_batch: int) -> str:  # fmt: skip
    """The line a training command starts with: ``what`` (command, model, size) and the data, processes and lr."""
    size = cfg.train.epoch_size
    passes = size / num_items if size and num_items else 0
    epochs = f"; an epoch is {size} samples ({passes:.3g} pass{'' if passes == 1 else 'es'})" if passes else ""
    return (f"{what} on {num_items} {noun} from {folder}{epochs}; {cfg.world_size} process(es) on {device}, batch "
            f"{total_batch}, lr {cfg.train.lr:.3g}")  # fmt: skip


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``: auto = bf16 on CUDA, full precision on CPU."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def steps_per_epoch(num_items: int, source: str, batch_size: int, accum_steps: int, world_size: int,
                    noun: str) -> int:  # fmt: skip
    """Optimizer steps per pass over ``num_items`` samples (drop-last batches on every process)."""
    steps = num_items // world_size // batch_size // accum_steps
    if steps == 0:
        raise ConfigError(
            f"{num_items} {noun} in {source} are fewer than one optimizer step needs (train.batch_size="
            f"{batch_size} x train.accum_steps={accum_steps} x {world_size} processes)"
        )
    return steps


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


class TrainLog:
    """What a logging step does (a :class:`~maskfeat.engine.StepLog`): share the unreadable files found so far
    with the other processes (every rank logs at the same steps, so the ranks are in step here), then write the
    row to metrics.jsonl / TensorBoard and show the progress."""

    def __init__(self, run_log: RunLog, bad: BadFiles):
        self.run_log, self.bad = run_log, bad

    def write(self, row: dict, bad_files: list[str]) -> None:
        self.bad.update(bad_files)
        self.run_log.write(row)
        self.run_log.progress(row["step"], row)


@dataclass
class _Run:
    """The state ``fit`` carries through a run (explicit, passed to each helper)."""

    cfg: DictConfig
    job: Job
    scaler: torch.amp.GradScaler
    opts: LoopOptions
    run_log: RunLog
    log: TrainLog
    stats: LoopStats
    end: int  # the step the run stops at (train.max_steps or the schedule's end)
    best: dict  # the best evaluation metrics so far


def fit(cfg: DictConfig, job: Job, device: torch.device, summary_line: str) -> tuple[dict, dict | None]:
    """Train ``job`` for ``train.epochs`` (or ``train.max_steps``), resuming from ``output_dir`` when it holds a
    checkpoint. Writes config.yaml, metrics.jsonl, tb/, checkpoint-last.pt (and numbered / best checkpoints).

    Returns ``({"step", "loss", "best_<job.best_metric>", "output_dir", "seconds"}, state)``: ``state`` is the final
    model state dict on rank 0 (gathered when sharded), None on the other ranks; the process group is down by then.
    The caller writes the final weights from it.
    """
    tr, out = cfg.train, cfg.output_dir
    dtype = amp_dtype(tr.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step, best = ckpt_io.resume_training(cfg, job.model, job.optimizer, scaler, job.sharded, job.total_steps)
    if is_main_process():
        os.makedirs(out, exist_ok=True)
        ckpt_io.atomic_write(os.path.join(out, "config.yaml"), lambda f: f.write(to_yaml(cfg).encode()))
        log.info(summary_line + f"; {job.total_steps} steps -> {out}")
    run_log = RunLog(out, job.total_steps, start_step=step, enabled=is_main_process(), sample=job.sample)
    opts = LoopOptions(device=device, accum_steps=tr.accum_steps, clip_grad=tr.clip_grad, amp_dtype=dtype,
                       log_every=tr.log_every)  # fmt: skip
    bad = BadFiles(job.sampler.num_samples, cfg.data.max_bad_fraction)
    end = min(job.total_steps, tr.max_steps) if tr.max_steps else job.total_steps
    run = _Run(cfg, job, scaler, opts, run_log, TrainLog(run_log, bad), LoopStats(), end, best)
    t0 = time.perf_counter()
    with PreemptionSignals(tr.log_every) as signals:
        opts.signals = signals
        try:
            while step < end:
                step = _train_epoch(run, step)
        except Preempted as e:
            if signals.received == "SIGINT":  # Ctrl-C: exit status 130, as an interrupted command
                raise Interrupted(e.step) from None
            raise
        finally:
            run_log.close()
    if is_main_process() and bad.names:  # counted over all processes, each file once
        log.warning(f"{bad.summary()} and were skipped: {bad.listed()}")
    summary = {
        "step": step,
        "loss": run.stats.last_row.get("loss"),
        f"best_{job.best_metric}": run.best.get(job.best_metric) if job.evaluate is not None else None,
        "output_dir": out,
        "seconds": time.perf_counter() - t0,
    }
    return summary, final_state(job)


def final_state(job: Job) -> dict | None:
    """The end of a run, on every process: the full model state (gathered when sharded: a collective) on rank 0,
    None on the others; the process group is taken down after it."""
    main = is_main_process()
    state = model_state(job.model, job.sharded)
    cleanup()
    return state if main else None


def _next_stop(step: int, epoch_end: int, every: int) -> int:
    """The next step after ``step`` that ends in a checkpoint: the next multiple of ``every`` (0: none), at the
    latest ``epoch_end``."""
    return min(epoch_end, (step // every + 1) * every) if every else epoch_end


def _train_epoch(run: _Run, step: int) -> int:
    """The rest of the epoch ``step`` is in: train to each checkpoint, evaluate at the epoch's end (so the saved
    state knows the best score so far), save. Raises Preempted after saving when a signal came."""
    job, spe = run.job, run.job.steps_per_epoch
    epoch = step // spe
    job.sampler.set_epoch(epoch)
    job.sampler.set_start((step % spe) * run.opts.accum_steps * job.loader.batch_size)
    batches = iter(job.loader)
    epoch_end = min((epoch + 1) * spe, run.end)
    while step < epoch_end:
        stop_at = _next_stop(step, epoch_end, run.cfg.train.checkpoint_every)
        step, preempted = train_steps(job, batches, run.scaler, run.opts, epoch, step, stop_at, run.stats, run.log)
        if step < stop_at and not preempted:
            break  # the loader ended early: the outer loop starts over from this step
        if job.evaluate is not None and step == epoch_end:
            _evaluate(run, step)
        _save(run, step)
        if preempted:
            raise Preempted(step)
    return step


def _evaluate(run: _Run, step: int) -> None:
    metrics = run.job.evaluate()
    epoch = (step - 1) // run.job.steps_per_epoch
    run.run_log.write({"step": step, "epoch": epoch, **metrics}, prefix="val")
    if is_main_process():
        log.info(f"epoch {epoch} step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
    key = run.job.best_metric
    if metrics[key] > run.best.get(key, float("-inf")):
        run.best = dict(metrics)
        _save(run, step, "checkpoint-best.pt", numbered=False)


def _save(run: _Run, step: int, name: str = ckpt_io.LAST, numbered: bool = True) -> None:
    """Called on every rank: gathering a sharded model's state and the ranks' random states are collective."""
    job = run.job
    model_sd = model_state(job.model, job.sharded)
    optim_sd = optimizer_state(job.model, job.optimizer, job.sharded)
    rngs = ckpt_io.gather_rng_states()
    if not is_main_process():
        return
    state = {
        "model": model_sd,
        "optimizer": optim_sd,
        "scaler": run.scaler.state_dict(),
        "step": step,
        "rng": rngs[0],
        "rng_ranks": rngs,
        "sharded": job.sharded,
        "config": OmegaConf.to_container(run.cfg, enum_to_str=True),
        "best": run.best,
        **job.extra,
    }
    keep = run.cfg.train.keep_checkpoints if numbered else 0
    ckpt_io.save_training_checkpoint(run.cfg.output_dir, name, state, keep)
