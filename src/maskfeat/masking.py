"""Mask generators for masked feature prediction: pure functions, and a table of them by name.

Every mask is a ``torch.bool`` tensor in which ``True`` means *masked* (the model sees a [MASK] token there and the
loss is taken there). All generators are pure functions of their arguments and of ``generator``:

* a ``torch.Generator`` is used as is (each call advances it);
* an ``int`` is a seed: ``f(..., generator=s)`` equals ``f(..., generator=torch.Generator().manual_seed(s))``;
* ``None`` draws from torch's global RNG, so ``torch.manual_seed`` makes it reproducible.

Block and cube masks are drawn by one N-d routine, :func:`~maskfeat.mask_blocks.block_mask_3d` (a block mask is the
``time == 1`` case):

* block: BEiT's ``MaskingGenerator`` (Bao et al., 2021, "BEiT: BERT Pre-Training of Image Transformers", Alg. 1),
  the image masking MaskFeat uses (Wei et al., 2022, "Masked Feature Prediction for Self-Supervised Visual
  Pre-Training", Sec. 4);
* cube: MaskFeat's video masking, SlowFast's ``MaskingGenerator3D``: the same blocks, each spanning a random number of
  consecutive time steps.

Unlike the reference generators, which may stop short of the target, both always mask EXACTLY
``round(ratio * numel)`` cells (Python's ``round``, ties to even): when the block loop stalls, it finishes by growing
the existing blocks one random bordering cell at a time, so the masks stay block-shaped.

The collate that draws the masks on the data-loader workers, :class:`~maskfeat.data.collate.MaskCollator`, is
importable from here too.
"""

from __future__ import annotations

import math
import operator
import random
from collections.abc import Callable, Sequence

import torch

from maskfeat.mask_blocks import block_mask_3d

__all__ = [
    "MASK_FUNCTIONS",
    "block_mask",
    "cube_mask",
    "frame_mask",
    "get_mask_function",
    "random_mask",
    "tube_mask",
    "upsample_mask",
]

GeneratorLike = torch.Generator | int | None


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


def check_ratio(ratio: float) -> float:
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


def check_grid(grid: Sequence[int], name: str = "grid") -> tuple[int, ...]:
    grid = tuple(grid)
    if not grid:
        raise ValueError(f"{name} must have at least one dimension")
    return _check_sizes(**{f"{name}[{i}]": s for i, s in enumerate(grid)})


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
    shape = _check_sizes(time=1, height=height, width=width)
    rng = _python_rng(generator)
    num_masked = round(check_ratio(ratio) * height * width)
    return torch.from_numpy(block_mask_3d(shape, num_masked, max(1, num_masked // 5), rng))[0]


CUBE_REDRAWS = 20  # on the official 8 x 7 x 7 grid a draw is exact with p ~ 0.36: all 21 fall short with p ~ 1e-4


def cube_mask(time: int, height: int, width: int, ratio: float = 0.4, generator: GeneratorLike = None) -> torch.Tensor:
    """Spatio-temporal cube mask of a video token grid (MaskFeat, SlowFast's ``MaskingGenerator3D``).

    The official generator's settings: each cube is a block of spatial area ``uniform(H * W // 5, H * W)`` (9 to 49
    cells on the official 7 x 7 grid) and aspect ratio log-uniform in [0.3, 1/0.3], with sides shorter than the
    grid's (``h < H``, ``w < W``; not required on a grid one cell wide or high, where no block would fit), spanning
    ``t ~ randint(1, time)`` consecutive time steps from a random start; 100 draws per cube before the loop ends.
    Unlike the official generator, which masks fewer cells about two times in three, exactly ``round(ratio * time *
    height * width)`` cells are masked: a draw that falls short is started over (up to ``CUBE_REDRAWS`` times; the
    masks are then distributed as the official generator's exact ones), and the fullest is completed by growing its
    cubes (:func:`~maskfeat.mask_blocks.grow_mask`) in the rare case that none is exact. BENCHMARKS.md compares the
    two generators over 2,000 seeds.

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
    ratio = check_ratio(ratio)
    rng = _python_rng(generator)
    num_masked = round(ratio * math.prod(shape))
    area = height * width
    mask = block_mask_3d(shape, num_masked, max(1, area // 5), rng, max_area=area, max_attempts=100,
                         strict_sides=min(height, width) > 1, redraws=CUBE_REDRAWS)  # fmt: skip
    return torch.from_numpy(mask)


def tube_mask(time: int, height: int, width: int, ratio: float = 0.4, generator: GeneratorLike = None) -> torch.Tensor:
    """Tube mask: one :func:`block_mask` of ``(height, width)`` repeated on every time step; exactly ``time *
    round(ratio * height * width)`` cells are masked. The arguments are :func:`cube_mask`'s; the bool ``(time,
    height, width)`` result has ``mask[t] == mask[0]`` for every ``t``."""
    (time,) = _check_sizes(time=time)
    spatial = block_mask(height, width, ratio, generator)
    return spatial.unsqueeze(0).repeat(time, 1, 1)


def frame_mask(time: int, height: int, width: int, ratio: float = 0.4, generator: GeneratorLike = None) -> torch.Tensor:
    """Frame mask: ``round(ratio * time)`` whole time steps, chosen uniformly at random, are masked (``ratio``: the
    fraction of time steps). The arguments are :func:`cube_mask`'s; in the bool ``(time, height, width)`` result
    each time step is all True or all False."""
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
    shape = check_grid(shape, "shape")
    ratio = check_ratio(ratio)
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
    factors = check_grid(factors, "factors")
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
