"""What every training command shares: device and processes, data loaders, and ``fit``, the outer loop that
resumes, trains epoch by epoch, evaluates, logs and checkpoints.

``pretrain``, ``finetune`` and ``linprobe`` build their model, loss and optimizer, then hand them to ``fit``.
"""

from __future__ import annotations

import glob
import inspect
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
from maskfeat.config import Config, ConfigError, to_yaml
from maskfeat.data import SeededSampler, sample_image_folder, sample_video_folder
from maskfeat.distributed import all_gather_lists, cleanup, init_distributed, is_main_process, local_rank
from maskfeat.engine import LoopOptions, LoopStats, train_one_epoch
from maskfeat.errors import Interrupted, Preempted
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


def _is_video(cfg: DictConfig) -> bool:
    from maskfeat.models.video_vit import VIDEO_ARCHITECTURES

    return cfg.model.name in VIDEO_ARCHITECTURES


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
        worker_init_fn=_ignore_sigint if workers > 0 else None,
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
    """DDP over processes (no buffer broadcast before each forward: ViTs have no running statistics, and the
    linear probe's BatchNorm keeps per-process ones) unless the model is already sharded with FSDP; optionally
    torch.compile."""
    if world_size > 1 and not sharded:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, **_no_forward_buffer_sync()
        )
    if compile_model:
        model = torch.compile(model)
    return model


def _no_forward_buffer_sync() -> dict:
    """DDP's argument for "do not broadcast buffers before each forward". PyTorch 2.13 renamed it
    ``forward_sync_buffers`` and warns (once per process) on the old ``broadcast_buffers``, which older versions
    need. The new one still syncs buffers once at construction, harmless here: they are equal on every rank."""
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


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


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process: it saves a checkpoint, which may still need batches
    (a worker that got SIGINT would end, and the loader would fail with "worker exited unexpectedly")."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class PreemptionSignals:
    """SIGTERM / SIGUSR1 (a cluster's pre-emption notice) and a first Ctrl-C (SIGINT) set a flag; the loop saves a
    checkpoint at the next step boundary and stops. A second Ctrl-C stops at once, without saving (one that comes
    within ``REPEAT_S`` of the first is the same Ctrl-C forwarded again, as torchrun's agent does, and is ignored).
    With several processes the flag is agreed on (max over ranks) every ``every`` steps, so all ranks stop at the
    same step. ``received`` names the first signal."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    REPEAT_S = 1.0

    def __init__(self, every: int):
        self.every, self.flag, self.previous = every, False, {}
        self.received: str | None = None
        self._sigint_at: float | None = None

    def __enter__(self) -> PreemptionSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            now = time.monotonic()
            if self._sigint_at is not None:
                if now - self._sigint_at < self.REPEAT_S:
                    return
                log.warning("second Ctrl-C: stopping now, without saving (a rerun resumes from the last checkpoint)")
                raise KeyboardInterrupt
            self._sigint_at = now
        if not self.flag:
            self.received = signal.Signals(signum).name
            again = "; press Ctrl-C again to stop at once, without saving" if signum == signal.SIGINT else ""
            log.warning(f"received {self.received}: saving a checkpoint at the end of this step{again}")
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


# Keys that say how a run is carried out, not what it computes: they may change when a run is continued.
FREE_ON_RESUME = ("data.num_workers", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                  "train.max_steps", "train.resume", "train.compile", "device", "model.allow_pickle",
                  "visualize.num_images")  # fmt: skip


def _flat(node: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    """``key: old -> new`` for every key whose value differs between two config dicts, except the keys of
    :data:`FREE_ON_RESUME`."""
    a, b = _flat(saved), _flat(current)
    keys = sorted((set(a) | set(b)) - set(FREE_ON_RESUME))
    return [f"{k}: {a.get(k)} -> {b.get(k)}" for k in keys if a.get(k) != b.get(k)]


def check_same_run(cfg: DictConfig, saved: dict | None = None) -> None:
    """Before continuing the run in ``output_dir``: its settings (its ``config.yaml``, or ``saved``, the config
    inside its checkpoint) must be those of ``cfg``. Otherwise stop with one line naming the keys that differ,
    unless ``train.resume=force`` (then warn and continue with the new settings)."""
    path = os.path.join(cfg.output_dir, "config.yaml")
    if os.path.isfile(path):
        saved = OmegaConf.to_container(OmegaConf.load(path))
    if not saved:
        return
    try:  # a key the saved run did not have (an older maskfeat) had its default
        saved = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(Config), saved))
    except Exception:  # a key that no longer exists: compare as saved
        pass
    changed = config_differences(saved, OmegaConf.to_container(cfg))
    if not changed:
        return
    listed = "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
    if cfg.train.resume == "force":
        log.warning(f"train.resume=force: continuing the run in {cfg.output_dir} with other settings ({listed})")
        return
    raise ConfigError(
        f"{cfg.output_dir} holds a run with other settings ({listed}): choose a new output_dir=... to start a new "
        "run, or pass train.resume=force to continue that one with these settings"
    )


def resume(cfg: DictConfig, job: Job, scaler: torch.amp.GradScaler) -> tuple[int, dict]:
    """Load ``output_dir/checkpoint-last.pt`` into the job when it exists.

    Returns the step to continue from and the best evaluation metrics so far.
    """
    last = os.path.join(cfg.output_dir, ckpt_io.LAST)
    candidates = [p for p in [last, *reversed(_numbered(cfg.output_dir))] if os.path.isfile(p)]
    if not candidates:
        check_same_run(cfg)  # a run killed before its first checkpoint left only its config.yaml
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
    check_same_run(cfg, state.get("config"))
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
    sample = "clips" if _is_video(cfg) else "img"
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
            "config": OmegaConf.to_container(cfg, enum_to_str=True),
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
        except Preempted as e:
            if signals.received == "SIGINT":  # Ctrl-C: exit status 130, as an interrupted command
                raise Interrupted(e.step) from None
            raise
        finally:
            run_log.close()
    if job.finish is not None:
        final_state = model_state(job)  # collective when sharded
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
