"""Where the time of one MaskFeat pre-training step goes: encoder forward, HOG target, head + loss, backward,
gradient clipping, AdamW. Medians over several steps; on CUDA each phase is synchronised before it is timed.

    python bench/profile_step.py --model vit_base --batch 8 --steps 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from maskfeat.masking import block_mask
from maskfeat.models import MaskFeat, create_encoder, encoder_model_args, masked_mse
from maskfeat.optim import build_optimizer
from maskfeat.targets import build_target

MODELS = {"demo": ("vit_tiny_patch16_224", 96, 6), "vit_small": ("vit_small_patch16_224", 224, None),
          "vit_base": ("vit_base_patch16_224", 224, None)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=list(MODELS), default="vit_base")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    arch, size, depth = MODELS[args.model]
    torch.manual_seed(0)
    model = MaskFeat(create_encoder(arch, encoder_model_args(size, depth=depth)), build_target("hog", 16)).to(device)
    opt = build_optimizer(model, 1e-4, 0.05)
    grid = size // 16
    x = torch.randn(args.batch, 3, size, size, device=device)
    mask = torch.stack([block_mask(grid, grid, 0.4, generator=i) for i in range(args.batch)]).to(device)
    phases: dict[str, list[float]] = {}

    def timed(name: str, fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        phases.setdefault(name, []).append(time.perf_counter() - t)
        return out

    def head_loss(feats: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return masked_mse(model.head(feats), target, mask.flatten(1))

    for step in range(args.steps + 1):
        feats = timed("encoder forward", lambda: model.forward_features(x, mask))
        target = timed("HOG target", lambda: model.target(x))
        loss = timed("head + masked MSE", lambda: head_loss(feats, target))  # noqa: B023 (called at once)
        timed("backward", loss.backward)
        timed("clip grad norm", lambda: nn.utils.clip_grad_norm_(model.parameters(), 0.02))
        timed("AdamW step", lambda: (opt.step(), opt.zero_grad(set_to_none=True)))
        if step == 0:  # warm-up step
            phases.clear()
    med = {k: statistics.median(v) for k, v in phases.items()}
    total = sum(med.values())
    print(f"{args.model} ({arch}, {size}px, batch {args.batch}, {device}, {torch.get_num_threads()} threads): "
          f"{total * 1e3:.0f} ms/step")  # fmt: skip
    for name, t in med.items():
        print(f"  {name:<20} {t * 1e3:8.1f} ms  {100 * t / total:5.1f}%")


if __name__ == "__main__":
    main()
