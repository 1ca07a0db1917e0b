"""Tests of maskfeat.data.sampler: seeded, sharded, resumable order and per-sample seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from maskfeat.data import ImageDataset, pretrain_transform
from maskfeat.data.sampler import SeededSampler, sample_seed


def test_sampler_deterministic_per_epoch() -> None:
    a, b = SeededSampler(100, seed=3), SeededSampler(100, seed=3)
    assert list(a) == list(b)
    assert sorted(i for i, _ in a) == list(range(100))
    first = list(a)
    a.set_epoch(1)
    assert [i for i, _ in a] != [i for i, _ in first]
    assert SeededSampler(100, seed=4).rank_indices().tolist() != [i for i, _ in first]
    seeds = [s for _, s in a]
    assert all(0 <= s < 2**63 for s in seeds) and len(set(seeds)) == 100
    assert seeds[0] == sample_seed(3, 1, next(iter(a))[0])
    unshuffled = SeededSampler(10, seed=0, shuffle=False)
    assert [i for i, _ in unshuffled] == list(range(10))


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_ranks_partition(drop_last: bool) -> None:
    n = 101
    ranks = [SeededSampler(n, seed=1, rank=r, world_size=2, drop_last=drop_last) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(5)
    parts = [[i for i, _ in sampler] for sampler in ranks]
    assert len(parts[0]) == len(parts[1]) == len(ranks[0])
    covered = set(parts[0]) | set(parts[1])
    if drop_last:
        assert len(parts[0]) == 50 and not set(parts[0]) & set(parts[1]) and len(covered) == 100
    else:
        assert len(parts[0]) == 51 and covered == set(range(n))
    # the two ranks interleave the single-process order, as DistributedSampler does
    single = SeededSampler(n, seed=1)
    single.set_epoch(5)
    order = [i for i, _ in single]
    assert parts[0][:50] == order[0:100:2] and parts[1][:50] == order[1:100:2]


def test_sampler_set_start_resumes_exactly() -> None:
    sampler = SeededSampler(37, seed=9, rank=1, world_size=3)
    sampler.set_epoch(2)
    full = list(sampler)
    for k in (0, 1, 5, len(full)):
        sampler.set_epoch(2)
        sampler.set_start(k)
        assert len(sampler) == len(full) - k
        assert full[:k] + list(sampler) == full
    sampler.set_epoch(3)
    assert len(sampler) == len(full)
    with pytest.raises(ValueError):
        sampler.set_start(len(full) + 1)


def _epochs(sampler: SeededSampler, epochs: range) -> list[tuple[int, int]]:
    keys = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        keys += list(sampler)
    return keys


def test_sampler_epoch_size_is_a_stream_of_passes() -> None:
    """An epoch of ``epoch_size`` samples is a window on an endless sequence of passes, each pass a permutation of
    the data set with the seeds of that pass; with the data set's own size it is the plain sampler, key for key."""
    assert _epochs(SeededSampler(37, seed=2, epoch_size=37), range(4)) == _epochs(SeededSampler(37, seed=2), range(4))
    n, size = 10, 25  # an epoch is 2.5 passes: the passes straddle the epochs
    stream = _epochs(SeededSampler(n, seed=5, epoch_size=size), range(4))
    assert len(stream) == 4 * size
    for p in range(4 * size // n):
        chunk = stream[p * n : (p + 1) * n]
        assert sorted(i for i, _ in chunk) == list(range(n))  # every pass sees every sample once
        assert [s for i, s in chunk] == [sample_seed(5, p, i) for i, _ in chunk]  # with its own augmentation seed
    assert len({s for _, s in stream}) == len(stream)  # a sample repeated in an epoch is augmented anew
    plain = _epochs(SeededSampler(n, seed=5), range(10))  # pass p of the stream is epoch p of the plain sampler
    assert stream == plain
    big = SeededSampler(1000, seed=1, epoch_size=64)  # a large set: an epoch is a part of a pass
    parts = [[i for i, _ in keys] for keys in (_epochs(big, range(e, e + 1)) for e in range(3))]
    assert all(len(part) == 64 for part in parts) and len(set(sum(parts, []))) == 3 * 64


@pytest.mark.parametrize("world_size", [2, 3])
def test_sampler_epoch_size_ranks_and_resume(world_size: int) -> None:
    """With ``epoch_size`` the ranks still split one epoch between them, and set_start resumes exactly."""
    single = _epochs(SeededSampler(7, seed=9, epoch_size=30, drop_last=True), range(2, 3))
    ranks = [SeededSampler(7, seed=9, epoch_size=30, rank=r, world_size=world_size, drop_last=True)
             for r in range(world_size)]  # fmt: skip
    parts = [_epochs(r, range(2, 3)) for r in ranks]
    assert all(len(part) == 30 // world_size for part in parts)
    woven = [parts[k % world_size][k // world_size] for k in range(world_size * len(parts[0]))]
    assert woven == single[: len(woven)]
    ranks[0].set_epoch(2)
    ranks[0].set_start(4)
    assert list(ranks[0]) == parts[0][4:]


def test_loader_identical_across_worker_counts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (24 + i, 30, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    dataset = ImageDataset(tmp_path, pretrain_transform(16))
    sampler = SeededSampler(len(dataset), seed=5)
    sampler.set_epoch(1)

    def run(workers: int) -> list[dict]:
        torch.manual_seed(1234)
        loader = DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=workers)
        return list(loader)

    single, multi = run(0), run(2)
    assert len(single) == len(multi) == 4
    for a, b in zip(single, multi):
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["seed"], b["seed"]) and torch.equal(a["label"], b["label"])
    # the dataset restores the caller's RNG: a num_workers=0 loader does not perturb the training RNG stream
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    dataset[(0, 42)]
    assert torch.equal(torch.rand(3), expected)
