"""Seeded sampling: per-sample augmentation seeds, a seeded RNG scope and a shuffling, sharding, resumable sampler.

Reproducibility design: the sampler (main process) yields ``(index, sample_seed)`` keys where ``sample_seed`` is a
hash of ``(seed, epoch, index)``; the data sets (:class:`maskfeat.data.images.ImageDataset`,
:class:`maskfeat.data.video.VideoDataset`) seed torch's and Python's RNGs with it (:func:`seeded_rngs`) around the
random transform. The augmentation of a sample therefore depends only on ``(seed, epoch, index)``: not on the number of
workers, on which worker handles it, nor on whether the epoch was interrupted and resumed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["SeededSampler", "sample_seed", "seeded_rngs"]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _epoch_key(seed: int, epoch: int) -> np.uint64:
    key = _splitmix64(np.array([seed & _MASK64], dtype=np.uint64))
    return _splitmix64(key ^ np.uint64(epoch & _MASK64))[0]


def _sample_seeds(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """63-bit non-negative seeds for ``indices`` (int64 array) in ``epoch``."""
    mixed = _splitmix64(indices.astype(np.uint64) ^ _epoch_key(seed, epoch))
    return (mixed >> np.uint64(1)).astype(np.int64)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` of a run seeded with ``seed``.

    A splitmix64 hash of ``(seed, epoch, index)``, well mixed, in ``[0, 2**63)``.
    """
    return int(_sample_seeds(seed, epoch, np.array([index], dtype=np.int64))[0])


@contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seeds torch's CPU RNG, Python's ``random`` and NumPy's global RNG from ``seed`` (the random transforms draw
    from them: timm's RandAugment picks its operations with NumPy); restores their previous states on exit, so a
    ``num_workers=0`` loader does not disturb the training process's streams."""
    torch_state, python_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    try:
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class SeededSampler(Sampler):
    """Shuffling, sharding, resumable sampler that yields ``(index, sample_seed)`` keys for :class:`ImageDataset`.

    The order of an epoch is ``torch.randperm`` with a generator seeded from ``(seed, epoch)`` only; it is split
    across ranks as ``torch.utils.data.DistributedSampler`` does (rank ``r`` takes positions ``r, r + W, ...``;
    without ``drop_last`` the order is padded by repeating its start so every rank gets the same count, with it
    the tail is dropped). ``sample_seed`` is :func:`sample_seed` of ``(seed, epoch, index)``.

    Call :meth:`set_epoch` before each epoch. To resume mid-epoch call :meth:`set_start` with the number of
    samples this rank had already consumed, after :meth:`set_epoch`; the next :meth:`set_epoch` resets it to 0.

    With ``epoch_size`` an epoch is that many samples, whatever the data set's size: the sampler walks an endless
    sequence of passes (pass ``p`` a permutation seeded from ``(seed, p)``, its samples' seeds from ``(seed, p,
    index)``) and epoch ``e`` is its positions ``e * epoch_size`` to ``(e + 1) * epoch_size``. A small data set is
    then seen several times an epoch, a large one in part. Without it (or with the data set's size) pass and epoch
    are the same and the order is exactly the one described above.

    Args:
        num_samples: size of the data set.
        seed: base seed of the run.
        shuffle: random order (else ``0..num_samples-1``; seeds still vary by epoch).
        rank: this process's rank.
        world_size: number of processes.
        drop_last: drop the tail instead of padding so ranks get equal counts.
        epoch_size: samples per epoch (over all ranks); None = ``num_samples``.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        epoch_size: int | None = None,
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if epoch_size is not None and (epoch_size < 1 or num_samples == 0):
            raise ValueError(f"epoch_size must be >= 1 on a non-empty data set, got {epoch_size} for {num_samples}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} for world_size {world_size}")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0
        self.epoch_size = self.num_samples if epoch_size is None else int(epoch_size)
        if drop_last:
            self.per_rank = self.epoch_size // world_size
        else:
            self.per_rank = math.ceil(self.epoch_size / world_size)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch (its order and seeds) and resets the resume position to 0."""
        self.epoch = int(epoch)
        self.start = 0

    def set_start(self, position: int) -> None:
        """Skips the first ``position`` samples of this rank's sequence for the current epoch."""
        if not 0 <= position <= self.per_rank:
            raise ValueError(f"start position {position} outside 0..{self.per_rank}")
        self.start = int(position)

    def _pass_order(self, p: int) -> np.ndarray:
        """The order of pass ``p`` over the data set: a permutation seeded from ``(seed, p)`` (or 0..n-1)."""
        if not self.shuffle:
            return np.arange(self.num_samples, dtype=np.int64)
        generator = torch.Generator()
        generator.manual_seed(int(_epoch_key(self.seed, p) >> np.uint64(1)))
        return torch.randperm(self.num_samples, generator=generator).numpy()

    def _epoch_order(self) -> tuple[np.ndarray, np.ndarray]:
        """The current epoch's samples over all ranks, ``(indices, pass of each)``, int64 ``(epoch_size,)``."""
        n, size = self.num_samples, self.epoch_size
        if n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        begin = self.epoch * size
        first, last = begin // n, (begin + size - 1) // n
        order = np.concatenate([self._pass_order(p) for p in range(first, last + 1)])
        passes = np.repeat(np.arange(first, last + 1, dtype=np.int64), n)
        offset = begin - first * n
        return order[offset : offset + size].astype(np.int64), passes[offset : offset + size]

    def _rank_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's ``(indices, passes)`` for the current epoch, before :meth:`set_start`."""
        order, passes = self._epoch_order()
        total = self.per_rank * self.world_size
        if total > len(order) and len(order) > 0:  # pad by repeating the start, as DistributedSampler does
            order, passes = np.resize(order, total), np.resize(passes, total)
        return order[self.rank : total : self.world_size], passes[self.rank : total : self.world_size]

    def rank_indices(self) -> np.ndarray:
        """This rank's full index sequence for the current epoch (before :meth:`set_start`), int64 ``(per_rank,)``."""
        return self._rank_keys()[0]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices, passes = (keys[self.start :] for keys in self._rank_keys())
        seeds = np.empty(len(indices), dtype=np.int64)
        for p in np.unique(passes):
            where = passes == p
            seeds[where] = _sample_seeds(self.seed, int(p), indices[where])
        return iter(zip(indices.tolist(), seeds.tolist()))

    def __len__(self) -> int:
        return self.per_rank - self.start


def label_subset(labels: list[int], fraction: float, seed: int) -> list[int]:
    """Indices of a class-balanced ``fraction`` of the samples (at least one per class), chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    labels_np = np.asarray(labels)
    keep = []
    for c in np.unique(labels_np):
        idx = np.flatnonzero(labels_np == c)
        keep.extend(rng.permutation(idx)[: max(1, math.ceil(fraction * len(idx)))].tolist())
    return sorted(keep)
