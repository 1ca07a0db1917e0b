"""Tests for maskfeat.masking and maskfeat.mask_blocks: exact counts, reproducibility, block shape, pinned masks."""

import hashlib
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskfeat.mask_blocks import _neighbours, block_mask_3d, grow_mask
from maskfeat.masking import (
    MASK_FUNCTIONS,
    block_mask,
    cube_mask,
    frame_mask,
    get_mask_function,
    random_mask,
    tube_mask,
    upsample_mask,
)

SEEDS = range(200)
RATIOS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
IMAGE_GRIDS = [(14, 14), (7, 7), (3, 5), (1, 1), (2, 8), (16, 16), (1, 7), (7, 1), (2, 2)]
VIDEO_GRIDS = [(8, 7, 7), (4, 14, 14), (1, 4, 4), (2, 3, 5), (1, 1, 1), (3, 1, 6)]


def masked_neighbour_fraction(mask: torch.Tensor) -> float:
    """Mean, over masked cells, of the fraction of their in-grid face-neighbours that are masked.

    ``mask`` is (H, W) (4-neighbourhood) or (T, H, W) (6-neighbourhood, time included). About ``ratio`` for random
    masks, close to 1 for compact blocks.
    """
    m = mask.float()
    if m.dim() == 2:
        m = m[None]
    time = m.shape[0] > 1

    def neighbour_sum(x: torch.Tensor) -> torch.Tensor:  # x: (T + 2, H + 2, W + 2) zero-padded
        s = x[1:-1, 1:-1, :-2] + x[1:-1, 1:-1, 2:] + x[1:-1, :-2, 1:-1] + x[1:-1, 2:, 1:-1]
        if time:
            s = s + x[:-2, 1:-1, 1:-1] + x[2:, 1:-1, 1:-1]
        return s

    masked = neighbour_sum(F.pad(m, (1, 1, 1, 1, 1, 1)))
    present = neighbour_sum(F.pad(torch.ones_like(m), (1, 1, 1, 1, 1, 1)))
    return ((masked / present) * m).sum().item() / m.sum().item()


# ------------------------------------------------------------------------------------------------------------------
# Exact counts, shapes, dtypes
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", IMAGE_GRIDS)
def test_block_mask_exact_count(grid):
    h, w = grid
    for ratio in RATIOS:
        expected = round(ratio * h * w)
        for seed in SEEDS:
            m = block_mask(h, w, ratio, seed)
            assert m.shape == (h, w) and m.dtype == torch.bool
            assert int(m.sum()) == expected, (grid, ratio, seed)


@pytest.mark.parametrize("grid", VIDEO_GRIDS)
def test_cube_mask_exact_count(grid):
    for ratio in RATIOS:
        expected = round(ratio * math.prod(grid))
        for seed in SEEDS:
            m = cube_mask(*grid, ratio, seed)
            assert m.shape == grid and m.dtype == torch.bool
            assert int(m.sum()) == expected, (grid, ratio, seed)


@pytest.mark.parametrize("grid", VIDEO_GRIDS)
def test_tube_mask_exact_count_and_same_on_every_step(grid):
    t, h, w = grid
    for ratio in RATIOS[::2]:
        for seed in range(50):
            m = tube_mask(t, h, w, ratio, seed)
            assert m.shape == grid and m.dtype == torch.bool
            assert int(m.sum()) == t * round(ratio * h * w)
            assert torch.equal(m, m[:1].expand(t, h, w))
            assert torch.equal(m[0], block_mask(h, w, ratio, seed))


@pytest.mark.parametrize("grid", VIDEO_GRIDS)
def test_frame_mask_masks_whole_steps(grid):
    t, h, w = grid
    for ratio in RATIOS:
        for seed in range(50):
            m = frame_mask(t, h, w, ratio, seed)
            assert m.shape == grid and m.dtype == torch.bool
            per_step = m.flatten(1).sum(1)
            assert set(per_step.tolist()) <= {0, h * w}
            assert int((per_step > 0).sum()) == round(ratio * t)


@pytest.mark.parametrize("shape", [(14, 14), (8, 7, 7), (1,), (3, 5), (2, 1, 3, 4)])
def test_random_mask_exact_count(shape):
    for ratio in RATIOS:
        for seed in SEEDS:
            m = random_mask(shape, ratio, seed)
            assert m.shape == shape and m.dtype == torch.bool
            assert int(m.sum()) == round(ratio * math.prod(shape))


