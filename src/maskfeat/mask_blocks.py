"""The block-growing routine behind :func:`~maskfeat.masking.block_mask` and :func:`~maskfeat.masking.cube_mask`.

One N-d routine, :func:`block_mask_3d`, draws both (a block mask is the ``time == 1`` case):

* block: BEiT's ``MaskingGenerator`` (Bao et al., 2021, "BEiT: BERT Pre-Training of Image Transformers", Alg. 1);
* cube: SlowFast's ``MaskingGenerator3D``: the same blocks, each spanning a random number of consecutive time steps.

It masks EXACTLY the requested number of cells: when the block loop stalls, :func:`grow_mask` finishes by growing the
existing blocks one random bordering cell at a time, so the masks stay block-shaped. Both are pure functions of their
arguments and of the ``random.Random`` they are given.
"""

from __future__ import annotations

import math
import random

import numpy as np

__all__ = ["block_mask_3d", "grow_mask"]

# BEiT's block aspect ratios: log-uniform in [0.3, 1 / 0.3].
_MIN_ASPECT = 0.3
_LOG_ASPECT = (math.log(_MIN_ASPECT), math.log(1.0 / _MIN_ASPECT))
# Attempts to place one block before the loop counts as stalled: 10 in BEiT's ``MaskingGenerator`` (100 in
# SlowFast's ``MaskingGenerator3D``).
_MAX_ATTEMPTS = 10


def block_mask_3d(
    shape: tuple[int, int, int],
    num_masked: int,
    min_area: int,
    rng: random.Random,
    *,
    max_area: int | None = None,
    max_attempts: int = _MAX_ATTEMPTS,
    strict_sides: bool = False,
    redraws: int = 0,
) -> np.ndarray:
    """Block-wise masking of a ``(T, H, W)`` grid with exactly ``num_masked`` cells masked.

    Phase 1 is BEiT's / MaskFeat's block loop: repeatedly draw a block with spatial area ``uniform(min_area,
    max_area)``, aspect ratio log-uniform in [0.3, 1/0.3] and, for ``T > 1``, a duration ``t ~ randint(1, T)``
    (SlowFast's ``MaskingGenerator3D``); place it at a random position and keep it if it masks between 1 and
    ``remaining`` new cells. A block that fails ``max_attempts`` times in a row ends the loop (the reference then
    falls short of the target). Phase 2 closes the gap, see :func:`grow_mask`; with the defaults it adds ~0.4 cells
    per 14 x 14 block mask and ~2 per 8 x 7 x 7 cube mask on average (ratio 0.4).

    The defaults are BEiT's 2-D generator, adapted to small grids: ``max_area`` ``min(remaining, H * W)``, 10
    attempts, and blocks may span the whole grid (BEiT requires ``h < H`` and ``w < W``, which never holds on a
    1 x N grid); ``h`` and ``w`` are at least 1. SlowFast's cube masks are ``min_area = H * W // 5``,
    ``max_area = H * W``, ``max_attempts = 100``, ``strict_sides = True``.

    Args:
        shape: ``(T, H, W)``.
        num_masked: exact number of cells to mask, in ``[0, T * H * W]``.
        min_area: smallest spatial block area drawn (BEiT's ``min_num_patches``).
        rng: source of randomness.
        max_area: largest spatial block area drawn (``max_num_patches``); None = ``min(remaining, H * W)``.
        max_attempts: draws of one block before the loop counts as stalled.
        strict_sides: only blocks with ``h < H`` and ``w < W``, as the references.
        redraws: when phase 1 falls short, start it over up to this many times (a fresh mask each time) before
            phase 2 completes the fullest draw: the result is then distributed as the reference's exact draws.

    Returns:
        A bool array of ``shape`` with exactly ``num_masked`` True cells.
    """
    T, H, W = shape
    if num_masked >= math.prod(shape):
        return np.ones(shape, dtype=bool)
    best, count = None, -1
    for _ in range(redraws + 1):  # keep the first draw that is exact, else the fullest
        mask = np.zeros(shape, dtype=bool)
        drawn = _draw_blocks(mask, num_masked, min_area, max_area, max_attempts, strict_sides, rng)
        if drawn > count:
            best, count = mask, drawn
        if count == num_masked:
            return best
    grow_mask(best, num_masked - count, rng)
    return best


