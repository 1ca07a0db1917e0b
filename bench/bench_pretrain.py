"""Pre-training step throughput: a MaskFeat step ([MASK] token, HOG target, head, masked MSE, AdamW with
clipping) against a plain timm ViT classification step (cross-entropy, AdamW with clipping) on the same batch,
timed side by side, interleaved. The masks are drawn once beforehand: in training the collate that draws them
runs in the data-loader workers.

    python bench/bench_pretrain.py --model demo --batch 32
    python bench/bench_pretrain.py --model vit_base --batch 16 --repeats 3

Prints images/s for both and the ratio of step times (MaskFeat / timm).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from maskfeat.data.collate import MaskCollator
from maskfeat.models import MaskFeat, create_encoder, encoder_model_args
from maskfeat.optim import build_optimizer
from maskfeat.targets import build_target

MODELS = {  # name: (architecture, image size, depth override)
    "demo": ("vit_tiny_patch16_224", 96, 6),  # ViT-Tiny (width 192) at depth 6: the demo of 2026-11 (now width 128)
    "vit_small": ("vit_small_patch16_224", 224, None),
    "vit_base": ("vit_base_patch16_224", 224, None),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def maskfeat_step_fn(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, masks: torch.Tensor,
                     dtype: torch.dtype | None, forward: Callable | None = None,
                     clip: float = 0.02) -> Callable[[], None]:  # fmt: skip
    """One MaskFeat pre-training step on a fixed batch: forward ([MASK], HOG target, head, masked MSE) under
    autocast in ``dtype`` (None = full precision), backward, gradient clipping, optimizer step.

    ``images`` (B, C, H, W) and ``masks`` (B, h, w) bool are moved to ``model``'s device inside the step (a no-op
    when they are there already); ``forward`` is what runs the batch (default ``model``; e.g. ``torch.compile(model)``).
    """
    forward = model if forward is None else forward
    device = next(model.parameters()).device

    def step() -> None:
        x, m = images.to(device), masks.to(device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = forward(x, m)[0]
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def classification_step_fn(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                           labels: torch.Tensor, dtype: torch.dtype | None, forward: Callable | None = None,
                           clip: float = 0.02) -> Callable[[], None]:  # fmt: skip
    """One plain classification step on a fixed batch (cross-entropy, backward, the same clipping and optimizer step
    as :func:`maskfeat_step_fn`): the baseline. ``images`` (B, C, H, W), ``labels`` (B,) int64."""
    forward = model if forward is None else forward
    device = next(model.parameters()).device

    def step() -> None:
        x, y = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)  # the same optimizer step on both sides
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=list(MODELS), default="demo")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per contender")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", choices=["off", "bf16"], default="off")
    args = ap.parse_args()
    device = torch.device(args.device)
    arch, size, depth = MODELS[args.model]
    model_args = encoder_model_args(size, depth=depth)
    torch.manual_seed(0)

    maskfeat = MaskFeat(create_encoder(arch, model_args), build_target("hog", 16)).to(device)
    plain = create_encoder(arch, model_args, num_classes=1000).to(device)
    opt_m = build_optimizer(maskfeat, 1e-4, 0.05)
    opt_p = build_optimizer(plain, 1e-4, 0.05)
    collate = MaskCollator("block", (size // 16, size // 16), 0.4)
    images = torch.randn(args.batch, 3, size, size)
    items = [{"image": images[i], "label": i % 1000, "seed": i} for i in range(args.batch)]
    dtype = torch.bfloat16 if args.amp == "bf16" else None

    batch = collate(items)  # in training the collate (masks) runs in data-loader workers, outside the step

    maskfeat_step = maskfeat_step_fn(maskfeat, opt_m, batch["images"], batch["masks"], dtype)
    labels = torch.arange(args.batch) % 1000
    plain_step = classification_step_fn(plain, opt_p, images, labels, dtype)

    times: dict[str, list[float]] = {"maskfeat": [], "timm": []}
    for i in range(args.warmup + args.repeats):
        for name, fn in (("maskfeat", maskfeat_step), ("timm", plain_step)):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{args.model} ({arch}, {size}px, batch {args.batch}, {device}, amp {args.amp}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}): "
        f"maskfeat {args.batch / med['maskfeat']:.1f} img/s ({med['maskfeat'] * 1e3:.0f} ms/step), "
        f"timm {args.batch / med['timm']:.1f} img/s ({med['timm'] * 1e3:.0f} ms/step), "
        f"ratio {med['maskfeat'] / med['timm']:.3f}"
    )


if __name__ == "__main__":
    main()
