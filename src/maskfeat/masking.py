"""Mask generators for masked feature prediction, and the collate function that draws them.

Every mask is a ``torch.bool`` tensor in which ``True`` means *masked* (the model sees a [MASK] token there and the
loss is taken there). All generators are pure functions of their arguments and of ``generator``:

* a ``torch.Generator`` is used as is (each call advances it);
* an ``int`` is a seed: ``f(..., generator=s)`` equals ``f(..., generator=torch.Generator().manual_seed(s))``;
* ``None`` draws from torch's global RNG, so ``torch.manual_seed`` makes it reproducible.

Block and cube masks are drawn by one N-d routine, :func:`_block_mask_3d` (a block mask is the ``time == 1`` case):

* block: BEiT's ``MaskingGenerator`` (Bao et al., 2021, "BEiT: BERT Pre-Training of Image Transformers", Alg. 1),
  the image masking MaskFeat uses (Wei et al., 2022, "Masked Feature Prediction for Self-Supervised Visual
  Pre-Training", Sec. 4);
* cube: MaskFeat's video masking, SlowFast's ``MaskingGenerator3D``: the same blocks, each spanning a random number of
  consecutive time steps.

Unlike the reference generators, which may stop short of the target, both always mask EXACTLY
``round(ratio * numel)`` cells (Python's ``round``, ties to even): when the block loop stalls, it finishes by growing
the existing blocks one random bordering cell at a time, so the masks stay block-shaped.
"""

from __future__ import annotations

import math
import operator
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "MASK_FUNCTIONS",
    "MaskCollator",
    "block_mask",
    "cube_mask",
    "frame_mask",
    "get_mask_function",
    "random_mask",
    "tube_mask",
    "upsample_mask",
]

GeneratorLike = torch.Generator | int | None

# BEiT's block aspect ratios: log-uniform in [0.3, 1 / 0.3].
_MIN_ASPECT = 0.3
_LOG_ASPECT = (math.log(_MIN_ASPECT), math.log(1.0 / _MIN_ASPECT))
# Attempts to place one block before the loop counts as stalled: 10 in BEiT's ``MaskingGenerator``.
_MAX_ATTEMPTS = 10


# --------------------------------------------------------------------------------------------------------------------
# Argument handling
# --------------------------------------------------------------------------------------------------------------------


def _as_generator(generator: GeneratorLike) -> torch.Generator:
    """Returns the torch generator to draw from: an int is a seed, None is torch's global RNG."""
    if generator is None:
        return torch.default_generator
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool):
        raise TypeError("generator must be a torch.Generator, an int seed or None, not a bool")
    try:
        seed = operator.index(generator)
    except TypeError:
        raise TypeError(
            f"generator must be a torch.Generator, an int seed or None, not {type(generator).__name__}"
        ) from None
    return torch.Generator().manual_seed(seed)


def _python_rng(generator: GeneratorLike) -> random.Random:
    """Draws one 63-bit seed from ``generator`` and returns a ``random.Random`` seeded with it.

    The per-block loops below are scalar Python; ``random.Random`` is far cheaper per draw than torch ops, and a single
    draw keeps every call's use of the torch generator the same (one ``randint``), whatever the mask.
    """
    g = _as_generator(generator)
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=g, device=g.device).item())
    return random.Random(seed)


def _check_ratio(ratio: float) -> float:
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0:  # also rejects NaN
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    return ratio


def _check_sizes(**sizes: int) -> tuple[int, ...]:
    out = []
    for name, size in sizes.items():
        try:
            value = operator.index(size)
        except TypeError:
            raise TypeError(f"{name} must be an int, got {type(size).__name__}") from None
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
        out.append(value)
    return tuple(out)


def _check_grid(grid: Sequence[int], name: str = "grid") -> tuple[int, ...]:
    grid = tuple(grid)
    if not grid:
        raise ValueError(f"{name} must have at least one dimension")
    return _check_sizes(**{f"{name}[{i}]": s for i, s in enumerate(grid)})


# --------------------------------------------------------------------------------------------------------------------
# The shared block / cube routine
# --------------------------------------------------------------------------------------------------------------------


