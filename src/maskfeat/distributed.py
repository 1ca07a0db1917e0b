"""Devices and processes: torchrun's process group (one process per GPU with NCCL, or per CPU worker with gloo),
DDP / FSDP wrapping and the full-state gathering of a sharded model, and the pre-emption signals."""

from __future__ import annotations

import inspect
import logging
import os
import signal
import threading
import time

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn

from maskfeat.errors import ConfigError

log = logging.getLogger("maskfeat")


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1). Returns ``(rank, world_size)``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def all_gather_lists(items: list) -> list:
    """Every process's ``items`` (picklable), concatenated in rank order, on every process.

    A collective: call it on every rank at the same point of the program. It costs one all-reduce of the counts,
    plus an object all-gather only when some rank has items. Without a process group: a copy of ``items``.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(items)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    count = torch.tensor([len(items)], dtype=torch.int64, device=device)
    dist.all_reduce(count)
    if count.item() == 0:
        return []
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]


def cleanup() -> None:
    """Leave the process group, then give its worker threads time to finish before the interpreter exits.

    gloo's worker thread releases a finished collective's tensors after the caller has gone on; releasing one that
    Python holds (a parameter shard, all-gathered for the final FSDP state) takes the GIL, and a thread asking for
    the GIL once the interpreter is finalizing is ended by CPython through a C++ noexcept frame: "terminate called
    without an active exception", SIGABRT, on a rank with nothing left to write, after every output was written
    (about 1 run in 10 with two processes). A short wait without the GIL lets the thread finish: 0 aborts in 60 runs
    (a barrier does not help: gloo's barrier holds the gather in flight and releases it on its own thread).
    """
    if dist.is_initialized():
        dist.destroy_process_group()
        time.sleep(0.1)


def resolve_device(name: str) -> torch.device:
    """``auto`` = CUDA when present (this process's local GPU under torchrun), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA device is available (use device=auto or device=cpu)")
        name = f"cuda:{local_rank()}"
    return torch.device(name)


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


def model_state(model: nn.Module, sharded: bool = False) -> dict:
    """The whole model's state dict (plain tensors). Sharded: gathered from every process (a collective: call it
    on all ranks) onto rank 0's CPU; the other ranks get an empty dict."""
    if not sharded:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_state_options(cpu_offload=True))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, sharded: bool = False) -> dict:
    """The optimizer's state dict; sharded: gathered like :func:`model_state` (keyed by parameter names)."""
    if not sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_state_options(cpu_offload=True))


def load_training_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optimizer_sd: dict,
                        sharded: bool = False) -> None:  # fmt: skip
    """Load full (unsharded) model and optimizer state dicts, sharding them when the model is."""
    if not sharded:
        model.load_state_dict(model_sd)
        optimizer.load_state_dict(optimizer_sd)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, model_sd, options=_full_state_options())
    set_optimizer_state_dict(model, optimizer, optimizer_sd, options=_full_state_options())


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
