"""Tests for maskfeat.data.collate: the collate that batches samples and draws their masks from their seeds."""

import math
import pickle
import random

import pytest
import torch

from maskfeat.data.collate import MaskCollator
from maskfeat.masking import block_mask


def test_collator_rejects_unknown_mask_name_at_construction():
    with pytest.raises(ValueError, match="block"):
        MaskCollator("nope", (14, 14), 0.4)


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
