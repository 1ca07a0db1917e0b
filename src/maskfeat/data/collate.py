"""The data loader's collate: batches samples and draws their masks on the CPU workers (as in DINOv2 / I-JEPA).

Each mask is drawn from the sample's own seed by a function of :mod:`maskfeat.masking`, so it depends only on that
seed, never on the worker, the batch order or what else is in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from maskfeat.masking import check_grid, check_ratio, get_mask_function, upsample_mask

__all__ = ["MaskCollator"]


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
        mask_type: a key of :data:`~maskfeat.masking.MASK_FUNCTIONS`, or None for no masks (fine-tuning, linear
            probing).
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
        self.grid = check_grid(grid)
        self.ratio = check_ratio(ratio)
        self.unit = None if unit is None else check_grid(unit, "unit")
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