def _block_mask_3d(shape: tuple[int, int, int], num_masked: int, min_area: int, rng: random.Random) -> np.ndarray:
    """Block-wise masking of a ``(T, H, W)`` grid with exactly ``num_masked`` cells masked.

    Phase 1 is BEiT's / MaskFeat's block loop: repeatedly draw a block with spatial area ``uniform(min_area,
    min(remaining, H * W))``, aspect ratio log-uniform in [0.3, 1/0.3] and, for ``T > 1``, a duration
    ``t ~ randint(1, T)`` (SlowFast's ``MaskingGenerator3D``); place it at a random position and keep it if it masks
    between 1 and ``remaining`` new cells. A block that fails 10 times in a row ends the loop (as in BEiT, whose mask
    then falls short of the target; SlowFast's 3-D version tries 100 times). Phase 2 closes the gap, see
    :func:`_grow_mask`; it adds ~0.4 cells per 14 x 14 block mask and ~2 per 8 x 7 x 7 cube mask on average (ratio 0.4).

    Differences from the references, all to serve small grids: blocks may span the whole grid (the references require
    ``h < H`` and ``w < W``, which never holds on a 1 x N grid); the area is capped at ``H * W`` (a no-op when
    ``T == 1``, as ``remaining <= H * W`` there); ``h`` and ``w`` are at least 1.

    Args:
        shape: ``(T, H, W)``.
        num_masked: exact number of cells to mask, in ``[0, T * H * W]``.
        min_area: smallest spatial block area drawn (BEiT's ``min_num_patches``).
        rng: source of randomness.

    Returns:
        A bool array of ``shape`` with exactly ``num_masked`` True cells.
    """
    T, H, W = shape
    mask = np.zeros(shape, dtype=bool)
    if num_masked >= mask.size:
        mask[...] = True
        return mask
    uniform, randint = rng.uniform, rng.randint
    count = 0
    while count < num_masked:
        remaining = num_masked - count
        max_area = min(remaining, H * W)
        added = 0
        for _ in range(_MAX_ATTEMPTS):
            area = uniform(min_area, max_area)
            aspect = math.exp(uniform(*_LOG_ASPECT))
            h = max(1, round(math.sqrt(area * aspect)))
            w = max(1, round(math.sqrt(area / aspect)))
            t = randint(1, T) if T > 1 else 1
            if h > H or w > W:
                continue
            top = randint(0, H - h)
            left = randint(0, W - w)
            front = randint(0, T - t) if T > t else 0
            box = mask[front : front + t, top : top + h, left : left + w]
            new = t * h * w - int(np.count_nonzero(box))
            if 0 < new <= remaining:
                box[...] = True
                added = new
                break
        if added == 0:
            break  # stalled: no block of the drawn sizes fits in what is left
        count += added
    if count < num_masked:
        _grow_mask(mask, num_masked - count, rng)
    return mask


def _grow_mask(mask: np.ndarray, num_new: int, rng: random.Random) -> None:
    """Masks ``num_new`` more cells of a ``(T, H, W)`` mask in place, each bordering an already-masked cell.

    Each step masks a uniformly random unmasked cell among those with a masked face-neighbour (4 neighbours in
    space, plus the 2 in time when ``T > 1``), so the added cells extend the existing blocks instead of scattering as
    salt noise. A mask with no masked cell yet starts from one uniformly random cell.
    """
    T, H, W = mask.shape
    HW = H * W
    flat = mask.reshape(-1)  # a view: writes go to ``mask``

    # Cells that are unmasked and touch the mask, kept as a list (uniform choice by index) plus each cell's position
    # in it (O(1) swap-remove). Seeded in index order so the result depends only on the rng.
    touching = np.zeros_like(mask)
    touching[1:] |= mask[:-1]
    touching[:-1] |= mask[1:]
    touching[:, 1:] |= mask[:, :-1]
    touching[:, :-1] |= mask[:, 1:]
    touching[:, :, 1:] |= mask[:, :, :-1]
    touching[:, :, :-1] |= mask[:, :, 1:]
    frontier: list[int] = np.flatnonzero(touching & ~mask).tolist()
    position = {cell: i for i, cell in enumerate(frontier)}

    for _ in range(num_new):
        if frontier:
            i = rng.randrange(len(frontier))
            cell = frontier[i]
            last = frontier.pop()
            if last != cell:
                frontier[i] = last
                position[last] = i
            del position[cell]
        else:  # nothing masked yet (the grid is connected, so otherwise the frontier is empty only when all is masked)
            unmasked = np.flatnonzero(~flat)
            cell = int(unmasked[rng.randrange(len(unmasked))])
        flat[cell] = True
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
        for n in neighbours:
            if not flat[n] and n not in position:
                position[n] = len(frontier)
                frontier.append(n)


