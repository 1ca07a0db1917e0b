"""Tests for maskfeat.masking: exact counts, reproducibility, block shape, and the collate function."""

import math
import pickle
import random

import pytest
import torch
import torch.nn.functional as F

from maskfeat.masking import (
    MASK_FUNCTIONS,
    MaskCollator,
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
    with pytest.raises(ValueError, match="block"):
        MaskCollator("nope", (14, 14), 0.4)


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
# MaskCollator
# ------------------------------------------------------------------------------------------------------------------


def make_items(n, image_shape=(3, 32, 32), first_seed=100):
    return [{"image": torch.full(image_shape, float(i)), "label": i % 5, "seed": first_seed + 17 * i} for i in range(n)]


def test_collator_drops_none_and_stacks():
    items = make_items(5)
    batch = [items[0], None, items[1], items[2], None, items[3], items[4]]
    out = MaskCollator("block", (14, 14), 0.4)(batch)
    assert out["num_bad"] == 2
    assert out["images"].shape == (5, 3, 32, 32) and out["images"].dtype == torch.float32
    assert torch.equal(out["images"][:, 0, 0, 0], torch.arange(5.0))
    assert out["labels"].dtype == torch.long and out["labels"].tolist() == [0, 1, 2, 3, 4]
    assert out["masks"].shape == (5, 14, 14) and out["masks"].dtype == torch.bool
    assert (out["masks"].flatten(1).sum(1) == round(0.4 * 196)).all()
    for item, mask in zip(items, out["masks"]):
        assert torch.equal(mask, block_mask(14, 14, 0.4, torch.Generator().manual_seed(item["seed"])))


def test_collator_masks_depend_only_on_seed():
    collate = MaskCollator("cube", (8, 7, 7), 0.4)
    items = make_items(12, image_shape=(3, 16, 28, 28))
    out = collate(items)
    assert out["images"].shape == (12, 3, 16, 28, 28) and out["masks"].shape == (12, 8, 7, 7)
    by_seed = {item["seed"]: mask for item, mask in zip(items, out["masks"])}
    shuffled = items[:]
    random.Random(0).shuffle(shuffled)
    for part in (shuffled[:5], shuffled[5:]):  # other orders, other batch compositions
        for item, mask in zip(part, collate(part)["masks"]):
            assert torch.equal(mask, by_seed[item["seed"]])
    assert len({tuple(m.flatten().tolist()) for m in out["masks"]}) == 12


def test_collator_without_masks():
    out = MaskCollator(None, (14, 14), 0.4)(make_items(3) + [None])
    assert "masks" not in out and out["num_bad"] == 1 and out["images"].shape == (3, 3, 32, 32)


def test_collator_all_none():
    for mask_type in ("block", None):
        out = MaskCollator(mask_type, (14, 14), 0.4)([None, {"unreadable": "/x/a.jpg"}, None])
        assert out == {"images": None, "labels": None, "masks": None, "num_bad": 3, "bad_files": ["/x/a.jpg"]}


def test_collator_names_unreadable_files():
    items = make_items(2)
    out = MaskCollator("block", (14, 14), 0.4)([items[0], {"unreadable": "/data/b.png"}, items[1]])
    assert out["num_bad"] == 1 and out["bad_files"] == ["/data/b.png"] and out["images"].shape[0] == 2


def test_collator_unit_upsampling():
    grid, unit, ratio = (8, 14, 14), (1, 2, 2), 0.4
    collate = MaskCollator("cube", grid, ratio, unit=unit)
    masks = collate(make_items(6, image_shape=(3, 2, 2, 2)))["masks"]
    coarse = (8, 7, 7)
    assert masks.shape == (6, *grid)
    assert (masks.flatten(1).sum(1) == math.prod(unit) * round(ratio * math.prod(coarse))).all()
    # Every 1 x 2 x 2 unit is all masked or all visible.
    units = masks.view(6, 8, 7, 2, 7, 2).permute(0, 1, 2, 4, 3, 5).flatten(-2).sum(-1)
    assert set(units.unique().tolist()) <= {0, 4}
    with pytest.raises(ValueError):
        MaskCollator("cube", (8, 14, 14), 0.4, unit=(1, 3, 2))  # 14 % 3 != 0
    with pytest.raises(ValueError):
        MaskCollator("cube", (8, 14, 14), 0.4, unit=(2, 2))


def test_collator_pickles():
    collate = MaskCollator("tube", (8, 14, 14), 0.6, unit=(2, 2, 2))
    clone = pickle.loads(pickle.dumps(collate))
    items = make_items(4, image_shape=(3, 2, 4, 4))
    a, b = collate(items), clone(items)
    assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["images"], b["images"])
    assert repr(clone) == repr(collate)


class SeededItems(torch.utils.data.Dataset):
    """16 samples with seed 1000 + index; indices 3, 8 and 13 are unreadable (None)."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return None if i % 5 == 3 else {"image": torch.zeros(3, 8, 8), "label": i, "seed": 1000 + i}


def test_collator_in_worker_processes_matches_main_process():
    collate = MaskCollator("block", (14, 14), 0.4)
    loader = torch.utils.data.DataLoader(SeededItems(), batch_size=4, num_workers=2, collate_fn=collate)
    for batch in loader:
        expected = torch.stack([collate.mask(1000 + label) for label in batch["labels"].tolist()])
        assert torch.equal(batch["masks"], expected)
    assert sum(b["num_bad"] for b in loader) == 3
