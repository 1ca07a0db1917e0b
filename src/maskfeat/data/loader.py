"""The data loader of every command: a seeded, resumable loader over a data set."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import torch

from .sampler import SeededSampler


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
    epoch_size: int | None = None,
) -> tuple[torch.utils.data.DataLoader, SeededSampler]:
    """A loader over ``dataset`` with a :class:`SeededSampler` (shuffled, drop-last batches when ``train``).

    ``workers`` < 0 means min(8, CPU cores); ``epoch_size``: samples an epoch draws (None = the data set's size).
    """
    workers = min(8, os.cpu_count() or 1) if workers < 0 else workers
    sampler = SeededSampler(len(dataset), seed=seed, shuffle=train, rank=rank, world_size=world_size, drop_last=train,
                           epoch_size=epoch_size)  # fmt: skip
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


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process: it saves a checkpoint, which may still need batches
    (a worker that got SIGINT would end, and the loader would fail with "worker exited unexpectedly")."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