# --------------------------------------------------------------------------------------------------------------------
# Public mask functions
# --------------------------------------------------------------------------------------------------------------------


def block_mask(height: int, width: int, ratio: float = 0.4, generator: GeneratorLike = None) -> torch.Tensor:
    """BEiT-style block-wise mask of an image token grid, as used by MaskFeat for images.

    Blocks have a spatial area of at least ``max(1, round(ratio * height * width) // 5)`` cells (BEiT's 16 of 75 on
    14 x 14 is close to this fifth) and an aspect ratio in [0.3, 1/0.3]; exactly ``round(ratio * height * width)``
    cells are masked.

    Args:
        height: token rows.
        width: token columns.
        ratio: fraction of cells to mask, in [0, 1].
        generator: a ``torch.Generator``, an int seed, or None (torch's global RNG).

    Returns:
        Bool tensor ``(height, width)``, True = masked.
    """
    return cube_mask(1, height, width, ratio, generator)[0]


def cube_mask(time: int, height: int, width: int, ratio: float = 0.4, generator: GeneratorLike = None) -> torch.Tensor:
    """Spatio-temporal cube mask of a video token grid (MaskFeat, SlowFast's ``MaskingGenerator3D``).

    Each cube is a BEiT block (spatial area at least ``max(1, round(ratio * height * width) // 5)``, i.e. the minimum
    of a block mask of one time step, and aspect ratio in [0.3, 1/0.3]) that spans ``t ~ randint(1, time)``
    consecutive time steps from a random start. Exactly ``round(ratio * time * height * width)`` cells are masked.

    Args:
        time: token time steps.
        height: token rows.
        width: token columns.
        ratio: fraction of cells to mask, in [0, 1].
        generator: a ``torch.Generator``, an int seed, or None (torch's global RNG).

    Returns:
        Bool tensor ``(time, height, width)``, True = masked.
    """
    shape = _check_sizes(time=time, height=height, width=width)
    ratio = _check_ratio(ratio)
    rng = _python_rng(generator)
    num_masked = round(ratio * math.prod(shape))
    min_area = max(1, round(ratio * height * width) // 5)
    return torch.from_numpy(_block_mask_3d(shape, num_masked, min_area, rng))


def tube_mask(time: int, height: int, width: int, ratio: float = 0.4, generator: GeneratorLike = None) -> torch.Tensor:
    """Tube mask: one :func:`block_mask` of ``(height, width)`` repeated on every time step.

    Exactly ``time * round(ratio * height * width)`` cells are masked.

    Args:
        time: token time steps.
        height: token rows.
        width: token columns.
        ratio: fraction of cells to mask, in [0, 1].
        generator: a ``torch.Generator``, an int seed, or None (torch's global RNG).

    Returns:
        Bool tensor ``(time, height, width)``, True = masked, with ``mask[t] == mask[0]`` for every ``t``.
    """
    (time,) = _check_sizes(time=time)
    spatial = block_mask(height, width, ratio, generator)
    return spatial.unsqueeze(0).repeat(time, 1, 1)


def frame_mask(time: int, height: int, width: int, ratio: float = 0.4, generator: GeneratorLike = None) -> torch.Tensor:
    """Frame mask: ``round(ratio * time)`` whole time steps, chosen uniformly at random, are masked.

    Args:
        time: token time steps.
        height: token rows.
        width: token columns.
        ratio: fraction of time steps to mask, in [0, 1].
        generator: a ``torch.Generator``, an int seed, or None (torch's global RNG).

    Returns:
        Bool tensor ``(time, height, width)``, True = masked; each time step is all True or all False.
    """
    time, height, width = _check_sizes(time=time, height=height, width=width)
    frames = random_mask((time,), ratio, generator)
    return frames[:, None, None].expand(time, height, width).clone()


def random_mask(shape: Sequence[int], ratio: float, generator: GeneratorLike = None) -> torch.Tensor:
    """Uniform random mask with exactly ``round(ratio * numel)`` cells masked (MAE-style, no spatial structure).

    Args:
        shape: mask shape, e.g. ``(height, width)`` or ``(time, height, width)``.
        ratio: fraction of cells to mask, in [0, 1].
        generator: a ``torch.Generator``, an int seed, or None (torch's global RNG).

    Returns:
        Bool tensor of ``shape``, True = masked.
    """
    shape = _check_grid(shape, "shape")
    ratio = _check_ratio(ratio)
    g = _as_generator(generator)
    numel = math.prod(shape)
    order = torch.randperm(numel, generator=g, device=g.device).cpu()
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[order[: round(ratio * numel)]] = True
    return mask.view(shape)


def upsample_mask(mask: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """Repeats each mask cell ``factors[i]`` times along its trailing dimension ``i``.

    Used to draw a video mask on a coarse unit grid (e.g. 2 frames x 32 x 32 pixels) and expand it to the token grid.
    Factors apply to the last ``len(factors)`` dimensions, so a batch ``(B, *grid)`` works too.

    Args:
        mask: bool tensor ``(..., d_1, ..., d_k)``.
        factors: ``k`` positive ints.

    Returns:
        Tensor ``(..., d_1 * factors[0], ..., d_k * factors[-1])`` of ``mask``'s dtype.
    """
    factors = _check_grid(factors, "factors")
    if len(factors) > mask.dim():
        raise ValueError(f"{len(factors)} factors for a {mask.dim()}-d mask")
    offset = mask.dim() - len(factors)
    for i, f in enumerate(factors):
        if f != 1:
            mask = mask.repeat_interleave(f, dim=offset + i)
    return mask


# --------------------------------------------------------------------------------------------------------------------
# By name, with one signature: fn(grid, ratio, generator) -> BoolTensor(grid)
# --------------------------------------------------------------------------------------------------------------------


def _video_by_grid(
    fn: Callable[..., torch.Tensor], name: str, grid: Sequence[int], ratio: float, generator: GeneratorLike
) -> torch.Tensor:
    """Calls a ``(time, height, width)`` mask function on a 3-D grid, or on a 2-D grid as ``time == 1``."""
    grid = tuple(grid)
    if len(grid) == 3:
        return fn(*grid, ratio, generator)
    if len(grid) == 2:
        return fn(1, *grid, ratio, generator)[0]
    raise ValueError(f"{name!r} masks take a (time, height, width) or (height, width) grid, got {grid}")


def _block_by_grid(grid: Sequence[int], ratio: float, generator: GeneratorLike = None) -> torch.Tensor:
    grid = tuple(grid)
    if len(grid) != 2:
        raise ValueError(f"'block' masks take a (height, width) grid, got {grid}; use 'cube' or 'tube' for video")
    return block_mask(*grid, ratio, generator)


def _cube_by_grid(grid: Sequence[int], ratio: float, generator: GeneratorLike = None) -> torch.Tensor:
    return _video_by_grid(cube_mask, "cube", grid, ratio, generator)


def _tube_by_grid(grid: Sequence[int], ratio: float, generator: GeneratorLike = None) -> torch.Tensor:
    return _video_by_grid(tube_mask, "tube", grid, ratio, generator)


def _frame_by_grid(grid: Sequence[int], ratio: float, generator: GeneratorLike = None) -> torch.Tensor:
    return _video_by_grid(frame_mask, "frame", grid, ratio, generator)


#: Mask functions by name, each ``fn(grid, ratio, generator) -> BoolTensor(grid)``. Images: "block", "random"
#: (grid ``(h, w)``). Video: "cube", "tube", "frame", "random" (grid ``(t, h, w)``; a 2-D grid means ``t == 1``).
MASK_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "block": _block_by_grid,
    "cube": _cube_by_grid,
    "tube": _tube_by_grid,
    "frame": _frame_by_grid,
    "random": random_mask,
}


def get_mask_function(name: str) -> Callable[..., torch.Tensor]:
    """Returns ``MASK_FUNCTIONS[name]``, or raises a ValueError listing the valid names."""
    try:
        return MASK_FUNCTIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown mask type {name!r}; valid types: {', '.join(sorted(MASK_FUNCTIONS))}") from None


# --------------------------------------------------------------------------------------------------------------------
# Collate: masks are drawn on the CPU data-loader workers (as in DINOv2 / I-JEPA)
# --------------------------------------------------------------------------------------------------------------------


def _split_repeats(item: dict[str, Any]) -> list[dict[str, Any]]:
    """A repeated-augmentation item (``"repeats"``: R clips of one video) as R samples; the r-th gets the seed
    ``seed + r`` for its mask."""
    repeats = item.get("repeats", 1)
    if repeats == 1:
        return [item]
    return [{"image": item["image"][r], "label": item["label"], "seed": item["seed"] + r} for r in range(repeats)]


class MaskCollator:
    """The data loader's ``collate_fn``: batches samples and draws one mask per sample from the sample's seed.

    Each mask is drawn with ``torch.Generator().manual_seed(item["seed"])``, so it depends only on the sample's seed,
    never on the worker, the batch order or what else is in the batch.

    Args:
        mask_type: a key of :data:`MASK_FUNCTIONS`, or None for no masks (fine-tuning, linear probing).
        grid: the token grid, ``(h, w)`` for images or ``(t, h, w)`` for video.
        ratio: fraction of cells to mask.
        unit: if given, masks are drawn on the coarser grid ``grid[i] // unit[i]`` and each coarse cell is repeated
            ``unit`` times (e.g. ``(1, 2, 2)``: 32 x 32-pixel units over 16-pixel tokens). The exact count then holds
            on the coarse grid: ``prod(unit) * round(ratio * prod(coarse grid))`` token cells are masked.
    """

    def __init__(
        self,
        mask_type: str | None,
        grid: Sequence[int],
        ratio: float,
        unit: Sequence[int] | None = None,
    ) -> None:
        self.mask_type = mask_type
        self.grid = _check_grid(grid)
        self.ratio = _check_ratio(ratio)
        self.unit = None if unit is None else _check_grid(unit, "unit")
        if mask_type is not None:
            get_mask_function(mask_type)  # fail at construction on a bad name
        if self.unit is not None:
            if len(self.unit) != len(self.grid) or any(g % u for g, u in zip(self.grid, self.unit)):
                raise ValueError(f"mask unit {self.unit} must have one divisor per dimension of the grid {self.grid}")
        self.mask_grid = self.grid if self.unit is None else tuple(g // u for g, u in zip(self.grid, self.unit))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mask_type={self.mask_type!r}, grid={self.grid}, ratio={self.ratio}, "
            f"unit={self.unit})"
        )

    def mask(self, seed: int) -> torch.Tensor:
        """The mask of the sample with this seed: bool ``grid``, True = masked."""
        fn = get_mask_function(self.mask_type)
        mask = fn(self.mask_grid, self.ratio, torch.Generator().manual_seed(int(seed)))
        return mask if self.unit is None else upsample_mask(mask, self.unit)

    def __call__(self, batch: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        """Collates a list of samples.

        Args:
            batch: items ``{"image": (C, H, W) or (C, T, H, W) tensor, "label": int, "seed": int}``, or, for a
                sample that could not be read (the dataset already warned), ``{"unreadable": path}`` or None:
                those are dropped, counted and named.

        Returns:
            ``{"images": (B, C, [T,] H, W), "labels": int64 (B,), "masks": bool (B, *grid), "num_bad": int,
            "bad_files": list[str]}``; "masks" only when ``mask_type`` is not None. If every item was unreadable,
            images, labels and masks are None.
        """
        items = [item for item in batch if item is not None and "image" in item]
        num_bad = len(batch) - len(items)
        items = [clip for item in items for clip in _split_repeats(item)]
        bad_files = [item["unreadable"] for item in batch if item is not None and "unreadable" in item]
        if not items:
            return {"images": None, "labels": None, "masks": None, "num_bad": num_bad, "bad_files": bad_files}
        out: dict[str, Any] = {
            "images": torch.stack([item["image"] for item in items]),
            "labels": torch.tensor([int(item["label"]) for item in items], dtype=torch.long),
        }
        if self.mask_type is not None:
            out["masks"] = torch.stack([self.mask(item["seed"]) for item in items])
        out["num_bad"] = num_bad
        out["bad_files"] = bad_files
        return out
