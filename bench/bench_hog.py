"""Benchmark maskfeat.hog.HOG against a straightforward PyTorch implementation of the same definition.

Usage:
    python bench/bench_hog.py --batch 64 --size 224 --repeats 7 --device cpu

Prints the agreement of the two implementations, the median time of each (timed interleaved), and the cost per
image of HOG computed per sample (batch 1, as a data-loader worker would) against batched.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

from maskfeat.hog import HOG  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BaselineHOG(torch.nn.Module):
    """The straightforward implementation (the official MaskFeat ``HOGLayerC``, written plainly)."""

    def __init__(self, channels: int, nbins: int = 9, cell_size: int = 8) -> None:
        super().__init__()
        self.nbins, self.cell_size = nbins, cell_size
        kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        weight = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(channels, 1, 1, 1)  # (2C, 1, 3, 3): gx_c, gy_c
        self.register_buffer("weight", weight, persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        x = F.pad(x.to(self.weight.dtype), (1, 1, 1, 1), mode="reflect")
        g = F.conv2d(x, self.weight, groups=C)
        gx, gy = g[:, 0::2], g[:, 1::2]
        mag = torch.sqrt(gx**2 + gy**2)
        phase = torch.atan2(gx, gy)
        bins = torch.floor(phase / math.pi * self.nbins).long() % self.nbins
        out = torch.zeros(B, C, self.nbins, H, W, dtype=x.dtype, device=x.device)
        out.scatter_add_(2, bins.unsqueeze(2), mag.unsqueeze(2))
        cs = self.cell_size
        out = out.unfold(3, cs, cs).unfold(4, cs, cs).sum(dim=(-1, -2))
        return F.normalize(out, p=2, dim=2)


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """Returns a function that runs ``fn`` once and gives its duration in milliseconds."""
    if device.type == "cuda":

        def run_cuda(fn: Callable[[], object]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)

        return run_cuda

    def run_cpu(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    return run_cpu


def agreement(ours: torch.Tensor, base: torch.Tensor, x: torch.Tensor) -> str:
    """Max abs difference; for the cells that differ beyond float32 rounding, which result float64 agrees with."""
    diff = (ours - base).abs().amax(dim=2)  # (B, C, Hc, Wc)
    differing = diff > 1e-4
    text = f"max abs diff {diff.max().item():.3g}, cells differing > 1e-4: {int(differing.sum())} of {diff.numel()}"
    if differing.any():
        images = differing.flatten(1).any(dim=1).nonzero().flatten()
        exact = BaselineHOG(x.shape[1]).to(x.device).double()(x[images].double()).float()  # the arbiter
        mask = differing[images]
        ours_err = (ours[images] - exact).abs().amax(dim=2)[mask]
        base_err = (base[images] - exact).abs().amax(dim=2)[mask]
        text += (
            f" (float64 is closer to ours in {int((ours_err < base_err).sum())}, to the baseline in"
            f" {int((base_err < ours_err).sum())}: float32 rounding decides a bin)"
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each implementation (interleaved)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--per-sample-images", type=int, default=16, help="images timed one by one")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    gen = torch.Generator().manual_seed(args.seed)
    raw = torch.rand(args.batch, args.channels, args.size, args.size, generator=gen)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if args.channels == 3 else ((0.5,), (0.25,))
    mean, std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    x = ((raw - mean) / std).to(device)  # what the model (and HOG) sees

    ours, base = HOG().to(device), BaselineHOG(args.channels).to(device)
    run = timer(device)
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"input {tuple(x.shape)} {x.dtype}"
    )
    print("agreement:", agreement(ours(x), base(x), x))

    for _ in range(2):  # warm-up (allocator, oneDNN primitives, CUDA kernels)
        run(lambda: ours(x))
        run(lambda: base(x))
    ours_ms, base_ms = [], []
    for _ in range(args.repeats):  # interleaved, so that load changes hit both alike
        ours_ms.append(run(lambda: ours(x)))
        base_ms.append(run(lambda: base(x)))
    o, b = statistics.median(ours_ms), statistics.median(base_ms)
    print(f"ours     ms: median {o:.1f}  min {min(ours_ms):.1f}  all {[round(t, 1) for t in ours_ms]}")
    print(f"baseline ms: median {b:.1f}  min {min(base_ms):.1f}  all {[round(t, 1) for t in base_ms]}")

    # Per sample (a data-loader worker computing the target of one image) against batched, per image.
    n = min(args.per_sample_images, args.batch)
    singles = [x[i : i + 1].clone() for i in range(n)]
    run(lambda: [ours(s) for s in singles])
    per_sample = statistics.median(run(lambda: [ours(s) for s in singles]) for _ in range(3)) / n
    print(f"per image: per-sample (batch 1) {per_sample:.2f} ms, batched (batch {args.batch}) {o / args.batch:.2f} ms")

    name = f"hog B={args.batch} {args.size}x{args.size} {device.type}"
    print(f"{name}: ours {o:.1f} ms, baseline {b:.1f} ms, ratio {o / b:.2f}")


if __name__ == "__main__":
    main()