def _draw_blocks(mask: np.ndarray, num_masked: int, min_area: int, max_area: int | None, max_attempts: int,
                 strict_sides: bool, rng: random.Random) -> int:  # fmt: skip
    """Phase 1: place blocks until ``num_masked`` cells are masked or a block fails ``max_attempts`` draws in a row.
    Returns the number of cells masked."""
    H, W = mask.shape[1:]
    count = 0
    while count < num_masked:
        remaining = num_masked - count
        top_area = min(remaining, H * W) if max_area is None else max_area
        added = 0
        for _ in range(max_attempts):
            added = _place_block(mask, min_area, top_area, remaining, strict_sides, rng)
            if added:
                break
        if added == 0:
            break  # stalled: no block of the drawn sizes fits in what is left
        count += added
    return count


def _place_block(
    mask: np.ndarray, min_area: float, max_area: float, remaining: int, strict_sides: bool, rng: random.Random
) -> int:
    """One draw of a block (area, aspect, duration, position); masks it in place if it adds 1..``remaining``
    cells. Returns the number of cells added (0: rejected)."""
    T, H, W = mask.shape
    area = rng.uniform(min_area, max_area)
    aspect = math.exp(rng.uniform(*_LOG_ASPECT))
    h = max(1, round(math.sqrt(area * aspect)))
    w = max(1, round(math.sqrt(area / aspect)))
    t = rng.randint(1, T) if T > 1 else 1
    if h > H or w > W or (strict_sides and (h >= H or w >= W)):
        return 0
    top = rng.randint(0, H - h)
    left = rng.randint(0, W - w)
    front = rng.randint(0, T - t) if T > t else 0
    box = mask[front : front + t, top : top + h, left : left + w]
    new = t * h * w - int(np.count_nonzero(box))
    if not 0 < new <= remaining:
        return 0
    box[...] = True
    return new


def grow_mask(mask: np.ndarray, num_new: int, rng: random.Random) -> None:
    """Masks ``num_new`` more cells of a ``(T, H, W)`` mask in place, each bordering an already-masked cell.

    Each step masks a uniformly random unmasked cell among those with a masked face-neighbour (4 neighbours in
    space, plus the 2 in time when ``T > 1``), so the added cells extend the existing blocks instead of scattering as
    salt noise. A mask with no masked cell yet starts from one uniformly random cell.
    """
    flat = mask.reshape(-1)  # a view: writes go to ``mask``
    # Cells that are unmasked and touch the mask, kept as a list (uniform choice by index) plus each cell's position
    # in it (O(1) swap-remove). Seeded in index order so the result depends only on the rng.
    frontier: list[int] = np.flatnonzero(_touching(mask) & ~mask).tolist()
    position = {cell: i for i, cell in enumerate(frontier)}
    for _ in range(num_new):
        if frontier:
            cell = _pop_random(frontier, position, rng)
        else:  # nothing masked yet (the grid is connected, so otherwise the frontier is empty only when all is masked)
            unmasked = np.flatnonzero(~flat)
            cell = int(unmasked[rng.randrange(len(unmasked))])
        flat[cell] = True
        for n in _neighbours(cell, mask.shape):
            if not flat[n] and n not in position:
                position[n] = len(frontier)
                frontier.append(n)


def _touching(mask: np.ndarray) -> np.ndarray:
    """The cells of a ``(T, H, W)`` mask with a masked face-neighbour (bool, same shape)."""
    touching = np.zeros_like(mask)
    touching[1:] |= mask[:-1]
    touching[:-1] |= mask[1:]
    touching[:, 1:] |= mask[:, :-1]
    touching[:, :-1] |= mask[:, 1:]
    touching[:, :, 1:] |= mask[:, :, :-1]
    touching[:, :, :-1] |= mask[:, :, 1:]
    return touching


def _pop_random(frontier: list[int], position: dict[int, int], rng: random.Random) -> int:
    """Removes a uniformly random cell from ``frontier`` (swap-remove, keeping ``position`` in step) and returns it."""
    i = rng.randrange(len(frontier))
    cell = frontier[i]
    last = frontier.pop()
    if last != cell:
        frontier[i] = last
        position[last] = i
    del position[cell]
    return cell


def _neighbours(cell: int, shape: tuple[int, ...]) -> list[int]:
    """Flat indices of the face-neighbours of flat ``cell`` in a ``(T, H, W)`` grid: x - 1, x + 1, y - 1, y + 1,
    t - 1, t + 1, those that exist, in this order."""
    T, H, W = shape
    HW = H * W
    t, rest = divmod(cell, HW)
    y, x = divmod(rest, W)
    neighbours = []
    if x > 0:
        neighbours.append(cell - 1)
    if x < W - 1:
        neighbours.append(cell + 1)
    if y > 0:
        neighbours.append(cell - W)
    if y < H - 1:
        neighbours.append(cell + W)
    if t > 0:
        neighbours.append(cell - HW)
    if t < T - 1:
        neighbours.append(cell + HW)
    return neighbours