def test_ratio_edges_on_tiny_grids():
    assert not block_mask(1, 1, 0.4, 0).any()  # round(0.4) == 0
    assert block_mask(1, 1, 0.6, 0).all()
    assert block_mask(2, 2, 1.0, 0).all() and not block_mask(2, 2, 0.0, 0).any()
    assert cube_mask(3, 2, 2, 1.0, 0).all() and not cube_mask(3, 2, 2, 0.0, 0).any()
    assert not block_mask(14, 14, 0.001, 0).any()  # round(0.196) == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda: block_mask(14, 14, -0.1),
        lambda: block_mask(14, 14, 1.1),
        lambda: block_mask(14, 14, float("nan")),
        lambda: block_mask(0, 14),
        lambda: block_mask(14, -1),
        lambda: cube_mask(0, 7, 7),
        lambda: cube_mask(2, 7, 7, 2.0),
        lambda: tube_mask(0, 7, 7),
        lambda: frame_mask(2, 0, 7),
        lambda: random_mask((3, 0), 0.5),
        lambda: random_mask((), 0.5),
        lambda: random_mask((4,), -1.0),
    ],
)
def test_bad_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


# ------------------------------------------------------------------------------------------------------------------
# Reproducibility
# ------------------------------------------------------------------------------------------------------------------

ALL_KINDS = [
    ("block", lambda g: block_mask(14, 14, 0.4, g)),
    ("cube", lambda g: cube_mask(8, 7, 7, 0.4, g)),
    ("tube", lambda g: tube_mask(8, 7, 7, 0.4, g)),
    ("frame", lambda g: frame_mask(16, 2, 2, 0.5, g)),
    ("random", lambda g: random_mask((14, 14), 0.4, g)),
]


@pytest.mark.parametrize("name,draw", ALL_KINDS)
def test_same_seed_same_mask_different_seeds_differ(name, draw):
    masks = [draw(seed) for seed in range(100)]
    for seed in range(0, 100, 7):
        assert torch.equal(masks[seed], draw(seed))
    distinct = {m.flatten().tolist().__repr__() for m in masks}
    assert len(distinct) >= 95, (name, len(distinct))


@pytest.mark.parametrize("name,draw", ALL_KINDS)
def test_generator_object_matches_int_seed(name, draw):
    for seed in (0, 1, 12345, 2**40 + 3):
        assert torch.equal(draw(torch.Generator().manual_seed(seed)), draw(seed))
    # A generator object advances: two draws from one generator differ, and replay from the same state.
    g = torch.Generator().manual_seed(7)
    first, second = draw(g), draw(g)
    assert not torch.equal(first, second)
    g.manual_seed(7)
    assert torch.equal(draw(g), first) and torch.equal(draw(g), second)


