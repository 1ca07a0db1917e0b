"""torchrun / DDP helpers: one process per GPU (NCCL) or per CPU worker (gloo)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


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
    if dist.is_initialized():
        dist.destroy_process_group()