def test_none_uses_global_torch_rng():
    torch.manual_seed(3)
    a = [block_mask(14, 14, 0.4), cube_mask(4, 7, 7, 0.4), random_mask((14, 14), 0.4)]
    torch.manual_seed(3)
    b = [block_mask(14, 14, 0.4), cube_mask(4, 7, 7, 0.4), random_mask((14, 14), 0.4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(block_mask(14, 14, 0.4), block_mask(14, 14, 0.4))


def test_bad_generator_type_raises():
    with pytest.raises(TypeError):
        block_mask(14, 14, 0.4, "0")


# ------------------------------------------------------------------------------------------------------------------
# Shape of the masks
# ------------------------------------------------------------------------------------------------------------------


def test_block_masks_are_block_shaped():
    block = [masked_neighbour_fraction(block_mask(14, 14, 0.4, s)) for s in SEEDS]
    rand = [masked_neighbour_fraction(random_mask((14, 14), 0.4, s)) for s in SEEDS]
    block_mean, rand_mean = sum(block) / len(block), sum(rand) / len(rand)
    # Measured over 400 seeds: block ~0.86 (min ~0.79), random ~0.40 (max ~0.51), i.e. ~ratio.
    assert block_mean >= rand_mean + 0.3, (block_mean, rand_mean)
    assert abs(rand_mean - 0.4) < 0.05
    assert min(block) > max(rand) - 0.05


def test_cube_masks_are_spatio_temporally_contiguous():
    cube = [masked_neighbour_fraction(cube_mask(8, 7, 7, 0.4, s)) for s in SEEDS]
    rand = [masked_neighbour_fraction(random_mask((8, 7, 7), 0.4, s)) for s in SEEDS]
    cube_mean, rand_mean = sum(cube) / len(cube), sum(rand) / len(rand)
    # Measured over 400 seeds: cube ~0.82, random ~0.40.
    assert cube_mean >= rand_mean + 0.3, (cube_mean, rand_mean)


def test_cube_masks_vary_over_time():
    # Cubes start and stop at random time steps: unlike tubes, the masked area changes from step to step.
    varying = sum(not torch.equal(m, m[:1].expand_as(m)) for m in (cube_mask(8, 7, 7, 0.4, s) for s in range(50)))
    assert varying >= 45
    # ...and time neighbours of masked cells are mostly masked (cubes span several steps, not one).
    masks = torch.stack([cube_mask(8, 7, 7, 0.4, s) for s in range(100)])
    both = (masks[:, 1:] & masks[:, :-1]).sum().item()
    either = (masks[:, 1:] | masks[:, :-1]).sum().item()
    assert both / either > 0.5


def test_block_mask_single_row_is_contiguous_run():
    # On a 1 x N grid, blocks are runs; the finishing step grows them at their ends: a few runs at most.
    for seed in range(50):
        row = block_mask(1, 32, 0.5, seed)[0].int()
        runs = int((row[1:] > row[:-1]).sum()) + int(row[0])
        assert 1 <= runs <= 4, (seed, row.tolist())


# ------------------------------------------------------------------------------------------------------------------
# By-name functions and upsampling
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,grid",
    [
        ("block", (14, 14)),
        ("random", (14, 14)),
        ("random", (8, 7, 7)),
        ("cube", (8, 7, 7)),
        ("tube", (8, 7, 7)),
        ("frame", (8, 7, 7)),
        ("cube", (7, 7)),
        ("tube", (7, 7)),
        ("frame", (7, 7)),
    ],
)
def test_mask_functions_uniform_signature(name, grid):
    fn = get_mask_function(name)
    assert fn is MASK_FUNCTIONS[name]
    m = fn(grid, 0.6, 5)
    assert m.shape == grid and m.dtype == torch.bool
    assert torch.equal(m, fn(grid, 0.6, torch.Generator().manual_seed(5)))


def test_mask_functions_match_direct_calls():
    assert torch.equal(MASK_FUNCTIONS["block"]((14, 14), 0.4, 9), block_mask(14, 14, 0.4, 9))
    assert torch.equal(MASK_FUNCTIONS["cube"]((8, 7, 7), 0.4, 9), cube_mask(8, 7, 7, 0.4, 9))
    assert torch.equal(MASK_FUNCTIONS["cube"]((7, 7), 0.4, 9), cube_mask(1, 7, 7, 0.4, 9)[0])
    assert torch.equal(MASK_FUNCTIONS["tube"]((7, 7), 0.4, 9), block_mask(7, 7, 0.4, 9))


def test_unknown_mask_name_lists_valid_names():
    with pytest.raises(ValueError, match="block.*cube.*frame.*random.*tube"):
        get_mask_function("blocks")


def test_grid_dimension_errors():
    with pytest.raises(ValueError):
        MASK_FUNCTIONS["block"]((8, 7, 7), 0.4, 0)
    with pytest.raises(ValueError):
        MASK_FUNCTIONS["cube"]((7,), 0.4, 0)


def test_upsample_mask():
    coarse = random_mask((2, 3, 4), 0.5, 0)
    fine = upsample_mask(coarse, (1, 2, 3))
    assert fine.shape == (2, 6, 12) and fine.dtype == torch.bool
    for t, y, x in [(t, y, x) for t in range(2) for y in range(6) for x in range(12)]:
        assert fine[t, y, x] == coarse[t, y // 2, x // 3]
    batch = torch.stack([coarse, ~coarse])
    assert torch.equal(upsample_mask(batch, (1, 2, 3)), torch.stack([fine, ~fine]))
    with pytest.raises(ValueError):
        upsample_mask(coarse, (1, 0, 2))
    with pytest.raises(ValueError):
        upsample_mask(coarse, (1, 1, 1, 1))


# ------------------------------------------------------------------------------------------------------------------
# Pinned masks and the block-growing routine
# ------------------------------------------------------------------------------------------------------------------

# sha256 (first 16 hex digits) of the packed masks of seeds 0..7: any change to what a seed draws shows here (resumed
# runs and the SIGKILL-resume test rely on a seed always giving the same mask).
PINNED = {
    "block": (lambda s: block_mask(14, 14, 0.4, s), "2ff2dcd5f73301ef"),
    "cube": (lambda s: cube_mask(8, 7, 7, 0.4, s), "7838c9826794eb63"),  # the official settings since 2026-12-01
    "tube": (lambda s: tube_mask(8, 7, 7, 0.4, s), "baf4a055a94a8781"),
    "frame": (lambda s: frame_mask(8, 7, 7, 0.5, s), "9116370baa57a95b"),
    "random": (lambda s: random_mask((8, 7, 7), 0.4, s), "c7719d76ed650c50"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_masks_of_fixed_seeds_are_pinned(name):
    draw, digest = PINNED[name]
    packed = b"".join(np.packbits(draw(seed).numpy()).tobytes() for seed in range(8))
    assert hashlib.sha256(packed).hexdigest()[:16] == digest


def test_neighbours_are_the_face_neighbours_in_grid():
    shape = (3, 4, 5)
    for cell in range(math.prod(shape)):
        t, y, x = np.unravel_index(cell, shape)
        expected = []
        for dt, dy, dx in ((0, 0, -1), (0, 0, 1), (0, -1, 0), (0, 1, 0), (-1, 0, 0), (1, 0, 0)):
            n = (t + dt, y + dy, x + dx)
            if all(0 <= i < s for i, s in zip(n, shape)):
                expected.append(int(np.ravel_multi_index(n, shape)))
        assert _neighbours(cell, shape) == expected


@pytest.mark.parametrize("shape", [(1, 6, 6), (3, 4, 5)])
def test_grow_mask_from_empty_grows_one_connected_region(shape):
    for seed in range(20):
        mask = np.zeros(shape, dtype=bool)
        grow_mask(mask, 9, random.Random(seed))
        assert mask.sum() == 9
        # Flood fill from one masked cell reaches every masked cell.
        start = int(np.flatnonzero(mask)[0])
        seen, todo = {start}, [start]
        while todo:
            for n in _neighbours(todo.pop(), shape):
                if mask.reshape(-1)[n] and n not in seen:
                    seen.add(n)
                    todo.append(n)
        assert len(seen) == 9


# The official generator (SlowFast's MaskingGenerator3D, commit 287ec0076846) on the official 8 x 7 x 7 grid at ratio
# 0.4: 20,000 draws (random.seed(1)), of which the 7,080 exact ones (157 cells) give these means and standard errors.
# The official code is not part of this project; BENCHMARKS.md ("Cube masks against the official generator") has
# the method and the figures of both generators.
OFFICIAL_EXACT_CUBES = {
    "components": (1.1037, 0.0038),  # 3-D face-connected components per mask
    "neighbour_rate": (0.8449, 0.0004),  # of a masked cell's in-grid spatial neighbours, the fraction masked
    "time_steps_touched": (6.773, 0.012),  # time steps with at least one masked cell
    "end_frames_fraction": (0.2322, 0.0016),  # masked fraction of the first and last time steps
}


def _cube_statistics(masks: np.ndarray) -> dict[str, tuple[float, float]]:
    from scipy import ndimage

    comps, rates = [], []
    for m in masks:
        comps.append(ndimage.label(m)[1])
        pairs = [(m[:, 1:, :], m[:, :-1, :]), (m[:, :-1, :], m[:, 1:, :]), (m[:, :, 1:], m[:, :, :-1]),
                 (m[:, :, :-1], m[:, :, 1:])]  # fmt: skip
        rates.append(sum((a & b).sum() for a, b in pairs) / sum(a.sum() for a, _ in pairs))
    values = {"components": comps, "neighbour_rate": rates, "time_steps_touched": masks.any(axis=(2, 3)).sum(1),
              "end_frames_fraction": masks[:, [0, -1]].mean(axis=(1, 2, 3))}  # fmt: skip
    return {k: (float(np.mean(v)), float(np.std(v) / np.sqrt(len(v)))) for k, v in values.items()}


def test_cube_masks_are_distributed_as_the_official_generators_exact_draws():
    masks = np.stack([cube_mask(8, 7, 7, 0.4, seed).numpy() for seed in range(1000)])
    assert (masks.reshape(1000, -1).sum(1) == 157).all()
    ours = _cube_statistics(masks)
    for name, (mean, se) in OFFICIAL_EXACT_CUBES.items():
        z = (ours[name][0] - mean) / math.hypot(se, ours[name][1])
        assert abs(z) < 4, (name, ours[name], (mean, se))
    # The previous settings (minimum area round(0.4 * 49) // 5 = 3, 10 attempts, sides up to the grid's, grown to the
    # exact count) are told apart by the same statistics: the test can fail.
    rng_masks = [block_mask_3d((8, 7, 7), 157, 3, random.Random(s)) for s in range(1000)]
    old = _cube_statistics(np.stack(rng_masks))
    assert abs(old["components"][0] - OFFICIAL_EXACT_CUBES["components"][0]) / old["components"][1] > 4
